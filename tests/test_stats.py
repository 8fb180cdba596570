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


def scipy_sign_flip_p(prompt_means) -> float:
    """The same test computed independently: scipy's permutation test of a one-sample mean flips signs."""
    import numpy as np

    exact = len(prompt_means) <= 16
    return stats.permutation_test(
        (np.asarray(prompt_means, dtype=float),),
        np.mean,
        permutation_type="samples",
        n_resamples=np.inf if exact else 100000,
        alternative="two-sided",
        random_state=1,
    ).pvalue


def test_three_prompts_that_differ_among_sixty_cannot_give_a_verdict_and_the_test_says_why():
    a, b, clusters = planted(60, {0: 1.0, 1: 1.0, 2: 1.0})  # 57 ties, 3 wins
    diff = paired_difference(a, b, clusters=clusters)
    assert diff["discordant"] == 3 and diff["verdict"] == "no detectable difference"
    assert diff["p"] == pytest.approx(0.25, abs=0.02)  # 2 of the 8 sign patterns of 3 wins are as extreme
    assert diff["ci_low"] <= 0 < diff["ci_high"]  # a real interval, holding 0 and the estimate
    floor = paired_difference(a, b, clusters=clusters, min_discordant=10)  # a floor the config declared
    assert floor["verdict"] == "too few discordant prompts (3)"


def test_every_difference_equal_is_a_zero_width_interval_at_the_estimate():
    a, b, clusters = planted(5, {p: 1.0 for p in range(5)})
    diff = paired_difference(a, b, clusters=clusters)
    assert diff["ci_low"] == diff["ci_high"] == diff["mean"] == 1.0
    assert diff["p"] == pytest.approx(2 / 32)  # exact: only all-plus and all-minus are as extreme
    assert diff["verdict"] == "no detectable difference"  # five prompts cannot reach p < 0.05, however clear


def test_no_prompt_differs():
    a, b, clusters = planted(10, {})
    assert paired_difference(a, b, clusters=clusters)["verdict"] == "no prompt differs"


def test_the_verdict_is_the_sign_flip_test_and_the_sign_test_is_a_robustness_line():
    # 14 prompts better by a lot, 9 worse by a little: the mean difference is clear (sign-flip p < 0.001) although
    # the count of wins is not (sign test p ≈ 0.4): the pre-declared test decides; the sign test is shown beside it
    effect = {p: 1.0 for p in range(14)} | {p: -0.1 for p in range(14, 23)}
    a, b, clusters = planted(23, effect)
    diff = paired_difference(a, b, clusters=clusters)
    means = [effect.get(p, 0.0) for p in range(23)]
    assert diff["p"] == pytest.approx(scipy_sign_flip_p(means), abs=0.005)
    assert diff["sign_test_p"] == pytest.approx(stats.binomtest(14, 23, 0.5).pvalue)
    assert diff["p"] < 0.05 < diff["sign_test_p"] and diff["verdict"] == "better"
    assert diff["ci_low"] > 0


def test_a_clear_difference_is_better_and_matches_scipy():
    effect = {p: 1.0 for p in range(25)} | {p: -1.0 for p in range(25, 28)}
    a, b, clusters = planted(30, effect)
    diff = paired_difference(a, b, clusters=clusters)
    assert diff["p"] == pytest.approx(scipy_sign_flip_p([effect.get(p, 0.0) for p in range(30)]), abs=0.002)
    assert diff["sign_test_p"] == pytest.approx(stats.binomtest(25, 28, 0.5).pvalue)
    assert diff["ci_low"] > 0 and diff["verdict"] == "better"
    worse = paired_difference(a, b, clusters=clusters, higher_is_better=False)
    assert worse["verdict"] == "worse"


def test_the_interval_is_the_inverted_test_it_holds_the_estimate_and_excludes_zero_exactly_when_p_is_below_alpha():
    import numpy as np

    rng = np.random.default_rng(3)
    for trial in range(60):
        n = int(rng.integers(3, 40))
        means = list(rng.normal(rng.choice([0.0, 0.3, 1.0]), 1.0, n).round(2))
        a = {str(i): m for i, m in enumerate(means)}
        diff = paired_difference(a, {str(i): 0.0 for i in range(n)}, seed=trial)
        if diff["ci_low"] is None:  # up to 5 prompts: no shift is ever rejected (2 of 2^n patterns > 5%)
            assert n <= 5 and diff["p"] >= 0.05
            continue
        assert diff["ci_low"] <= diff["mean"] <= diff["ci_high"]
        assert (diff["ci_low"] > 0 or diff["ci_high"] < 0) == (diff["p"] < 0.05), (means, diff)


