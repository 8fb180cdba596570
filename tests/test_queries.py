"""The dashboard's read models, on a run that went through the queue and the recorder."""

import pytest
from sqlalchemy import update

from db import queries
from db.models import Judgement, Sample
from db.session import write_session
from pipeline.core.errors import CommandError
from pipeline.core.registry import selected_nodes
from pipeline.core.text import same_text
from tests.test_queue import drain_queues
from workers import commands, scheduler
from workers.recorder import Recorder


def different(row, a, b):
    return not same_text(row["methods"][a]["generation"], row["methods"][b]["generation"])


def test_read_models_cover_runs_curves_comparison_samples_and_judgements(
    dag_run, tiny_ci_spec, redis_conn, engine, alignlab_home
):
    run_id = scheduler.submit(tiny_ci_spec, redis_conn, engine, tags=["q"])
    drain_queues(redis_conn)
    Recorder(redis_conn, engine).drain()

    runs = queries.list_runs(engine=engine)
    assert runs[0]["id"] == run_id and runs[0]["status"] == "succeeded" and runs[0]["done"] == runs[0]["total"] == 12
    assert queries.list_runs(tag="q", engine=engine)[0]["id"] == run_id
    assert queries.list_runs(tag="other", engine=engine) == []
    assert queries.list_runs(status="failed", engine=engine) == []

    detail = queries.run_detail(run_id, engine=engine)
    assert [s["node"] for s in detail["stages"]][:3] == ["split", "generate_sft", "train_sft"]
    assert detail["stages"][2]["checks"]["masking_verified"]["passed"] is True
    assert queries.run_detail(10**6, engine=engine) is None

    matrix = queries.comparison_matrix([run_id], engine=engine)
    accuracy = {r["method"]: r for r in matrix if r["metric"] == "preference_accuracy"}
    assert set(accuracy) == {"base", "sft", "sft_dpo", "dpo_only"}
    assert all(r["ci_low"] <= r["value"] <= r["ci_high"] for r in accuracy.values())

    rows = queries.samples_side_by_side(run_id, engine=engine)
    assert rows and all(set(r["methods"]) == {"base", "sft", "sft_dpo", "dpo_only"} for r in rows)
    flagged = queries.samples_side_by_side(run_id, only="flagged", engine=engine)
    assert [r["prompt_id"] for r in flagged] == [r["prompt_id"] for r in rows if r["flagged"]]
    assert all(any(m["flags"] for m in r["methods"].values()) for r in flagged)
    disagreeing = queries.samples_side_by_side(run_id, only="disagreeing", engine=engine)
    for row in disagreeing:
        assert len({bool(m["flags"]) for m in row["methods"].values()}) == 2

    reports = queries.validation_reports(run_id, engine=engine)
    assert {r["kind"] for r in reports} >= {"instructions", "sft", "negatives", "pairs"}
    assert all(r["passed"] for r in reports)
    masks = queries.previews(run_id, "mask_examples", engine=engine)
    assert masks and any(t["trained"] for t in masks[0]["tokens"])
    verdict = queries.previews(run_id, "verdict", engine=engine)[0]
    assert verdict["parity"]["fair"] is True

    prompt = next(r["prompt_id"] for r in rows if different(r, "sft_dpo", "dpo_only"))
    with write_session(engine) as s:
        s.add_all(
            [
                Judgement(
                    run_id=run_id,
                    prompt_id=prompt,
                    method_a=a,
                    method_b=b,
                    pair="dpo_only|sft_dpo",
                    winner=w,
                    reviewer=r,
                )
                for a, b, w, r in (
                    ("sft_dpo", "dpo_only", "sft_dpo", "ana"),
                    ("dpo_only", "sft_dpo", "sft_dpo", "bo"),
                    ("sft_dpo", "dpo_only", "tie", "cy"),
                )
            ]
        )
    from pipeline.core.stats import win_rate

    (rate,) = [win_rate(c) for c in queries.judgement_counts(run_id, engine=engine)]
    assert (rate["a"], rate["b"]) == ("dpo_only", "sft_dpo")
    assert (rate["wins"], rate["losses"], rate["ties"], rate["n"]) == (0, 2, 1, 3)
    assert abs(rate["win_rate_a"] - 0.5 / 3) < 1e-9
    assert rate["ci_low"] <= rate["win_rate_a"] <= rate["ci_high"]
    # reviewers who picked different winners for one prompt make it a disagreeing prompt
    assert prompt in {r["prompt_id"] for r in queries.samples_side_by_side(run_id, only="disagreeing", engine=engine)}


