"""The comparison's statistics: verdicts that do not overclaim, checked against scipy on planted samples."""

import random

import pytest
from scipy import stats

from pipeline.core.stats import adjust_p_values, correct_family, paired_difference


def planted(n_prompts: int, effect: dict[int, float], per_prompt: int = 1) -> tuple[dict, dict, dict]:
    """a, b and clusters: item (prompt p, k) has a − b = effect.get(p, 0)."""
    a, b, clusters = {}, {}, {}
    for p in range(n_prompts):
        for k in range(per_prompt):
            item = f"{p}:{k}"
            a[item], b[item], clusters[item] = 0.5 + effect.get(p, 0.0), 0.5, f"p{p}"
    return a, b, clusters


def compared(n_prompts: int, effect: dict[int, float], **options) -> dict:
    a, b, clusters = planted(n_prompts, effect)
    return paired_difference(a, b, clusters=clusters, **options)


def test_mostly_zero_differences_get_too_few_discordant_prompts_not_a_zero_width_better():
    a, b, clusters = planted(60, {0: 1.0, 1: 1.0, 2: 1.0})  # 57 ties, 3 wins
    diff = paired_difference(a, b, clusters=clusters, min_discordant=10)
    assert diff["discordant"] == 3 and diff["verdict"] == "too few discordant prompts (3)"
    assert diff["ci_low"] < diff["ci_high"]  # a real interval, not [0.05, 0.05]


def test_every_difference_equal_is_a_zero_width_interval_with_no_verdict_below_the_minimum():
    a, b, clusters = planted(5, {p: 1.0 for p in range(5)})
    diff = paired_difference(a, b, clusters=clusters, min_discordant=10)
    assert diff["ci_low"] == diff["ci_high"] == 1.0 and diff["verdict"] == "too few discordant prompts (5)"


def test_no_verdict_the_exact_test_contradicts():
    # 14 prompts better by a lot, 9 worse by a little: the mean's CI excludes 0, the sign test does not (p ≈ 0.4)
    effect = {p: 1.0 for p in range(14)} | {p: -0.1 for p in range(14, 23)}
    a, b, clusters = planted(23, effect)
    diff = paired_difference(a, b, clusters=clusters, min_discordant=5)
    assert diff["ci_low"] > 0
    assert diff["sign_test_p"] == pytest.approx(stats.binomtest(14, 23, 0.5).pvalue)
    assert diff["sign_test_p"] > 0.05 and diff["verdict"] == "no detectable difference"


def test_a_clear_difference_is_better_and_matches_scipy():
    effect = {p: 1.0 for p in range(25)} | {p: -1.0 for p in range(25, 28)}
    a, b, clusters = planted(30, effect)
    diff = paired_difference(a, b, clusters=clusters, min_discordant=10)
    assert diff["sign_test_p"] == pytest.approx(stats.binomtest(25, 28, 0.5).pvalue)
    assert diff["ci_low"] > 0 and diff["verdict"] == "better"
    worse = paired_difference(a, b, clusters=clusters, min_discordant=10, higher_is_better=False)
    assert worse["verdict"] == "worse"


def test_pairs_sharing_a_prompt_are_resampled_together():
    rng = random.Random(0)
    effect = {p: rng.choice([1.0, -1.0, 1.0]) for p in range(20)}
    a, b, clusters = planted(20, effect, per_prompt=6)  # six identical pairs per prompt
    clustered = paired_difference(a, b, clusters=clusters, min_discordant=5)
    naive = paired_difference(a, b, min_discordant=5)  # every pair its own prompt
    assert clustered["n"] == naive["n"] == 120 and clustered["n_prompts"] == 20 and naive["n_prompts"] == 120
    width = clustered["ci_high"] - clustered["ci_low"]
    assert width > 1.8 * (naive["ci_high"] - naive["ci_low"])  # ~√6 wider: 6 copies are one observation
    wins = sum(v > 0 for v in effect.values())
    assert clustered["sign_test_p"] == pytest.approx(stats.binomtest(wins, 20, 0.5).pvalue)


def test_holm_and_bh_match_their_definitions():
    p = [0.01, 0.04, 0.03, None, 0.5]
    assert adjust_p_values(p, "holm") == pytest.approx([0.04, 0.09, 0.09, None, 0.5], nan_ok=True)
    bh = adjust_p_values(p, "bh")
    expected = stats.false_discovery_control([0.01, 0.04, 0.03, 0.5], method="bh")
    assert [bh[i] for i in (0, 1, 2, 4)] == pytest.approx(list(expected)) and bh[3] is None


def test_the_family_correction_changes_a_borderline_verdict():
    # 20 of 28 discordant prompts better: p ≈ 0.036 alone, "better"; one of six in a family, Holm makes it ≈ 0.2
    borderline = compared(28, {p: 1.0 for p in range(20)} | {p: -1.0 for p in range(20, 28)})
    assert borderline["sign_test_p"] < 0.05 and borderline["verdict"] == "better"
    nulls = [compared(28, {p: (1.0 if p % 2 else -1.0) for p in range(28)}) for _ in range(5)]
    family = [borderline, *nulls]
    correct_family(family, "holm", min_discordant=10)
    assert borderline["p_adjusted"] == pytest.approx(min(1.0, 6 * borderline["sign_test_p"]))
    assert borderline["verdict"] == "no detectable difference"


def test_the_minimum_detectable_difference_shrinks_with_n():
    small = compared(21, {p: (1.0 if p % 3 == 0 else 0.0) for p in range(21)})
    large = compared(84, {p: (1.0 if p % 3 == 0 else 0.0) for p in range(84)})
    assert large["min_detectable_difference"] < small["min_detectable_difference"]
    assert large["min_detectable_difference"] == pytest.approx(small["min_detectable_difference"] / 2, rel=0.15)