def test_on_null_data_the_false_positive_rate_is_near_alpha_and_planted_effects_are_found():
    """Calibration: 400 null replicates (per-prompt differences symmetric around 0, as accuracy differences are:
    -1, 0, +1) reject at 3–7%; a planted shift of 0.35 sd on 60 prompts is found about as often as the normal
    power calculation says (~80%)."""
    import numpy as np

    rng = np.random.default_rng(11)
    null_hits = planted_hits = 0
    for trial in range(400):
        null = rng.choice([-1.0, 0.0, 0.0, 1.0], size=60)
        diff = paired_difference({str(i): v for i, v in enumerate(null)}, {str(i): 0.0 for i in range(60)}, seed=trial)
        null_hits += diff["verdict"] in ("better", "worse")
    for trial in range(150):
        shifted = rng.normal(0.35, 1.0, 60)
        diff = paired_difference(
            {str(i): v for i, v in enumerate(shifted)}, {str(i): 0.0 for i in range(60)}, seed=trial
        )
        planted_hits += diff["verdict"] == "better"
    assert 0.03 <= null_hits / 400 <= 0.07, null_hits
    assert 0.65 <= planted_hits / 150 <= 0.92, planted_hits


def test_pairs_sharing_a_prompt_count_once():
    rng = random.Random(0)
    effect = {p: rng.choice([1.0, -1.0, 1.0]) for p in range(20)}
    a, b, clusters = planted(20, effect, per_prompt=6)  # six identical pairs per prompt
    clustered = paired_difference(a, b, clusters=clusters)
    naive = paired_difference(a, b)  # every pair its own prompt
    assert clustered["n"] == naive["n"] == 120 and clustered["n_prompts"] == 20 and naive["n_prompts"] == 120
    width = clustered["ci_high"] - clustered["ci_low"]
    assert width > 1.8 * (naive["ci_high"] - naive["ci_low"])  # ~√6 wider: 6 copies are one observation
    wins = sum(v > 0 for v in effect.values())
    assert clustered["sign_test_p"] == pytest.approx(stats.binomtest(wins, 20, 0.5).pvalue)
    assert clustered["p"] == pytest.approx(scipy_sign_flip_p(list(effect.values())), abs=0.01)


def test_holm_and_bh_match_their_definitions():
    p = [0.01, 0.04, 0.03, None, 0.5]
    assert adjust_p_values(p, "holm") == pytest.approx([0.04, 0.09, 0.09, None, 0.5], nan_ok=True)
    bh = adjust_p_values(p, "bh")
    expected = stats.false_discovery_control([0.01, 0.04, 0.03, 0.5], method="bh")
    assert [bh[i] for i in (0, 1, 2, 4)] == pytest.approx(list(expected)) and bh[3] is None


def test_the_family_correction_changes_a_borderline_verdict():
    # 20 of 28 prompts better: p ≈ 0.036 alone, "better"; one of six in a family, Holm makes it ≈ 0.2
    borderline = compared(28, {p: 1.0 for p in range(20)} | {p: -1.0 for p in range(20, 28)})
    assert borderline["p"] < 0.05 and borderline["verdict"] == "better"
    nulls = [compared(28, {p: (1.0 if p % 2 else -1.0) for p in range(28)}) for _ in range(5)]
    family = [borderline, *nulls]
    correct_family(family, "holm")
    assert borderline["p_adjusted"] == pytest.approx(min(1.0, 6 * borderline["p"]))
    assert borderline["verdict"] == "no detectable difference"


def test_the_minimum_detectable_difference_shrinks_with_n():
    small = compared(21, {p: (1.0 if p % 3 == 0 else 0.0) for p in range(21)})
    large = compared(84, {p: (1.0 if p % 3 == 0 else 0.0) for p in range(84)})
    assert large["min_detectable_difference"] < small["min_detectable_difference"]
    assert large["min_detectable_difference"] == pytest.approx(small["min_detectable_difference"] / 2, rel=0.15)