def test_metric_curves_of_a_training_stage(tiny_model_dir, tiny_ci_spec, redis_conn, engine, alignlab_home):
    import copy

    spec = copy.deepcopy(tiny_ci_spec)
    spec.stages = ["generate_sft", "train_sft"]
    spec.sft.seed = 3
    run_id = scheduler.submit(spec, redis_conn, engine)
    drain_queues(redis_conn)
    Recorder(redis_conn, engine).drain()
    curves = queries.metric_curves(run_id, ["loss", "lr"], engine=engine)
    losses = [c for c in curves if c["name"] == "loss"]
    assert losses and [c["step"] for c in losses] == list(range(1, len(losses) + 1))
    assert {c["node"] for c in curves} == {"train_sft"}


def test_dpo_only_relaunch_reuses_the_earlier_run_and_feeds_the_cross_run_sweep(
    dag_run, tiny_ci_spec, redis_conn, engine, alignlab_home
):
    from pipeline.core.configs import RunSpec, from_dict, to_dict
    from pipeline.core.registry import variant_stages_onward

    first = scheduler.submit(tiny_ci_spec, redis_conn, engine)
    changed = to_dict(tiny_ci_spec)
    changed["dpo"]["beta"], changed["stages"] = 0.3, variant_stages_onward()
    second = scheduler.submit(from_dict(RunSpec, changed), redis_conn, engine, parent_id=first)
    drain_queues(redis_conn)
    Recorder(redis_conn, engine).drain()

    detail = queries.run_detail(second, engine=engine)
    assert detail["status"] == "succeeded"
    statuses = {s["node"]: s["status"] for s in detail["stages"]}
    assert "generate_sft" not in statuses and "train_sft" not in statuses  # reused from the first run's artifacts
    assert {statuses["dpo_sft"], statuses["dpo_base"]} <= {"succeeded", "cached"}
    keys = {
        run: {s["node"]: s["artifact_key"] for s in queries.run_detail(run, engine=engine)["stages"]}
        for run in (first, second)
    }
    assert keys[second]["dpo_sft"] != keys[first]["dpo_sft"]  # beta changed: a new model, not the first run's

    assert queries.spec_differences([first, second], engine=engine) == {
        first: {"dpo.beta": 0.1},
        second: {"dpo.beta": 0.3},
    }
    rows = queries.sweep([first, second], "preference_accuracy", engine=engine)
    assert {(r["run_id"], r["dpo.beta"]) for r in rows} == {(first, 0.1), (second, 0.3)}
    assert {r["method"] for r in rows if r["run_id"] == second} == {"base", "sft", "sft_dpo", "dpo_only"}

    per_type = queries.by_negative_type([second], engine=engine)
    assert per_type and {r["method"] for r in per_type} == {"base", "sft", "sft_dpo", "dpo_only"}
    assert all(r["negative_type"] and r["n"] > 0 for r in per_type)


def test_seeds_launch_as_one_group(tiny_ci_spec, redis_conn, engine):
    ids = scheduler.submit_seeds(tiny_ci_spec, [1, 2, 3], redis_conn, engine, scope="training")
    runs = {r["id"]: r for r in queries.list_runs(engine=engine) if r["id"] in ids}
    assert len({r["group"] for r in runs.values()}) == 1 and None not in {r["group"] for r in runs.values()}
    specs = [queries.run_detail(i, engine=engine)["spec"] for i in ids]
    assert [s["sft"]["seed"] for s in specs] == [s["dpo"]["seed"] for s in specs] == [1, 2, 3]
    assert {s["generation"]["seed"] for s in specs} == {tiny_ci_spec.generation.seed}  # data stays shared
    assert [s["name"] for s in specs] == [f"tiny-ci-seed{i}" for i in (1, 2, 3)]
    for run_id in ids:
        commands.cancel(run_id, redis_conn, engine)


