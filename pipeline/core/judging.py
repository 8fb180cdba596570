"""What a judge's verdicts mean, in numbers: position-swapped outcomes, raw and length-controlled win rates, the
judge's position bias, paired reward-model differences, and the judge's agreement with people.

Every pair of outputs is judged twice, once in each order. `outcome` combines the two: a method wins only when
both orders chose it; orders that disagree are a tie (the verdict followed the slot, not the answer), and an order
the judge answered unreadably makes the item "unparsed" (counted and shown, left out of the rates).

The length-controlled win rate follows AlpacaEval 2: a logistic regression of the judge's preference (1, ½ for a
tie, 0) on the normalised length difference, tanh((len a − len b) / sd), read at zero length difference: the win
rate the judge would give if the two methods wrote equally long answers. Both coefficients carry a small ridge
penalty (`LC_RIDGE`, intercept then slope): a judge driven by length alone separates the data perfectly, where the
unpenalised fit has no finite answer; a penalty on the slope alone lets the intercept absorb the length effect, so
the intercept is held a little harder than the slope. On simulated data that keeps a length-only judge's interval
over ½ and moves a real win rate by well under a percent (measured: bias −0.003, sd 0.022, n = 100).
Intervals resample prompts (each item is one prompt); every figure carries its n.

Torch-free: the dashboard computes agreement with its own reviewers' judgements from the database.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

OUTCOMES = ("a", "b", "tie", "unparsed")
LC_RIDGE = (0.01, 0.001)  # L2 penalties on (intercept, slope), per item: statsmodels' elastic net with L1_wt = 0
# (method a, method b): SFT→DPO vs DPO-only is the headline; then each DPO variant against SFT and against base
JUDGED = (("sft_dpo", "dpo_only"), ("sft_dpo", "sft"), ("dpo_only", "sft"), ("sft_dpo", "base"), ("dpo_only", "base"))
HEADLINE = JUDGED[0]


@dataclass(frozen=True)
class SlotVerdict:
    """One judging of one order: which slot won ("1" / "2"; None = unreadable), the probability of slot 1 where the
    judge exposes it, and the raw answer (endpoint judges) for the record."""

    choice: str | None
    p_first: float | None = None
    answer: str | None = None


def outcome(a_first: SlotVerdict, b_first: SlotVerdict) -> str:
    """The item's verdict from its two orders: `a_first` showed a in slot 1, `b_first` showed b in slot 1."""
    if a_first.choice is None or b_first.choice is None:
        return "unparsed"
    a_in_first = "a" if a_first.choice == "1" else "b"
    a_in_second = "b" if b_first.choice == "1" else "a"
    return a_in_first if a_in_first == a_in_second else "tie"


def preference(result: str) -> float:
    """A's preference of one parsed outcome: 1 for a, 0 for b, ½ for a tie."""
    return {"a": 1.0, "b": 0.0, "tie": 0.5}[result]


def followed_slot(a_first: SlotVerdict, b_first: SlotVerdict) -> bool:
    """Both orders chose the same slot: the verdict followed the position, not the answer."""
    return a_first.choice == b_first.choice


def _rate(indicators: list[float], confidence: float, n_resamples: int, seed: int) -> dict[str, Any]:
    from pipeline.core.stats import mean_ci

    return mean_ci(indicators, confidence, n_resamples, seed)


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def length_feature(length_differences: list[float]) -> list[float]:
    """tanh(Δ / sd(Δ)): AlpacaEval 2's bounded length term (a constant Δ carries no information: all zero)."""
    import numpy as np

    deltas = np.asarray(length_differences, dtype=float)
    scale = float(deltas.std(ddof=1)) if deltas.size > 1 else 0.0
    if scale == 0.0:
        return [0.0] * deltas.size
    return list(np.tanh(deltas / scale))


def fit_length_model(preferences: list[float], features: list[float]) -> tuple[float, float]:
    """(intercept, slope) of the ridge-penalised logistic regression of preference on the length feature: minimises
    −loglik / n + ½ Σ LC_RIDGE · β², with fractional targets (a tie is ½)."""
    import numpy as np
    from scipy.optimize import minimize

    y, x = np.asarray(preferences, dtype=float), np.asarray(features, dtype=float)
    n, penalty = y.size, np.asarray(LC_RIDGE)

    def objective(beta: np.ndarray) -> tuple[float, np.ndarray]:
        z = beta[0] + beta[1] * x
        loss = float(np.sum(np.logaddexp(0.0, z) - y * z)) / n + float(penalty @ beta**2) / 2
        residual = 1.0 / (1.0 + np.exp(-z)) - y
        grad = np.array([residual.sum() / n, (residual * x).sum() / n]) + penalty * beta
        return loss, grad

    fit = minimize(objective, np.zeros(2), jac=True, method="L-BFGS-B", options={"gtol": 1e-10, "ftol": 1e-14})
    return float(fit.x[0]), float(fit.x[1])


def length_controlled(preferences: list[float], features: list[float]) -> float:
    """The win rate at zero length difference: sigmoid(intercept)."""
    intercept, _ = fit_length_model(preferences, features)
    return _sigmoid(intercept)


def _percentile_ci(draws: list[float], confidence: float) -> tuple[float | None, float | None]:
    import numpy as np

    if not draws:
        return None, None
    alpha = 1 - confidence
    return float(np.quantile(draws, alpha / 2)), float(np.quantile(draws, 1 - alpha / 2))


