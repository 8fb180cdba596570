"""Paired statistics for comparing methods over the same items: bootstrap CIs resampling prompts (clusters), an
exact sign test over prompts, a family correction, and verdicts that never claim more than the exact test shows.

Several held-out pairs share a prompt, so items are not independent: every interval here resamples prompts
(a cluster bootstrap) and the sign test counts prompts (their mean difference), not pairs.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

CORRECTIONS = ("holm", "bh")
POWER = 0.8  # the power at which the minimum detectable difference is stated


# what a single run's intervals cover, said wherever they are shown
ONE_SEED = (
    "Intervals resample prompts only: this is one training seed, so training noise is not in them (run several "
    "seeds as a group for intervals that resample seeds too)."
)


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

        mean = result["mean"]
        low, high = bootstrap("BCa")
        # BCa can fail, or (very skewed tiny samples) put its interval beside the estimate: then percentiles
        if math.isnan(low) or math.isnan(high) or not low <= mean <= high:
            low, high = bootstrap("percentile")
        if not low <= mean <= high:  # never an interval that does not hold its own estimate
            low = high = None
        result.update(ci_low=low, ci_high=high)
    result["confidence"] = confidence
    return result


def cluster_bootstrap_ci(
    sums: list[float], counts: list[int], confidence: float, n_resamples: int, seed: int
) -> tuple[float, float]:
    """Percentile CI of sum(sums)/sum(counts) resampling whole clusters (prompts) with replacement."""
    import numpy as np

    rng = np.random.default_rng(seed)
    sums_a, counts_a = np.asarray(sums, dtype=float), np.asarray(counts, dtype=float)
    picks = rng.integers(0, len(sums_a), size=(n_resamples, len(sums_a)))
    estimates = sums_a[picks].sum(axis=1) / counts_a[picks].sum(axis=1)
    alpha = 1 - confidence
    return float(np.quantile(estimates, alpha / 2)), float(np.quantile(estimates, 1 - alpha / 2))


EXACT_UP_TO = 16  # prompts that differ: up to this many, every sign pattern is enumerated (2^16 = 65,536)


def _sign_matrix(n: int, n_resamples: int, seed: int) -> tuple[Any, bool]:
    """The sign patterns of the sign-flip test over `n` prompts: all 2^n of them when n <= EXACT_UP_TO (exact),
    else the identity and `n_resamples` random ones. (patterns × n matrix of ±1, exact?)"""
    import numpy as np

    if n <= EXACT_UP_TO:
        codes = np.arange(2**n, dtype=np.int64)[:, None]
        bits = (codes >> np.arange(n, dtype=np.int64)[None, :]) & 1
        return 1 - 2 * bits.astype(float), True
    rng = np.random.default_rng(seed)
    random = rng.choice(np.array([-1.0, 1.0]), size=(n_resamples, n))
    return np.vstack([np.ones((1, n)), random]), False


def sign_flip_test(
    prompt_means: list[float], confidence: float = 0.95, n_resamples: int = 10000, seed: int = 0
) -> dict[str, Any]:
    """The paired test of the comparison: under "no difference" each prompt's mean difference is as likely to have
    either sign, so the observed mean is compared with the means of the sign-flipped differences (two-sided; exact
    for up to EXACT_UP_TO prompts, Monte Carlo with the identity among the patterns beyond). Its interval is the
    same test inverted over the same sign patterns: every shift δ that the test does not reject at 1 − confidence.
    It always holds the estimate (at δ = the mean nothing is rejected), and it excludes 0 exactly when
    p < 1 − confidence."""
    import numpy as np

    d = np.asarray(prompt_means, dtype=float)
    n = len(d)
    estimate = float(d.mean())
    signs, exact = _sign_matrix(n, n_resamples, seed)
    signed_sums, sign_totals = signs @ d, signs.sum(axis=1)  # Σ s·(d − δ) = Σ s·d − δ·Σ s, for every pattern
    alpha = 1 - confidence
    tolerance = 1e-9 * max(1.0, float(np.abs(d).max()))

    def p_value(shift: float) -> float:
        observed = abs(d.sum() - shift * n)
        return float(np.mean(np.abs(signed_sums - shift * sign_totals) >= observed - tolerance))

    p = p_value(0.0) if np.any(d != 0) else 1.0
    low = high = None
    # the smallest p any shift can reach: the all-plus and all-minus patterns are always as extreme as the data
    reachable = float(np.mean(np.abs(sign_totals) == n))
    if n >= 2 and np.any(d != estimate) and reachable < alpha:
        step = float(np.abs(d - estimate).max()) + float(np.abs(d).max())

        def bound(direction: float) -> float:
            inside, outside = estimate, estimate + direction * step
            while p_value(outside) >= alpha:
                outside += direction * step
            for _ in range(50):  # bisection far below any digit shown
                middle = (inside + outside) / 2
                inside, outside = (middle, outside) if p_value(middle) >= alpha else (inside, middle)
            return inside

        low, high = bound(-1.0), bound(1.0)
    elif n >= 2 and not np.any(d != estimate):  # every prompt the same difference: no spread, the interval is the point
        low = high = estimate
    # else: too few prompts for any interval at this confidence (2 of 2^n sign patterns exceed 1 − confidence)
    return {"mean": estimate, "p": p, "ci_low": low, "ci_high": high, "exact": exact}


def paired_difference(
    a: dict[str, float],
    b: dict[str, float],
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
    higher_is_better: bool | None = True,
    clusters: dict[str, str] | None = None,
    min_discordant: int = 1,
) -> dict[str, Any]:
    """Mean of a[i] - b[i] over the prompts both have (several items of one prompt averaged first: a prompt counts
    once), with the one pre-declared test: the sign-flip permutation test on the per-prompt means and its inverted
    interval (`sign_flip_test`). The exact sign test over prompts is reported beside it as a robustness line, not
    as a second condition. `verdict` gives the provisional verdict; `correct_family` revises it.

    `clusters` maps an item to its prompt; without it every item is its own prompt. `n_resamples` sign patterns
    (at least 10,000) are drawn when too many prompts differ to enumerate them."""
    from scipy import stats

    common = sorted(i for i in set(a) & set(b) if not _missing(a[i]) and not _missing(b[i]))
    by_cluster: dict[str, list[float]] = defaultdict(list)
    for item in common:
        by_cluster[(clusters or {}).get(item, item)].append(a[item] - b[item])
    prompt_means = [sum(v) / len(v) for v in by_cluster.values()]
    n_items, n_prompts = len(common), len(prompt_means)
    result: dict[str, Any] = {"n": n_items, "n_prompts": n_prompts, "confidence": confidence}
    test = sign_flip_test(prompt_means, confidence, max(n_resamples, 10000), seed) if n_prompts else None
    result["mean"] = test["mean"] if test else None
    result["ci_low"] = test["ci_low"] if test else None
    result["ci_high"] = test["ci_high"] if test else None
    result["p"] = test["p"] if test else None
    result["test"] = ("exact " if test and test["exact"] else "Monte Carlo ") + "sign-flip permutation test"
    wins = sum(m > 0 for m in prompt_means)
    losses = sum(m < 0 for m in prompt_means)
    result.update(wins=wins, losses=losses, ties=n_prompts - wins - losses, discordant=wins + losses)
    result["sign_test_p"] = float(stats.binomtest(wins, wins + losses, 0.5).pvalue) if wins + losses else None
    result["p_adjusted"] = result["p"]
    result["prompt_means"] = [round(m, 10) for m in prompt_means]  # stored: every figure recomputes from them
    result["min_detectable_difference"] = minimum_detectable_difference(prompt_means, confidence)
    result["higher_is_better"] = higher_is_better
    result["verdict"] = verdict(result, min_discordant)
    return result


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def minimum_detectable_difference(prompt_means: list[float], confidence: float = 0.95) -> float | None:
    """The paired difference this many prompts would detect with 80% power at this confidence (normal
    approximation: (z_{1-α/2} + z_{power}) · sd / √n); None below two prompts."""
    import statistics

    from scipy.stats import norm

    if len(prompt_means) < 2:
        return None
    z = norm.ppf(1 - (1 - confidence) / 2) + norm.ppf(POWER)
    return float(z * statistics.stdev(prompt_means) / math.sqrt(len(prompt_means)))


def verdict(diff: dict[str, Any], min_discordant: int = 1) -> str:
    """better / worse (higher / lower without a direction) when the sign-flip test, family-corrected where it is in
    a family, rejects "no difference" at 1 − confidence; "too few prompts" below two; "no prompt differs" when
    every difference is zero; "too few discordant prompts (k)" only below a floor the config declared before the
    run (`compare.min_discordant_prompts`, default 1: none)."""
    if diff["n_prompts"] < 2:
        return f"too few prompts ({diff['n_prompts']})"
    if diff["discordant"] == 0:
        return "no prompt differs"
    if diff["discordant"] < min_discordant:
        return f"too few discordant prompts ({diff['discordant']})"
    alpha = 1 - diff["confidence"]
    p = diff["p_adjusted"]
    if p is not None and p < alpha:
        up = diff["mean"] > 0
        higher = diff["higher_is_better"]
        return ("higher" if up else "lower") if higher is None else ("better" if up == higher else "worse")
    return "no detectable difference"


def adjust_p_values(p_values: list[float | None], method: str) -> list[float | None]:
    """Holm (family-wise error) or Benjamini–Hochberg (false discovery rate) adjusted p-values; None stays None."""
    if method not in CORRECTIONS:
        raise ValueError(f"correction {method!r}: one of {', '.join(CORRECTIONS)}")
    present = [(i, p) for i, p in enumerate(p_values) if p is not None]
    adjusted: list[float | None] = [None] * len(p_values)
    if not present:
        return adjusted
    if method == "bh":
        from scipy.stats import false_discovery_control

        values = false_discovery_control([p for _, p in present], method="bh")
        for (i, _), value in zip(present, values, strict=True):
            adjusted[i] = float(value)
        return adjusted
    m = len(present)
    running = 0.0
    for rank, (i, p) in enumerate(sorted(present, key=lambda item: item[1])):
        running = max(running, min(1.0, (m - rank) * p))  # step-down, kept monotone
        adjusted[i] = running
    return adjusted


def correct_family(differences: list[dict[str, Any]], method: str, min_discordant: int = 1) -> None:
    """Adjust the sign-flip p-values of `differences` as one family and revise their verdicts in place."""
    for diff, p in zip(differences, adjust_p_values([d["p"] for d in differences], method), strict=True):
        diff["p_adjusted"] = p
        diff["verdict"] = verdict(diff, min_discordant)


def win_rate(counts: dict[str, Any], n_resamples: int = 1000) -> dict[str, Any]:
    """`counts` (wins, losses, ties of `a` against `b`) with n, a's win rate (ties count half) and its bootstrap CI."""
    outcomes = [1.0] * counts["wins"] + [0.0] * counts["losses"] + [0.5] * counts["ties"]
    ci = mean_ci(outcomes, n_resamples=n_resamples)
    return {**counts, "n": len(outcomes), "win_rate_a": ci["mean"], "ci_low": ci["ci_low"], "ci_high": ci["ci_high"]}