def test_sample_flags_name_each_problem():
    from pipeline.core.metrics import EvaluatedSample, sample_flags, sample_stats

    looping = "I'm sorry. Instruction: " + "again and again " * 40
    bad = EvaluatedSample(looping, 64, False, "short reference", None, 2.0, "Instruction: {instruction}\nResponse:")
    assert sample_flags(sample_stats(bad)) == ["no EOS", "repetition", "template leak", "refusal", "length blow-up"]
    good = EvaluatedSample("Paris is the capital.", 6, True, "It is Paris.", None, 1.0, "Q: {instruction}\nA:")
    assert sample_flags(sample_stats(good)) == []


def test_a_reused_stage_names_the_run_that_first_made_its_result(
    dag_run, tiny_ci_spec, redis_conn, engine, alignlab_home
):
    first = scheduler.submit(tiny_ci_spec, redis_conn, engine)
    drain_queues(redis_conn)
    Recorder(redis_conn, engine).drain()
    second = scheduler.submit(tiny_ci_spec, redis_conn, engine)
    drain_queues(redis_conn)
    Recorder(redis_conn, engine).drain()
    made_by = {s["node"]: s["made_by_run"] for s in queries.run_detail(second, engine=engine)["stages"]}
    assert len(made_by) == len(selected_nodes(tiny_ci_spec.stages)) and set(made_by.values()) == {first}


def test_blind_judging_serves_each_reviewer_what_is_left_and_never_two_identical_outputs(
    dag_run, tiny_ci_spec, redis_conn, engine, alignlab_home
):
    run_id = scheduler.submit(tiny_ci_spec, redis_conn, engine)
    drain_queues(redis_conn)
    Recorder(redis_conn, engine).drain()
    rows = queries.samples_side_by_side(run_id, engine=engine)
    first, second = rows[0]["prompt_id"], rows[1]["prompt_id"]
    with write_session(engine) as s:  # two methods that wrote the same text (up to case and spacing) for `first`
        s.execute(
            update(Sample)
            .where(Sample.run_id == run_id, Sample.prompt_id == first, Sample.method.in_(("base", "sft")))
            .values(generation="  Same   answer.")
        )
        s.execute(
            update(Sample)
            .where(Sample.run_id == run_id, Sample.prompt_id == second, Sample.method == "sft")
            .values(generation="A different answer.")
        )
    identical = sum(not different(r, "base", "sft") for r in queries.samples_side_by_side(run_id, engine=engine))

    queue = queries.blind_queue(run_id, "base", "sft", "ana", engine=engine)
    assert first not in [i["prompt_id"] for i in queue["left"]] and second in [i["prompt_id"] for i in queue["left"]]
    assert (queue["total"], queue["done"], queue["identical"]) == (len(rows) - identical, 0, identical)
    with pytest.raises(CommandError, match="same text"):
        commands.record_judgement(run_id, first, "base", "sft", "base", "ana", engine=engine)
    with pytest.raises(CommandError, match="reviewer"):
        commands.record_judgement(run_id, second, "base", "sft", "base", "  ", engine=engine)

    commands.record_judgement(run_id, second, "sft", "base", "sft", "ana", engine=engine)
    after = queries.blind_queue(run_id, "base", "sft", "ana", engine=engine)
    assert after["done"] == 1 and second not in [i["prompt_id"] for i in after["left"]]
    assert len(after["left"]) == len(queue["left"]) - 1
    assert second in [i["prompt_id"] for i in queries.blind_queue(run_id, "sft", "base", "bo", engine=engine)["left"]]
    with pytest.raises(CommandError, match="already judged"):  # the same item, shown the other way round
        commands.record_judgement(run_id, second, "base", "sft", "tie", "ana", engine=engine)

    with write_session(engine) as s:  # recorded before identical items were refused: counted nowhere
        s.add(Judgement(run_id=run_id, prompt_id=first, method_a="base", method_b="sft", pair="base|sft", winner="sft"))
    (counts,) = queries.judgement_counts(run_id, engine=engine)
    assert (counts["a"], counts["b"], counts["wins"], counts["losses"], counts["ties"]) == ("base", "sft", 0, 1, 0)
    (exported,) = queries.judgements_as_pairs(run_id, engine=engine)
    assert exported["chosen"] == " A different answer."
