"""The dashboard's read models, on a run that went through the queue and the recorder."""

from db import queries
from db.models import Judgement
from db.session import write_session
from tests.test_queue import drain_queues
from workers import scheduler
from workers.recorder import Recorder


def test_read_models_cover_runs_curves_comparison_samples_and_judgements(
    dag_run, tiny_ci_spec, redis_conn, engine, alignlab_home
):
    run_id = scheduler.submit(tiny_ci_spec, redis_conn, engine, home=str(alignlab_home), tags=["q"])
    drain_queues(redis_conn)
    Recorder(redis_conn, engine).drain()

    runs = queries.list_runs(engine=engine)
    assert runs[0]["id"] == run_id and runs[0]["status"] == "succeeded" and runs[0]["done"] == runs[0]["total"] == 11
    assert queries.list_runs(tag="q", engine=engine)[0]["id"] == run_id
    assert queries.list_runs(tag="other", engine=engine) == []
    assert queries.list_runs(status="failed", engine=engine) == []

    detail = queries.run_detail(run_id, engine=engine)
    assert [s["node"] for s in detail["stages"]][:2] == ["generate_sft", "train_sft"]
    assert detail["stages"][1]["checks"]["masking_verified"]["passed"] is True
    assert queries.run_detail(10**6, engine=engine) is None

    matrix = queries.comparison_matrix([run_id], engine=engine)
    accuracy = {r["method"]: r for r in matrix if r["metric"] == "preference_accuracy"}
    assert set(accuracy) == {"base", "sft", "sft_dpo", "dpo_only"}
    assert all(r["ci_low"] <= r["value"] <= r["ci_high"] for r in accuracy.values())

    rows = queries.samples_side_by_side(run_id, engine=engine)
    assert rows and all(set(r["methods"]) == {"base", "sft", "sft_dpo", "dpo_only"} for r in rows)
    flagged = queries.samples_side_by_side(run_id, flagged_only=True, engine=engine)
    assert all(r["flagged"] for r in flagged) and len(flagged) <= len(rows)

    reports = queries.validation_reports(run_id, engine=engine)
    assert {r["kind"] for r in reports} >= {"instructions", "sft", "negatives", "pairs"}
    assert all(r["passed"] for r in reports)
    masks = queries.previews(run_id, "mask_examples", engine=engine)
    assert masks and any(t["trained"] for t in masks[0]["tokens"])
    verdict = queries.previews(run_id, "verdict", engine=engine)[0]
    assert verdict["parity"]["fair"] is True

    prompt = rows[0]["prompt_id"]
    with write_session(engine) as s:
        s.add_all(
            [
                Judgement(run_id=run_id, prompt_id=prompt, method_a="sft_dpo", method_b="dpo_only", winner="sft_dpo"),
                Judgement(run_id=run_id, prompt_id=prompt, method_a="dpo_only", method_b="sft_dpo", winner="sft_dpo"),
                Judgement(run_id=run_id, prompt_id=prompt, method_a="sft_dpo", method_b="dpo_only", winner="tie"),
            ]
        )
    (rate,) = queries.win_rates(run_id, engine=engine)
    assert (rate["a"], rate["b"]) == ("dpo_only", "sft_dpo")
    assert (rate["wins"], rate["losses"], rate["ties"], rate["n"]) == (0, 2, 1, 3)
    assert abs(rate["win_rate_a"] - 0.5 / 3) < 1e-9


def test_metric_curves_of_a_training_stage(tiny_model_dir, tiny_ci_spec, redis_conn, engine, alignlab_home):
    import copy

    spec = copy.deepcopy(tiny_ci_spec)
    spec.stages = ["generate_sft", "train_sft"]
    spec.sft.seed = 3
    run_id = scheduler.submit(spec, redis_conn, engine, home=str(alignlab_home))
    drain_queues(redis_conn)
    Recorder(redis_conn, engine).drain()
    curves = queries.metric_curves(run_id, ["loss", "lr"], engine=engine)
    losses = [c for c in curves if c["name"] == "loss"]
    assert losses and [c["step"] for c in losses] == list(range(1, len(losses) + 1))
    assert {c["node"] for c in curves} == {"train_sft"}