def _rows_with_duplicated_outputs():
    """Pair and sample rows of four methods over 26 prompts (2 pairs each): one method says the same thing to every
    prompt, one repeats a few answers, the others differ."""
    rng = random.Random(5)
    pair_rows, sample_rows = {}, {}
    for method, outputs in (
        ("base", lambda p: f"answer {p}"),
        ("sft", lambda p: "the same answer"),
        ("sft_dpo", lambda p: f"answer {p % 4}"),
        ("dpo_only", lambda p: f"answer {p} and more"),
    ):
        pair_rows[method] = {}
        sample_rows[method] = {}
        for p in range(26):
            for k in range(2):
                correct = float(rng.random() < 0.7)
                pair_rows[method][f"{p}:{k}"] = {
                    "pair_id": f"{p}:{k}",
                    "prompt_id": f"p{p}",
                    "correct": correct,
                    "correct_mean": correct,
                    "margin": rng.gauss(1, 2),
                    "negative_type": "truncated",
                    "chosen_logp": -10.0,
                    "rejected_logp": -12.0,
                }
            text = outputs(p)
            stats_ = {"reference_nll": rng.uniform(1, 3), "eos_rate": float(rng.random() < 0.8), "new_tokens": 5.0}
            stats_.update({"distinct_2": 1.0, "repetition": 0.0, "template_leak_rate": 0.0, "refusal_rate": 0.0})
            stats_.update({"exact_match": float(rng.random() < 0.3), "token_f1": rng.random()})
            sample_rows[method][f"p{p}"] = {"prompt_id": f"p{p}", "generation": text, "stats": stats_}
    return pair_rows, sample_rows


def test_no_interval_anywhere_excludes_its_estimate_on_a_run_with_duplicated_outputs():
    from pipeline.core.configs import CompareConfig
    from pipeline.core.metrics import METRICS
    from pipeline.stages.compare import _differences, _method_table, add_implicit_rewards

    pair_rows, sample_rows = _rows_with_duplicated_outputs()
    add_implicit_rewards(pair_rows)
    ci_args = {"confidence": 0.95, "n_resamples": 2000, "seed": 0}
    table = _method_table(pair_rows, sample_rows, ci_args)
    checked = 0
    for method, row in table.items():
        assert set(METRICS) - {"chars", "length_ratio"} <= set(row) | {"implicit_reward_accuracy"}
        for metric, stat in row.items():
            if stat.get("ci_low") is not None:
                assert stat["ci_low"] <= stat["mean"] <= stat["ci_high"], (method, metric, stat)
                checked += 1
    assert table["sft"]["unique_output_share"]["mean"] == 1 / 26  # the duplicate outputs are counted...
    assert table["sft"]["unique_output_share"]["ci_low"] is None  # ...and no resampled interval pretends otherwise
    for diff in _differences(pair_rows, sample_rows, CompareConfig(), ci_args):
        if diff["ci_low"] is not None:
            assert diff["ci_low"] <= diff["mean"] <= diff["ci_high"], diff
            checked += 1
    assert checked > 50


def test_methods_table_intervals_resample_prompts_not_pairs():
    """Recomputed independently: the per-prompt means of the pairs, bootstrapped (BCa) with scipy."""
    import numpy as np

    from pipeline.core.metrics import METRICS
    from pipeline.stages.compare import _method_table

    pair_rows, sample_rows = _rows_with_duplicated_outputs()
    table = _method_table(pair_rows, sample_rows, {"confidence": 0.95, "n_resamples": 2000, "seed": 0})
    stat = table["base"]["preference_accuracy"]
    by_prompt = {}
    for row in pair_rows["base"].values():
        by_prompt.setdefault(row["prompt_id"], []).append(row["correct"])
    means = np.array([np.mean(v) for v in by_prompt.values()])
    expected = stats.bootstrap(
        (means,), np.mean, confidence_level=0.95, n_resamples=2000, method="BCa", rng=np.random.default_rng(0)
    ).confidence_interval
    assert stat["n"] == 52 and stat["n_prompts"] == 26
    assert stat["mean"] == pytest.approx(means.mean())
    assert (stat["ci_low"], stat["ci_high"]) == pytest.approx((expected.low, expected.high))
    assert METRICS["preference_accuracy"].per == "pair"
