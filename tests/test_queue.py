"""Queued execution against a real Redis and both databases: submit, drain, record, reconcile."""

import copy
import pickle

import pytest
from sqlalchemy import func, inspect, select

from db.migrate import current
from db.models import Evaluation, Metric, Preview, RecordedEvent, Run, Sample, StageRun, ValidationReportRow
from db.session import read_session
from pipeline.core.registry import selected_nodes
from tests.conftest import add_stage_run
from workers import reconciler, scheduler
from workers.queues import SERIALIZER, AllowlistJob, queue
from workers.recorder import Recorder
from workers.worker import ReusingWorker, make_worker


def drain_queues(conn):
    """Every queued job, in this process, by the worker `alignlab up` runs (jobs one after another, in-process)."""
    worker = make_worker(["gpu", "cpu"], conn, worker_class=ReusingWorker)
    worker.work(burst=True)
    assert not worker.stopped_holding_models


def test_upgrade_head_on_an_empty_database(db_url):
    assert current(db_url) == "0007"
    from sqlalchemy import create_engine

    tables = set(inspect(create_engine(db_url)).get_table_names())
    assert {
        "runs",
        "stage_runs",
        "artifacts",
        "validation_reports",
        "metrics",
        "evaluations",
        "samples",
        "judgements",
        "previews",
        "recorded_events",
        "dead_events",
        "judge_verdicts",
        "judge_figures",
    } <= tables


