"""No function in pipeline/, workers/ or db/ above cyclomatic complexity 20 (radon), unless a written reason sits
on its `def` line (`# complexity: ...`)."""

from pathlib import Path

from radon.complexity import cc_visit

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 20


def too_complex(source: str) -> list[tuple[str, int]]:
    lines = source.splitlines()
    return [
        (block.fullname, block.complexity)
        for block in cc_visit(source)
        if block.complexity > LIMIT and "# complexity:" not in lines[block.lineno - 1]
    ]


def test_no_function_above_the_complexity_limit_without_a_reason():
    offenders = [
        f"{path.relative_to(ROOT)}: {name} ({complexity})"
        for package in ("pipeline", "workers", "db")
        for path in sorted((ROOT / package).rglob("*.py"))
        for name, complexity in too_complex(path.read_text(encoding="utf-8"))
    ]
    assert offenders == []


def test_the_check_sees_a_complex_function():
    branches = "\n".join(f"    if x == {i}:\n        return {i}" for i in range(LIMIT + 1))
    assert too_complex(f"def f(x):\n{branches}\n") == [("f", LIMIT + 2)]
    assert too_complex(f"def f(x):  # complexity: a flat table of cases\n{branches}\n") == []