def seeds_and_prompts_ci(
    per_seed: list[dict[str, float]], confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0
) -> dict[str, Any]:
    """Mean of a quantity measured per (training seed, prompt), with an interval that resamples seeds and prompts
    independently (the two-way bootstrap for crossed effects: each replicate draws seeds and prompts with
    replacement and averages the chosen cells), so training noise and prompt noise are both in it. Beside it, the
    prompt-only interval of the seed-averaged values, to show what ignoring the seeds would have claimed."""
    import numpy as np

    prompts = sorted(set.intersection(*(set(values) for values in per_seed))) if per_seed else []
    result: dict[str, Any] = {"n_seeds": len(per_seed), "n_prompts": len(prompts), "confidence": confidence}
    if not prompts:
        return {**result, "mean": None, "ci_low": None, "ci_high": None, "prompt_only": None}
    cells = np.array([[values[p] for p in prompts] for values in per_seed], dtype=float)  # seeds × prompts
    result["mean"] = float(cells.mean())
    result["prompt_only"] = mean_ci(list(cells.mean(axis=0)), confidence, n_resamples, seed)
    if len(per_seed) < 2 or len(prompts) < 2:
        return {**result, "ci_low": None, "ci_high": None}
    rng = np.random.default_rng(seed)
    n_seeds, n_prompts = cells.shape
    estimates = np.empty(n_resamples)
    for r in range(n_resamples):
        rows = rng.integers(0, n_seeds, n_seeds)
        cols = rng.integers(0, n_prompts, n_prompts)
        estimates[r] = cells[np.ix_(rows, cols)].mean()
    alpha = 1 - confidence
    result["ci_low"] = float(np.quantile(estimates, alpha / 2))
    result["ci_high"] = float(np.quantile(estimates, 1 - alpha / 2))
    return result