def test_migration_0002_keeps_one_point_per_step_of_what_was_recorded_twice(tmp_path):
    from sqlalchemy import create_engine, text

    from db.migrate import upgrade

    url = f"sqlite:///{tmp_path / 'old.db'}"
    upgrade(url, "0001")
    engine = create_engine(url)
    with engine.begin() as c:
        c.execute(
            text(
                "INSERT INTO runs (id, name, status, spec, spec_hash, preset, base_model, tags, notes, created_at)"
                " VALUES (1, 'r', 'succeeded', '{}', 'x', 'p', 'm', '[]', '', '2026-01-01')"
            )
        )
        c.execute(
            text(
                "INSERT INTO stage_runs (id, run_id, node, stage, status, queue, attempt, log_tail, "
                "progress_done, progress_total, progress_message, created_at) VALUES "
                "(1, 1, 'train_sft', 'train_sft', 'succeeded', 'gpu', 2, '', 0, 0, '', '2026-01-01')"
            )
        )
        for step, value in ((1, 9.0), (2, 8.0), (1, 7.0), (2, 6.0), (3, 5.0)):  # steps 1-2 recorded twice
            c.execute(
                text("INSERT INTO metrics (run_id, stage_run_id, step, name, value) VALUES (1, 1, :s, 'loss', :v)"),
                {"s": step, "v": value},
            )
    upgrade(url)
    with engine.begin() as c:
        rows = c.execute(text("SELECT step, value FROM metrics ORDER BY step")).all()
    assert [tuple(r) for r in rows] == [(1, 7.0), (2, 6.0), (3, 5.0)]  # the later attempt's points


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_migration_0004_keeps_each_reviewers_first_judgement_of_an_item(backend, tmp_path):
    """Judged twice by one reviewer (the pair shown either way round): the first judgement stays, the pair is stored
    in one order, and a second one is refused by the database from then on."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import IntegrityError

    from db.migrate import upgrade
    from tests.conftest import POSTGRES_URL, _reset_postgres

    url = f"sqlite:///{tmp_path / 'old.db'}" if backend == "sqlite" else POSTGRES_URL
    if backend == "postgresql":
        _reset_postgres(url)
    upgrade(url, "0003")
    engine = create_engine(url)
    insert = text(
        "INSERT INTO judgements (id, run_id, prompt_id, method_a, method_b, winner, reviewer, created_at) "
        "VALUES (:id, 1, 'p1', :a, :b, :w, :r, '2026-01-01')"
    )
    with engine.begin() as c:
        c.execute(
            text(
                "INSERT INTO runs (id, name, status, spec, spec_hash, preset, base_model, tags, notes, created_at)"
                " VALUES (1, 'r', 'succeeded', '{}', 'x', 'p', 'm', '[]', '', '2026-01-01')"
            )
        )
        for id_, a, b, winner, reviewer in (
            (1, "sft_dpo", "dpo_only", "sft_dpo", "ana"),
            (2, "dpo_only", "sft_dpo", "dpo_only", "ana"),  # ana again, sides swapped
            (3, "sft_dpo", "dpo_only", "tie", "bo"),
        ):
            c.execute(insert, {"id": id_, "a": a, "b": b, "w": winner, "r": reviewer})
    upgrade(url)
    with engine.begin() as c:
        rows = c.execute(text("SELECT id, pair, winner FROM judgements ORDER BY id")).all()
    assert [tuple(r) for r in rows] == [(1, "dpo_only|sft_dpo", "sft_dpo"), (3, "dpo_only|sft_dpo", "tie")]
    with pytest.raises(IntegrityError), engine.begin() as c:
        c.execute(
            text(
                "INSERT INTO judgements (id, run_id, prompt_id, method_a, method_b, pair, winner, reviewer, "
                "created_at) VALUES (4, 1, 'p1', 'sft_dpo', 'dpo_only', 'dpo_only|sft_dpo', 'tie', 'ana', '2026-01-01')"
            )
        )
    engine.dispose()


def test_submitted_dag_runs_on_a_worker_and_lands_in_the_database(
    dag_run, tiny_ci_spec, redis_conn, engine, alignlab_home
):
    run_id = scheduler.submit(tiny_ci_spec, redis_conn, engine, tags=["ci"])
    with read_session(engine) as s:
        assert s.get(Run, run_id).status == "queued"
        assert len(s.get(Run, run_id).stages) == len(selected_nodes(tiny_ci_spec.stages))
    drain_queues(redis_conn)
    recorder = Recorder(redis_conn, engine)
    recorder.drain()
    with read_session(engine) as s:
        run = s.get(Run, run_id)
        assert run.status == "succeeded", [(x.node, x.status, x.error) for x in run.stages]
        # the session's DAG already computed every artifact: every stage comes from the store at once
        assert {x.status for x in run.stages} == {"cached"}
        assert all(x.artifact_key and x.metrics is not None for x in run.stages)
        n_reports = s.scalar(
            select(func.count()).select_from(ValidationReportRow).where(ValidationReportRow.run_id == run_id)
        )
        assert n_reports >= 8
        assert s.scalar(select(func.count()).select_from(Sample).where(Sample.run_id == run_id)) == 4 * len(
            dag_run.results["eval_base"].previews["samples"]
        )
        methods = set(s.scalars(select(Evaluation.method).where(Evaluation.run_id == run_id)))
        assert methods == {"base", "sft", "sft_dpo", "dpo_only"}
        kinds = set(s.scalars(select(Preview.kind).where(Preview.run_id == run_id)))
        assert {"sft_records", "negatives", "train_pairs", "mask_examples", "differences", "verdict"} <= kinds
        for kind in ("sft_records", "negatives", "train_pairs", "heldout_pairs"):  # previewed by its maker alone
            makers = set(s.scalars(select(Preview.stage_run_id).where(Preview.run_id == run_id, Preview.kind == kind)))
            assert len(makers) == 1, f"{kind} previewed by {len(makers)} stage runs"
    # a second drain of the same stream records nothing twice
    before = recorder.recorded
    recorder._pending_checked = False
    assert recorder.drain() == 0 and recorder.recorded == before


def test_queued_run_does_the_work_and_records_metrics(
    tiny_model_dir, tiny_ci_spec, redis_conn, alignlab_home, tmp_path
):
    """A spec no earlier test computed: the worker really generates and trains; curves reach SQLite."""
    from db.migrate import upgrade
    from db.session import make_engine

    url = f"sqlite:///{tmp_path / 'work.db'}"
    upgrade(url)
    engine = make_engine(url)
    spec = copy.deepcopy(tiny_ci_spec)
    spec.name = "queued-work"
    spec.generation.seed = 7
    spec.data.max_instructions = 24
    spec.stages = ["generate_sft", "train_sft"]
    run_id = scheduler.submit(spec, redis_conn, engine)
    drain_queues(redis_conn)
    Recorder(redis_conn, engine).drain()
    with read_session(engine) as s:
        run = s.get(Run, run_id)
        assert [(x.node, x.status) for x in run.stages] == [
            ("split", "succeeded"),  # always run with generate_sft: the prompts' split comes first
            ("generate_sft", "succeeded"),
            ("train_sft", "succeeded"),
        ]
        train = next(x for x in run.stages if x.node == "train_sft")
        losses = s.scalars(select(Metric.value).where(Metric.stage_run_id == train.id, Metric.name == "loss")).all()
        assert len(losses) == train.metrics["steps"] and all(v > 0 for v in losses)
        assert train.load_info["device"] == "cpu" and train.peak_memory_bytes > 0
        assert "masking verified" in train.log_tail


def test_failed_stage_cancels_its_dependents_instead_of_leaving_them_deferred(
    tiny_model_dir, tiny_ci_spec, redis_conn, engine, alignlab_home, tmp_path
):
    spec = copy.deepcopy(tiny_ci_spec)
    unusable = alignlab_home / "unusable.jsonl"  # valid when queued (submit checks it), then broken on the worker's
    unusable.write_text('{"instruction": "Name a colour."}\n' * 3)  # disk before the job reads it: the job fails
    spec.data.instructions = str(unusable)
    run_id = scheduler.submit(spec, redis_conn, engine)
    unusable.write_text('{"prompt": "no instruction field"}\n' * 3)
    drain_queues(redis_conn)
    Recorder(redis_conn, engine).drain()
    reconciler.reconcile(redis_conn, engine)
    with read_session(engine) as s:
        run = s.get(Run, run_id)
        statuses = {x.node: x.status for x in run.stages}
        assert statuses["split"] == "failed" and "unusable.jsonl" in run.stages[0].error
        assert all(v == "cancelled" for k, v in statuses.items() if k != "split")
        assert run.status == "failed" and "split" in run.error
        first_stage_run = run.stages[0].id
    # retry re-enqueues the stage and everything downstream of it, as new attempts
    nodes = scheduler.retry(first_stage_run, redis_conn, engine).enqueued
    assert nodes == [n.name for n in selected_nodes(spec.stages)]
    with read_session(engine) as s:
        run = s.get(Run, run_id)
        assert {x.status for x in run.stages} == {"queued"} and {x.attempt for x in run.stages} == {2}
        assert run.stages[0].rq_job_id.endswith("-2")


def test_a_pickled_payload_is_never_unpickled(redis_conn, tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    q = queue("gpu", redis_conn)
    job = q.enqueue_call("workers.jobs.run_stage_job", args=(1, 1, "compare", {}, None), job_id="evil")
    redis_conn.hset(job.key, "data", pickle.dumps((Exploit(), (), {})))
    drain_queues(redis_conn)
    assert not marker.exists()
    assert AllowlistJob.fetch("evil", connection=redis_conn, serializer=SERIALIZER).get_status() == "failed"


def test_only_allowlisted_functions_run(redis_conn, tmp_path):
    marker = tmp_path / "ran"
    q = queue("gpu", redis_conn)
    job = q.enqueue_call("pathlib.Path.touch", args=(str(marker),), job_id="not-allowed")
    drain_queues(redis_conn)
    assert not marker.exists()
    fetched = AllowlistJob.fetch(job.id, connection=redis_conn, serializer=SERIALIZER)
    assert fetched.get_status() == "failed" and "not an allowlisted" in fetched.latest_result().exc_string


def test_recorded_events_are_unique(redis_conn, engine):
    from workers.events import EventEmitter

    with read_session(engine) as s:
        assert s.scalar(select(func.count()).select_from(RecordedEvent)) == 0
    run_id, stage_id = add_stage_run(engine, node="compare", status="queued")
    emitter = EventEmitter(redis_conn, run_id, stage_id)
    emitter.emit("log", message="hello")
    # the same event re-sent (a redis-py retry after a lost reply): same event id, new stream entry
    redis_conn.xadd("alignlab:events", redis_conn.xrange("alignlab:events")[0][1])
    Recorder(redis_conn, engine).drain()
    with read_session(engine) as s:
        assert s.get(StageRun, stage_id).log_tail == "hello\n"


def test_uploaded_dataset_travels_as_a_blob_and_is_materialized_once(
    tiny_model_dir, tiny_ci_spec, redis_conn, alignlab_home, tmp_path
):
    from db.migrate import upgrade
    from db.session import make_engine
    from pipeline.core.errors import DataError
    from workers.blobs import MAX_BLOB_BYTES, put_blob

    url = f"sqlite:///{tmp_path / 'blob.db'}"
    upgrade(url)
    engine = make_engine(url)
    data = b"".join(b'{"instruction": "What is %d plus %d?"}\n' % (i, i + 1) for i in range(12))
    reference = put_blob(redis_conn, data, "mine.jsonl")
    assert reference.startswith("blob:") and put_blob(redis_conn, data) == reference  # content-addressed
    spec = copy.deepcopy(tiny_ci_spec)
    spec.data.instructions = reference
    spec.stages = ["generate_sft"]
    run_id = scheduler.submit(spec, redis_conn, engine)
    drain_queues(redis_conn)
    Recorder(redis_conn, engine).drain()
    with read_session(engine) as s:
        stage_run = next(x for x in s.get(Run, run_id).stages if x.node == "generate_sft")
        assert stage_run.status == "succeeded", stage_run.error
        assert stage_run.metrics["sft_records"] + stage_run.metrics["dropped"] == 12
    assert (alignlab_home / "blobs" / f"{reference[5:]}.jsonl").read_bytes() == data
    with pytest.raises(DataError, match="upload limit"):
        put_blob(redis_conn, b"x" * (MAX_BLOB_BYTES + 1), "huge.jsonl")


def test_migrations_match_the_models(db_url):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy import create_engine

    from db.models import Base

    with create_engine(db_url).connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert diff == []


def test_resume_leaves_running_stages_alone_and_what_needs_them_waits_for_them(tiny_ci_spec, redis_conn, engine):
    from db.session import write_session
    from workers.cli import main
    from workers.queues import fetch_job

    run_id = scheduler.submit(tiny_ci_spec, redis_conn, engine)  # no worker: every job stays queued
    with write_session(engine) as s:
        stages = {x.node: x for x in s.get(Run, run_id).stages}
        stages["generate_sft"].status = "running"  # at work on a worker
        running_job = stages["generate_sft"].rq_job_id
        for node in ("train_sft", "negatives"):  # failed meanwhile (e.g. a retry of theirs ran out)
            stages[node].status = "failed"
    result = scheduler.resume(run_id, redis_conn, engine)
    assert result.left_running == ["generate_sft"]
    assert "generate_sft" not in result.enqueued and {"train_sft", "negatives"} <= set(result.enqueued)
    with read_session(engine) as s:
        train_sft = next(x for x in s.get(Run, run_id).stages if x.node == "train_sft")
        assert train_sft.status == "queued" and train_sft.attempt == 2
    assert fetch_job(train_sft.rq_job_id, redis_conn).dependency_ids == [running_job]  # waits for it
    assert main(["resume", str(run_id)]) == 0  # the CLI says what it did, no traceback


def test_rows_are_committed_before_any_job_is_enqueued(tiny_ci_spec, redis_conn, engine, monkeypatch, alignlab_home):
    """A fast job's first event must find its stage row: every enqueue sees the rows from another session."""
    from rq import Queue

    from workers import commands

    seen: list[bool] = []
    enqueue_call = Queue.enqueue_call

    def spy(self, *args, **kwargs):
        with read_session(engine) as s:  # a session of its own sees only what is committed
            stage = s.get(StageRun, kwargs["meta"]["stage_run_id"])
            seen.append(stage is not None and stage.rq_job_id == kwargs["job_id"] and stage.status == "queued")
        return enqueue_call(self, *args, **kwargs)

    monkeypatch.setattr(Queue, "enqueue_call", spy)
    run_id = scheduler.submit(tiny_ci_spec, redis_conn, engine)
    assert len(seen) == len(selected_nodes(tiny_ci_spec.stages)) and all(seen)
    commands.cancel(run_id, redis_conn, engine)
    seen.clear()
    scheduler.resume(run_id, redis_conn, engine)
    assert len(seen) == len(selected_nodes(tiny_ci_spec.stages)) and all(seen)
    commands.cancel(run_id, redis_conn, engine)


