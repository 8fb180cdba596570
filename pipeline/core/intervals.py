"""How an interval and a metric's spread across methods are read by people, so that no page invites a misreading.

An interval of zero width (every prompt scored the same) or over fewer than `MIN_ITEMS` items is labelled as what it
is, never drawn like a real interval; a metric at its ceiling or floor for every method, base included, is flagged as
one the evaluation cannot separate the methods on. Torch-free: the dashboard and the report use it.
"""

from __future__ import annotations

from typing import Any, Literal

from pipeline.core.metrics import METRICS

MIN_ITEMS = 20  # below this many prompts an interval is shown, but labelled as too few to trust
BOUNDED_UNITS = {"share": (0.0, 1.0)}  # units with a ceiling and a floor a metric can sit at

IntervalKind = Literal["none", "zero", "few", "ok"]


def interval_kind(low: float | None, high: float | None, n: int | None) -> IntervalKind:
    """none: no estimate (no interval, or fewer than 2 items); zero: zero width; few: under MIN_ITEMS; ok."""
    if low is None or high is None or not n or n < 2:
        return "none"
    if high - low <= 1e-12:
        return "zero"
    return "few" if n < MIN_ITEMS else "ok"


def interval_text(low: float | None, high: float | None, n: int | None, digits: int = 3) -> str:
    """'[-0.089, 0.000]', 'all 30 equal', 'n = 1: no estimate' or '[0.20, 0.61] (n = 9: too few to trust)'."""
    kind = interval_kind(low, high, n)
    if kind == "none":
        return f"n = {n or 0}: no estimate"
    if kind == "zero":
        return f"all {n} equal (zero width: no spread to estimate)"
    text = f"[{low:.{digits}f}, {high:.{digits}f}]"
    return f"{text} (n = {n}: too few to trust)" if kind == "few" else text


def cannot_separate(metric: str, values: dict[str, float | None]) -> str | None:
    """Why the evaluation cannot separate the methods on `metric` (every method, base included, at the metric's
    ceiling or floor, or every method exactly equal), or None when it can."""
    present = [v for v in values.values() if v is not None]
    if len(present) < 2:
        return None
    label = METRICS[metric].label if metric in METRICS else metric
    bounds = BOUNDED_UNITS.get(METRICS[metric].unit) if metric in METRICS else None
    for bound, where in zip(bounds or (), ("floor", "ceiling"), strict=False):
        if all(abs(v - bound) <= 1e-9 for v in present):
            return (
                f"{label}: every method, base included, is at its {where} ({bound:g}): the evaluation cannot "
                "separate the methods on this metric"
            )
    if max(present) - min(present) <= 1e-12:
        return (
            f"{label}: every method scores exactly {present[0]:.3g}: the evaluation cannot separate the methods on "
            "this metric"
        )
    return None


def readable_rows(rows: list[dict[str, Any]], value: str = "value", n: str = "n") -> list[dict[str, Any]]:
    """Rows with their value rounded for people and their interval as text ('95% CI') and kind ('interval')."""
    out = []
    for row in rows:
        kind = interval_kind(row.get("ci_low"), row.get("ci_high"), row.get(n))
        out.append(
            {
                **row,
                value: None if row.get(value) is None else round(row[value], 3),
                "95% CI": interval_text(row.get("ci_low"), row.get("ci_high"), row.get(n)),
                "interval": kind,
            }
        )
    return out