def aa_false_positives(
    per_seed: dict[str, list[dict[str, float]]],
    confidence: float = 0.95,
    n_resamples: int = 1000,
    min_discordant: int = 1,
    clusters: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The A/A control: identical method and config, different training seeds, compared as if they were two methods
    (every pair of seeds, every metric, the per-run paired test). Each "difference" found is a false positive of the
    per-run interval; their share is its false-positive rate, about 1 − confidence when the intervals are honest."""
    from itertools import combinations

    comparisons = []
    for name, seeds in per_seed.items():
        for i, j in combinations(range(len(seeds)), 2):
            diff = paired_difference(
                seeds[j],
                seeds[i],
                confidence=confidence,
                n_resamples=n_resamples,
                higher_is_better=None,
                clusters=clusters,
                min_discordant=min_discordant,
            )
            significant = diff["verdict"] in ("higher", "lower")
            comparisons.append({"name": name, "seeds": (i, j), "mean": diff["mean"], "significant": significant})
    found = sum(c["significant"] for c in comparisons)
    alpha = 1 - confidence
    rate = found / len(comparisons) if comparisons else None
    return {
        "comparisons": len(comparisons),
        "significant": found,
        "rate": rate,
        "alpha": alpha,
        "details": comparisons,
        "text": f"A/A: {found} of {len(comparisons)} seed-vs-seed comparisons of identical methods below "
        f"p = {alpha:.2g}" + (f" ({rate:.0%}; honest intervals give about {alpha:.0%})" if comparisons else ""),
    }


def seed_group_statistics(
    values: dict[Any, dict[str, dict[str, dict[str, float]]]],
    n_resamples: int = 1000,
) -> dict[str, Any]:
    """From per-prompt values (run -> method -> metric -> prompt -> value) of runs that differ only in their seeds:
    SFT→DPO − DPO-only per metric with an interval over seeds and prompts, and the A/A control over the trained
    methods."""
    from pipeline.core.configs import PRIMARY_PAIR, UNTRAINED

    a, b = PRIMARY_PAIR
    runs = list(values.values())
    metrics = sorted({m for run in runs for m in (run.get(a) or {})})
    headline = []
    for metric in metrics:
        per_seed = []
        for run in runs:
            mine, theirs = (run.get(a) or {}).get(metric, {}), (run.get(b) or {}).get(metric, {})
            per_seed.append({p: mine[p] - theirs[p] for p in mine.keys() & theirs.keys()})
        stat = seeds_and_prompts_ci(per_seed, n_resamples=n_resamples)
        prompt_only = stat["prompt_only"] or {}
        headline.append(
            {
                "metric": metric,
                "difference": f"{a} − {b}",
                "mean": stat["mean"],
                "ci (seeds × prompts)": _interval(stat),
                "ci (prompts only)": _interval(prompt_only),
                "seeds": stat["n_seeds"],
                "prompts": stat["n_prompts"],
            }
        )
    subjects = {
        f"{method}:{metric}": [run[method][metric] for run in runs]
        for method in sorted({m for run in runs for m in run} - {UNTRAINED})
        for metric in metrics
        if all(metric in (run.get(method) or {}) for run in runs)
    }
    return {"headline": headline, "aa": aa_false_positives(subjects, n_resamples=n_resamples)}


def _interval(stat: dict[str, Any]) -> str:
    if stat.get("ci_low") is None:
        return "no estimate"
    return f"[{stat['ci_low']:.3f}, {stat['ci_high']:.3f}]"
