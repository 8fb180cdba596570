"""Seed-aware intervals (seeds and prompts resampled) and the A/A control (identical methods across seeds)."""

from __future__ import annotations

import random

import pytest

from pipeline.core.stats import aa_false_positives, seeds_and_prompts_ci


def _cells(seed_offsets, n_prompts=40, noise=0.2, seed=0):
    rng = random.Random(seed)
    prompt_effect = [rng.gauss(0, 1) for _ in range(n_prompts)]
    return [
        {f"p{i}": offset + prompt_effect[i] + rng.gauss(0, noise) for i in range(n_prompts)} for offset in seed_offsets
    ]


def test_an_interval_over_seeds_and_prompts_carries_the_training_noise_prompts_alone_miss():
    per_seed = _cells([-1.0, 0.0, 1.0, 0.5, -0.5])  # the seeds disagree by far more than the prompts' noise
    stat = seeds_and_prompts_ci(per_seed, n_resamples=2000)
    assert (stat["n_seeds"], stat["n_prompts"]) == (5, 40)
    prompt_only = stat["prompt_only"]
    assert stat["ci_low"] <= stat["mean"] <= stat["ci_high"]
    width, prompt_width = stat["ci_high"] - stat["ci_low"], prompt_only["ci_high"] - prompt_only["ci_low"]
    assert width > 1.3 * prompt_width  # the seed spread widens it
    agreeing = seeds_and_prompts_ci(_cells([0.0, 0.0, 0.0, 0.0, 0.0]), n_resamples=2000)
    assert agreeing["ci_high"] - agreeing["ci_low"] < width


def test_one_seed_gives_no_seed_aware_interval():
    stat = seeds_and_prompts_ci(_cells([0.0]))
    assert stat["ci_low"] is None and stat["prompt_only"]["ci_low"] is not None


def test_the_aa_control_counts_differences_between_identical_methods_as_false_positives():
    identical = {f"m{k}": _cells([0.0, 0.0, 0.0], noise=1.0, seed=k) for k in range(10)}
    result = aa_false_positives(identical, n_resamples=500)
    assert result["comparisons"] == 30 and result["rate"] == result["significant"] / 30
    assert result["rate"] <= 0.2  # about alpha: these seeds differ by noise alone
    shifted = {"m": [{k: v + 2.0 * s for k, v in cells.items()} for s, cells in enumerate(_cells([0, 0, 0]))]}
    assert aa_false_positives(shifted, n_resamples=500)["significant"] == 3  # a real seed effect is seen
    assert "of 3 seed-vs-seed comparisons" in aa_false_positives(shifted, n_resamples=500)["text"]


@pytest.mark.slow
def test_a_seed_group_of_the_tiny_dag_reports_seed_aware_intervals_and_its_aa_control(tiny_model_dir, alignlab_home):
    from pipeline.core.configs import preset
    from pipeline.seed_group import run_group

    spec = preset("tiny-ci")
    spec.compare.n_bootstrap = 300
    report = run_group(spec, [0, 1, 2], alignlab_home)
    assert report["seeds"] == 3
    headline = report["headline"]["preference_accuracy"]
    assert headline["n_seeds"] == 3 and headline["n_prompts"] >= 10
    aa = report["aa"]
    assert aa["comparisons"] == 3 * len({d["name"] for d in aa["details"]})  # 3 seed pairs per subject
    assert all(not d["name"].startswith("base:") for d in aa["details"])  # the untrained base is no A/A subject
    assert aa["rate"] <= 0.2, aa["text"]
    text = open(report["path"]).read()
    assert "intervals resampling seeds and prompts" in text and aa["text"] in text


def test_seed_group_statistics_read_per_prompt_values_of_runs():
    from pipeline.core.stats import seed_group_statistics

    rng = random.Random(1)

    def run(shift):
        return {
            m: {"new_tokens": {f"p{i}": 10 + (shift if m == "sft_dpo" else 0) + rng.gauss(0, 1) for i in range(30)}}
            for m in ("base", "sft", "sft_dpo", "dpo_only")
        }

    group = seed_group_statistics({1: run(-3.0), 2: run(-3.0), 3: run(-3.0)}, n_resamples=500)
    (row,) = group["headline"]
    assert row["metric"] == "new_tokens" and (row["seeds"], row["prompts"]) == (3, 30)
    assert -4 < row["mean"] < -2 and row["ci (seeds × prompts)"].startswith("[")
    assert group["aa"]["comparisons"] == 3 * 3  # sft, sft_dpo, dpo_only; base is untrained