def test_a_stage_whose_job_is_not_enqueued_yet_is_not_called_lost(redis_conn, engine):
    from datetime import timedelta

    from db.models import utcnow
    from db.session import write_session

    run_id, stage_id = add_stage_run(engine, status="queued")
    with write_session(engine) as s:
        stage = s.get(StageRun, stage_id)
        stage.rq_job_id, stage.queued_at = f"alignlab-{run_id}-train_sft-1", utcnow()
    reconciler.reconcile(redis_conn, engine)
    with read_session(engine) as s:
        assert s.get(StageRun, stage_id).status == "queued"  # committed a moment ago: enqueueing follows
    with write_session(engine) as s:
        s.get(StageRun, stage_id).queued_at = utcnow() - timedelta(seconds=2 * reconciler.ENQUEUE_GRACE_S)
    reconciler.reconcile(redis_conn, engine)
    with read_session(engine) as s:
        stage = s.get(StageRun, stage_id)
        assert stage.status == "failed" and "gone from Redis" in stage.error


def test_a_preloaded_worker_keys_artifacts_by_the_code_it_loaded_not_by_files_edited_since(monkeypatch):
    """The worker's forked jobs run the modules it imported at start; a source file changed on disk while it runs
    (a `git pull` on the pod mid-run) once gave later jobs another code version, so they looked for their inputs
    under keys no earlier job of the run had written ("needs pairs, train_sft first")."""
    from pathlib import Path

    from pipeline import artifacts
    from workers.worker import preload

    artifacts.code_version.cache_clear()
    preload()
    monkeypatch.setattr(Path, "read_bytes", lambda self: b"edited on disk after the worker started")
    seen_by_a_job = artifacts.code_version()
    monkeypatch.undo()
    artifacts.code_version.cache_clear()
    assert seen_by_a_job == artifacts.code_version()  # the source as loaded
