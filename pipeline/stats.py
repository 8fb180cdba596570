"""Paired statistics for comparing methods over the same items: bootstrap CIs (scipy) and a sign test."""

from __future__ import annotations

import math
from typing import Any


def mean_ci(values: list[float], confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Mean with a bootstrap (BCa) confidence interval; degenerate samples get a zero-width or no interval."""
    import numpy as np
    from scipy import stats

    data = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    result: dict[str, Any] = {"n": int(data.size), "mean": float(data.mean()) if data.size else None}
    if data.size < 2:
        result.update(ci_low=None, ci_high=None)
    elif np.ptp(data) == 0:
        result.update(ci_low=float(data[0]), ci_high=float(data[0]))
    else:

        def bootstrap(method: str) -> tuple[float, float]:
            ci = stats.bootstrap(
                (data,),
                np.mean,
                confidence_level=confidence,
                n_resamples=n_resamples,
                method=method,
                rng=np.random.default_rng(seed),
            ).confidence_interval
            return float(ci.low), float(ci.high)

        low, high = bootstrap("BCa")
        if math.isnan(low) or math.isnan(high):  # BCa can fail on very skewed tiny samples: use percentiles
            low, high = bootstrap("percentile")
        result.update(ci_low=low, ci_high=high)
    result["confidence"] = confidence
    return result


def paired_difference(
    a: dict[str, float],
    b: dict[str, float],
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
    higher_is_better: bool | None = True,
) -> dict[str, Any]:
    """Mean of a[i] - b[i] over the items both have, with a bootstrap CI and a two-sided sign test.

    The verdict reads the CI in the metric's direction: "better" / "worse" when the CI excludes 0, or
    "higher" / "lower" for metrics without a better direction (e.g. length).
    """
    from scipy import stats

    common = sorted(set(a) & set(b))
    diffs = [a[i] - b[i] for i in common]
    result = mean_ci(diffs, confidence, n_resamples, seed)
    wins = sum(d > 0 for d in diffs)
    losses = sum(d < 0 for d in diffs)
    result.update(wins=wins, losses=losses, ties=len(diffs) - wins - losses)
    result["sign_test_p"] = float(stats.binomtest(wins, wins + losses, 0.5).pvalue) if wins + losses else None
    low, high = result["ci_low"], result["ci_high"]
    if low is None:
        verdict = "too few items"
    elif low > 0 or high < 0:
        up = low > 0
        verdict = (
            ("higher" if up else "lower")
            if higher_is_better is None
            else ("better" if up == higher_is_better else "worse")
        )
    else:
        verdict = "no clear difference"
    result["verdict"] = verdict
    return result
