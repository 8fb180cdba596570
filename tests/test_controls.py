"""Experiments with a known answer: a planted effect must be detected, in its direction, or the run says it was not."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.core.configs import ControlConfig, NegativesConfig, preset
from pipeline.core.controls import control_status
from pipeline.core.errors import ConfigError
from pipeline.core.negative_types import NO_NEW_CONTENT, REGISTRY, NegativeContext

CONTROL = ControlConfig(name="positive control", metric="new_tokens", a="sft_dpo", b="sft", expect="lower")


def _diff(mean, low, high, n=40):
    return {"mean": mean, "ci_low": low, "ci_high": high, "n_prompts": n}


@pytest.mark.parametrize(
    "diff, status",
    [
        (_diff(-5.0, -6.0, -4.0), "detected"),
        (_diff(5.0, 4.0, 6.0), "wrong_direction"),
        (_diff(-1.0, -3.0, 1.0), "not_detected"),
        (_diff(0.0, 0.0, 0.0), "not_detected"),  # all equal: no effect at all
        ({"mean": 0.0, "ci_low": None, "ci_high": None, "n_prompts": 1}, "no_estimate"),
        (None, "no_estimate"),
    ],
)
def test_a_control_passes_only_when_the_interval_excludes_zero_on_the_planted_side(diff, status):
    result = control_status(CONTROL, diff, baseline_mean=13.0)
    assert result["status"] == status and result["passed"] is (status == "detected")


def test_the_control_sentence_gives_the_effect_its_relative_size_interval_and_n():
    text = control_status(CONTROL, _diff(-5.0, -6.0, -4.0), baseline_mean=12.5)["text"]
    assert text == (
        "positive control detected: new tokens sft_dpo − sft = -5 (-40%) [-6, -4], n = 40 prompts (expected lower)"
    )


def test_a_control_must_name_a_compared_metric_and_two_methods():
    with pytest.raises(ConfigError, match="not a compared metric"):
        ControlConfig(metric="no_such_metric")
    with pytest.raises(ConfigError, match="must differ from a"):
        ControlConfig(a="sft", b="sft")


def test_the_padded_negative_is_opt_in_and_is_its_chosen_answer_made_longer():
    assert "padded" not in NegativesConfig().types and "padded" in preset("tiny-control").negatives.types
    import random

    record = {"prompt": "p", "completion": " The sky is blue.", "meta": {"split": "train"}}
    padded = REGISTRY["padded"](record, NegativeContext(random.Random(0), [record], 0))
    assert padded.startswith("The sky is blue. ") and len(padded.split()) > 3 * len(record["completion"].split())


def test_the_first_sentence_negative_is_opt_in_and_is_its_chosen_answers_first_sentence():
    import random

    spec = preset("smol-control")
    assert "first_sentence" not in NegativesConfig().types and spec.negatives.types == ["first_sentence"]
    controls = [(c.metric, c.a, c.b, c.expect) for c in spec.compare.controls]
    assert controls == [("new_tokens", "sft_dpo", "sft", "higher")]
    context = NegativeContext(random.Random(0), [], 0)
    two = {"prompt": "p", "completion": " Paris is the capital. It lies on the Seine!", "meta": {"split": "train"}}
    assert REGISTRY["first_sentence"](two, context) == "Paris is the capital."
    one = {"prompt": "p", "completion": " Paris, on the Seine, e.g. 2.1 million people.", "meta": {"split": "train"}}
    assert REGISTRY["first_sentence"](one, context) is None  # one sentence: nothing shorter that is still an answer
    assert "first_sentence" in NO_NEW_CONTENT  # a prefix of its chosen answer: no held-out text of its own


@pytest.mark.slow
def test_the_tiny_positive_control_is_detected(tiny_model_dir, alignlab_home):
    """The tiny-control preset end to end: DPO on chosen-over-padded pairs makes the SFT model's held-out answers
    shorter, and the report says the planted effect was detected, with its interval."""
    from pipeline.dag import run_dag

    dag = run_dag(preset("tiny-control"), alignlab_home)
    report = json.loads((Path(dag.report_dir) / "report.json").read_text())
    (control,) = report["controls"]
    assert control["status"] == "detected", control["text"]
    assert control["mean"] < 0 and control["ci_high"] < 0 and control["n_prompts"] >= 20
    assert f"PASS: {control['text']}" in (Path(dag.report_dir) / "report.md").read_text()