def length_controlled_ci(
    preferences: list[float], features: list[float], confidence: float, n_resamples: int, seed: int
) -> dict[str, Any]:
    """The length-controlled win rate with a percentile bootstrap interval over items (prompts)."""
    import numpy as np

    n = len(preferences)
    result: dict[str, Any] = {"n": n, "confidence": confidence, "mean": None, "ci_low": None, "ci_high": None}
    if n == 0:
        return result
    result["mean"] = length_controlled(preferences, features)
    if n < 2:
        return result
    rng = np.random.default_rng(seed)
    y, x = np.asarray(preferences), np.asarray(features)
    draws = []
    for _ in range(n_resamples):
        pick = rng.integers(0, n, n)
        draws.append(length_controlled(list(y[pick]), list(x[pick])))
    result["ci_low"], result["ci_high"] = _percentile_ci(draws, confidence)
    return result


def win_rate_stats(
    items: list[dict[str, Any]], confidence: float = 0.95, n_resamples: int = 1000, seed: int = 0
) -> dict[str, dict[str, Any]]:
    """The figures of one judged comparison from its items (dicts with `outcome`, `length_a`, `length_b` and, for
    pairwise judges, `a_first_choice` / `b_first_choice`): raw and length-controlled win rates of a, the judge's
    position bias (share of parsed items whose two orders chose the same slot) and the counts."""
    parsed = [i for i in items if i["outcome"] != "unparsed"]
    preferences = [preference(i["outcome"]) for i in parsed]
    features = length_feature([i["length_a"] - i["length_b"] for i in parsed])
    counts = {k: sum(i["outcome"] == k for i in items) for k in OUTCOMES}
    raw = _rate(preferences, confidence, n_resamples, seed)
    stats: dict[str, dict[str, Any]] = {
        "win_rate": raw,
        "lc_win_rate": length_controlled_ci(preferences, features, confidence, n_resamples, seed),
        # over the items the judge was asked about: identical answers are tied without asking, and would count
        # as "followed the position" whatever the judge does
        "position_bias": _rate(
            [float(i["a_first_choice"] == i["b_first_choice"]) for i in parsed if not i.get("identical")],
            confidence,
            n_resamples,
            seed,
        ),
        "identical_share": _rate([float(bool(i.get("identical"))) for i in items], confidence, n_resamples, seed),
        "unparsed_rate": _rate([float(i["outcome"] == "unparsed") for i in items], confidence, n_resamples, seed),
    }
    for name, count in counts.items():
        stats[name] = {"mean": float(count), "n": len(items), "ci_low": None, "ci_high": None}
    return stats


def reward_difference(
    scores_a: dict[str, float], scores_b: dict[str, float], confidence: float, n_resamples: int, seed: int
) -> dict[str, dict[str, Any]]:
    """A reward model's paired difference (a − b, per prompt) with its CI, and a's win rate by score (ties ½)."""
    from pipeline.core.stats import paired_difference

    difference = paired_difference(scores_a, scores_b, confidence, n_resamples, seed, min_discordant=1)
    common = sorted(set(scores_a) & set(scores_b))
    wins = [1.0 if scores_a[p] > scores_b[p] else 0.0 if scores_a[p] < scores_b[p] else 0.5 for p in common]
    return {"reward_difference": difference, "win_rate": _rate(wins, confidence, n_resamples, seed)}


# ----------------------------------------------------------------------------------------------- judge vs people

AGREEMENT_LABELS = ("a", "b", "tie")


def agreement(pairs: list[tuple[str, str]], confidence: float = 0.95) -> dict[str, Any]:
    """How often a judge agrees with people on the same items: `pairs` of (judge outcome, human verdict), each one
    of a / b / tie. Percent agreement with a Wilson interval, and Cohen's kappa with its asymptotic interval
    (statsmodels), both with n."""
    from scipy.stats import norm
    from statsmodels.stats.inter_rater import cohens_kappa
    from statsmodels.stats.proportion import proportion_confint

    unknown = {label for pair in pairs for label in pair} - set(AGREEMENT_LABELS)
    if unknown:
        raise ValueError(f"agreement: labels must be {', '.join(AGREEMENT_LABELS)}; got {', '.join(sorted(unknown))}")
    n = len(pairs)
    result: dict[str, Any] = {"n": n, "confidence": confidence}
    if n == 0:
        return {**result, "agreement": None, "agreement_ci": (None, None), "kappa": None, "kappa_ci": (None, None)}
    agreed = sum(judge == human for judge, human in pairs)
    low, high = proportion_confint(agreed, n, alpha=1 - confidence, method="wilson")
    result.update(agreement=agreed / n, agreement_ci=(float(low), float(high)))
    table = [
        [sum(1 for j, h in pairs if j == row and h == col) for col in AGREEMENT_LABELS] for row in AGREEMENT_LABELS
    ]
    kappa = cohens_kappa(table)
    value = float(kappa.kappa)
    if math.isnan(value):  # one label only on both sides: chance agreement is 1, kappa is undefined
        return {**result, "kappa": None, "kappa_ci": (None, None)}
    half = float(norm.ppf(1 - (1 - confidence) / 2)) * float(kappa.std_kappa)  # its asymptotic standard error
    result.update(kappa=value, kappa_ci=(value - half, value + half))
    return result
