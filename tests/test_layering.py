"""The layers' import rules, as import-linter contracts (pyproject.toml) over the real import graph: direct and
indirect imports, lazy ones inside functions included."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(root / "pyproject.toml"), "--no-cache"],
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_every_import_contract_is_kept():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "5 kept, 0 broken" in result.stdout


def test_a_forbidden_import_breaks_its_contract(tmp_path):
    """The check can fail: a copy of the source where the dashboard imports the model loader (and so torch)."""
    for package in ("app", "db", "pipeline", "workers"):
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    forms = tmp_path / "app" / "forms.py"
    forms.write_text(forms.read_text() + "\n\ndef _planted():\n    from pipeline.models import load_model\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert "the dashboard never imports torch BROKEN" in result.stdout
    assert "app.forms -> pipeline.models" in result.stdout
