"""The judge's statistics (pipeline.core.judging) and the stage's bookkeeping, checked against scipy and statsmodels
recomputations, and a judge with a known answer: one that always prefers the longer answer."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.core.configs import JudgeConfig, RunSpec, from_dict, to_dict
from pipeline.core.errors import ConfigError
from pipeline.core.judging import (
    LC_RIDGE,
    SlotVerdict,
    agreement,
    length_feature,
    outcome,
    preference,
    win_rate_stats,
)
from pipeline.core.registry import variant_stages_onward
from pipeline.judges import JudgeItem, parse_choice
from pipeline.stages.judge import Progress, judged_prompts, pairwise_rows, summarize


def test_a_method_wins_only_when_both_orders_choose_it():
    first, second = SlotVerdict("1"), SlotVerdict("2")
    assert outcome(first, second) == "a"  # a in slot 1 chosen; then a in slot 2 chosen
    assert outcome(second, first) == "b"
    assert outcome(first, first) == "tie" and outcome(second, second) == "tie"  # the verdict followed the slot
    assert outcome(SlotVerdict(None), second) == "unparsed" == outcome(first, SlotVerdict(None))


def test_free_text_answers_are_parsed_for_a_label_or_left_unparsed():
    assert parse_choice("A") == "1" and parse_choice(" b.") == "2" and parse_choice("Response B is better") == "2"
    assert parse_choice("**A**") == "1"
    assert parse_choice("Both are fine") is None and parse_choice("") is None and parse_choice("Actually, B") is None


def _items(rng: np.random.Generator, n: int, judge) -> list[dict]:
    rows = []
    for index in range(n):
        length_a, length_b = int(rng.normal(400, 120)), int(rng.normal(300, 120))
        a_first, b_first = judge(index, length_a, length_b)
        rows.append(
            {
                "outcome": outcome(a_first, b_first),
                "length_a": length_a,
                "length_b": length_b,
                "a_first_choice": a_first.choice,
                "b_first_choice": b_first.choice,
            }
        )
    return rows


def _noisy_judge(rng):
    def judge(index, length_a, length_b):
        pick = rng.random()
        if pick < 0.15:  # position bias: slot 1 in both orders
            return SlotVerdict("1"), SlotVerdict("1")
        if pick < 0.2:
            return SlotVerdict(None), SlotVerdict("1")
        a_wins = rng.random() < 0.6
        return SlotVerdict("1" if a_wins else "2"), SlotVerdict("2" if a_wins else "1")

    return judge


def test_win_rates_match_a_recomputation_with_scipy_and_statsmodels():
    import statsmodels.api as sm
    from scipy import stats

    rng = np.random.default_rng(3)
    items = _items(rng, 80, _noisy_judge(rng))
    figures = win_rate_stats(items, confidence=0.95, n_resamples=500, seed=7)
    parsed = [i for i in items if i["outcome"] != "unparsed"]
    y = np.array([preference(i["outcome"]) for i in parsed])
    assert 0 < figures["unparsed"]["mean"] == len(items) - len(parsed)
    assert figures["tie"]["mean"] == sum(i["outcome"] == "tie" for i in items) > 0
    # raw: the mean preference, ties half, with scipy's BCa bootstrap over items
    assert figures["win_rate"]["mean"] == pytest.approx(y.mean()) and figures["win_rate"]["n"] == len(parsed)
    ci = stats.bootstrap((y,), np.mean, n_resamples=500, method="BCa", rng=np.random.default_rng(7)).confidence_interval
    assert (figures["win_rate"]["ci_low"], figures["win_rate"]["ci_high"]) == pytest.approx((ci.low, ci.high))
    # length-controlled: statsmodels' ridge-penalised binomial GLM on tanh(Δ / sd), read at Δ = 0
    deltas = np.array([i["length_a"] - i["length_b"] for i in parsed], dtype=float)
    x = np.tanh(deltas / deltas.std(ddof=1))
    assert length_feature(list(deltas)) == pytest.approx(list(x))
    glm = sm.GLM(y, sm.add_constant(x), family=sm.families.Binomial())
    fit = glm.fit_regularized(alpha=np.asarray(LC_RIDGE), L1_wt=0.0)
    assert figures["lc_win_rate"]["mean"] == pytest.approx(1 / (1 + np.exp(-fit.params[0])), abs=1e-4)
    low, high = figures["lc_win_rate"]["ci_low"], figures["lc_win_rate"]["ci_high"]
    assert low < figures["lc_win_rate"]["mean"] < high
    # position bias: parsed items whose two orders chose the same slot
    same_slot = [i["a_first_choice"] == i["b_first_choice"] for i in parsed]
    assert figures["position_bias"]["mean"] == pytest.approx(np.mean(same_slot)) and 0 < np.mean(same_slot) < 1


class LongerJudge:
    """Known answer: always prefers the longer response, whatever the slot."""

    name = "longer-answer"

    def judge(self, items: list[JudgeItem], on_batch=None) -> list[SlotVerdict]:
        return [SlotVerdict("1" if len(i.first) > len(i.second) else "2", None) for i in items]


def test_a_judge_that_prefers_longer_answers_wins_raw_and_is_even_once_length_is_controlled():
    # the setting of the estimator's simulation study (pipeline.core.judging): the interval covered ½ in 30 of 30 seeds
    rng = np.random.default_rng(11)
    n = 100
    lengths_a, lengths_b = rng.normal(400, 120, n).astype(int), rng.normal(300, 120, n).astype(int)
    answers = {
        "sft_dpo": {f"p{i}": {"prompt": f"q{i}", "generation": "x" * lengths_a[i]} for i in range(n)},
        "dpo_only": {f"p{i}": {"prompt": f"q{i}", "generation": "y" * lengths_b[i]} for i in range(n)},
    }
    comparisons = judged_prompts(answers, max_prompts=0)
    assert [(a, b) for a, b, _ in comparisons] == [("sft_dpo", "dpo_only")]
    rows = pairwise_rows(LongerJudge(), comparisons, answers, Progress("judge", None))
    spec = RunSpec()
    figures = {f["statistic"]: f for f in summarize(rows, "model", spec)}
    raw, lc = figures["win_rate"], figures["lc_win_rate"]
    assert raw["value"] == pytest.approx(np.mean(lengths_a > lengths_b)) and raw["ci_low"] > 0.6  # far from ½
    assert lc["ci_low"] <= 0.5 <= lc["ci_high"] and abs(lc["value"] - 0.5) < 0.15
    assert figures["position_bias"]["value"] == 0.0 and figures["tie"]["value"] == 0


def test_agreement_with_people_matches_cohens_formula():
    pairs = [("a", "a")] * 12 + [("b", "b")] * 9 + [("tie", "tie")] * 3 + [("a", "b")] * 4 + [("b", "tie")] * 2
    stats = agreement(pairs)
    n = len(pairs)
    observed = 24 / n
    judge = {k: sum(j == k for j, _ in pairs) / n for k in ("a", "b", "tie")}
    people = {k: sum(h == k for _, h in pairs) / n for k in ("a", "b", "tie")}
    chance = sum(judge[k] * people[k] for k in judge)
    assert stats["n"] == n and stats["agreement"] == pytest.approx(observed)
    assert stats["kappa"] == pytest.approx((observed - chance) / (1 - chance))
    low, high = stats["kappa_ci"]
    assert low < stats["kappa"] < high and stats["agreement_ci"][0] < observed < stats["agreement_ci"][1]
    assert agreement([("a", "a")] * 4)["kappa"] is None  # one label on both sides: kappa undefined, not 1


def test_judge_config_takes_a_variable_name_never_a_key_and_a_url_without_credentials():
    with pytest.raises(ConfigError) as caught:
        JudgeConfig(api_key_env="sk-live-abc123")
    assert "sk-live-abc123" not in str(caught.value) and "api_key_env" in str(caught.value)
    with pytest.raises(ConfigError, match="endpoint_url"):
        JudgeConfig(kind="endpoint", endpoint_url="http://user:secret@host/v1", endpoint_model="m")
    with pytest.raises(ConfigError, match="endpoint_url"):
        JudgeConfig(kind="endpoint", endpoint_model="m")
    assert JudgeConfig(kind="endpoint", endpoint_url="http://127.0.0.1:8000/v1", endpoint_model="m").kind == "endpoint"


def test_the_judge_is_optional_and_older_specs_migrate_without_it():
    assert "judge" not in RunSpec().stages
    assert "judge" not in variant_stages_onward(RunSpec().stages)
    assert variant_stages_onward([*RunSpec().stages, "judge"])[-1] == "judge"
    stored = to_dict(RunSpec())
    stored.pop("judge")
    stored["spec_version"] = 3
    migrated = from_dict(RunSpec, stored)
    assert migrated.judge == JudgeConfig() and "judge" not in migrated.stages


def test_judge_rows_are_recorded_once_and_read_back_on_sqlite_and_postgresql(redis_conn, engine):
    from db import queries
    from db.models import Judgement, Sample
    from db.session import write_session
    from tests.conftest import add_stage_run
    from workers.events import EventEmitter, EventKind
    from workers.recorder import Recorder

    run_id, stage_id = add_stage_run(engine, node="judge")
    with write_session(engine) as s:  # the outputs judged, and one reviewer's verdict on the first item
        for method, text in (("sft_dpo", "Paris."), ("dpo_only", "It is Lyon.")):
            s.add(
                Sample(
                    run_id=run_id,
                    stage_run_id=stage_id,
                    method=method,
                    prompt_id="p0",
                    prompt="Capital?",
                    generation=text,
                    stats={},
                )
            )
        s.add(
            Judgement(
                run_id=run_id,
                prompt_id="p0",
                method_a="dpo_only",
                method_b="sft_dpo",
                pair="dpo_only|sft_dpo",
                winner="sft_dpo",
                reviewer="ada",
            )
        )
    row = {
        "judge": "m @ host",
        "method_a": "sft_dpo",
        "method_b": "dpo_only",
        "prompt_id": "p0",
        "length_a": 6,
        "length_b": 11,
        "outcome": "b",
        "a_first_choice": "2",
        "b_first_choice": "1",
        "p_a_first": None,
        "p_a_second": None,
        "answers": ["B", "A"],
        "identical": False,
    }
    figure = {
        "judge": "m @ host",
        "method_a": "sft_dpo",
        "method_b": "dpo_only",
        "statistic": "win_rate",
        "value": 0.0,
        "ci_low": None,
        "ci_high": None,
        "n": 1,
    }
    emitter = EventEmitter(redis_conn, run_id, stage_id)
    emitter.emit_rows(EventKind.verdicts, [row])
    emitter.emit_rows(EventKind.judge_figures, [figure])
    assert Recorder(redis_conn, engine).drain() == 2
    assert queries.judge_verdicts(run_id) == [{**row, "score_a": None, "score_b": None}]
    assert queries.judge_figures(run_id) == [figure]
    (beside,) = queries.judge_beside_people(run_id)
    assert (beside["judge_says"], beside["reviewer_says"]) == ("dpo_only", "sft_dpo")
    assert (beside["output_a"], beside["output_b"]) == ("Paris.", "It is Lyon.")


def test_a_judge_model_path_outside_the_workers_roots_is_refused_before_queueing(tmp_path):
    from pipeline.paths import confine_spec

    outside = tmp_path / "judge-model"
    outside.mkdir()
    (outside / "config.json").write_text("{}")
    spec = RunSpec(stages=[*RunSpec().stages, "judge"])
    spec.judge.model.name_or_path = str(outside)
    with pytest.raises(ConfigError, match="outside the directories runs may read"):
        confine_spec(spec, roots=[tmp_path / "home"])


def test_identical_answers_are_tied_without_asking_and_left_out_of_position_bias():
    """28 of 55 items identical once inflated position bias to 0.909: an identical pair is a tie nobody judged."""
    from pipeline.core.judging import SlotVerdict
    from pipeline.stages import Progress
    from pipeline.stages.judge import pairwise_rows

    asked = []

    class FirstSlotJudge:  # always picks slot 1: pure position bias on the items it is asked about
        name = "first-slot"

        def judge(self, items, on_batch=None):
            asked.extend(items)
            return [SlotVerdict("1") for _ in items]

    def reply(i: int, text: str) -> dict:
        return {"prompt": "<|im_start|>system ...", "instruction": f"Question {i}?", "generation": text}

    replies = {
        "sft_dpo": {f"p{i}": reply(i, "Same." if i < 3 else f"answer {i}") for i in range(5)},
        "dpo_only": {f"p{i}": reply(i, "same." if i < 3 else f"other {i}") for i in range(5)},
    }
    comparison = [("sft_dpo", "dpo_only", [f"p{i}" for i in range(5)])]
    rows = pairwise_rows(FirstSlotJudge(), comparison, replies, Progress("judge", None))
    assert len(asked) == 4  # two non-identical items, both orders; the three identical ones were never sent
    assert {item.prompt for item in asked} == {"Question 3?", "Question 4?"}  # the user's words, not the template
    assert sorted(r["outcome"] for r in rows) == ["tie"] * 5  # slot 1 in both orders is a tie too
    assert sum(r["identical"] for r in rows) == 3
    figures = win_rate_stats(rows, confidence=0.95, n_resamples=200, seed=0)
    assert figures["position_bias"]["mean"] == 1.0 and figures["position_bias"]["n"] == 2  # over the asked ones
    assert figures["identical_share"]["mean"] == pytest.approx(3 / 5)
