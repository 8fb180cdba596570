"""The recorder under bad events: non-finite values, malformed and poisoned events, restarted attempts.

Everything goes through the real EventEmitter, the real Redis stream and the real recorder, on SQLite and
PostgreSQL."""

import json

import pytest
from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError

from db.models import DeadEvent, Metric, StageRun
from db.session import read_session, write_session
from tests.conftest import add_stage_run
from workers.events import STREAM, EventEmitter
from workers.recorder import Recorder


def curve(engine, stage_run_id, name="loss"):
    with read_session(engine) as s:
        rows = s.execute(
            select(Metric.step, Metric.value, Metric.non_finite)
            .where(Metric.stage_run_id == stage_run_id, Metric.name == name)
            .order_by(Metric.step)
        ).all()
    return [tuple(r) for r in rows]


def test_nan_and_inf_are_stored_flagged_and_the_stream_goes_on(redis_conn, engine):
    run_id, stage_id = add_stage_run(engine)
    emitter = EventEmitter(redis_conn, run_id, stage_id)
    emitter.emit("metric", step=1, values={"loss": 2.5, "grad_norm": 1.0})
    emitter.emit("metric", step=2, values={"loss": 2.4, "grad_norm": float("nan")})
    emitter.emit("metric", step=3, values={"loss": float("inf"), "grad_norm": float("-inf")})
    emitter.emit("finished", status="succeeded", metrics={"final_loss": float("nan")})
    emitter.emit("log", message="after the NaN")
    recorder = Recorder(redis_conn, engine)
    assert recorder.drain() == 5
    assert curve(engine, stage_id, "grad_norm") == [(1, 1.0, None), (2, None, "nan"), (3, None, "-inf")]
    assert curve(engine, stage_id, "loss") == [(1, 2.5, None), (2, 2.4, None), (3, None, "inf")]
    with read_session(engine) as s:
        stage = s.get(StageRun, stage_id)
        assert stage.status == "succeeded" and stage.metrics == {"final_loss": "nan"}
        assert stage.log_tail.endswith("after the NaN\n")
        assert s.scalars(select(DeadEvent)).all() == []
    assert redis_conn.xpending(STREAM, "recorder")["pending"] == 0


def test_a_malformed_or_poisoned_event_is_dead_lettered_and_never_blocks_the_stream(redis_conn, engine):
    run_id, stage_id = add_stage_run(engine)
    emitter = EventEmitter(redis_conn, run_id, stage_id)
    emitter.emit("log", message="before")
    redis_conn.xadd(STREAM, {"event": "{not json"})
    redis_conn.xadd(STREAM, {"something": "else"})
    redis_conn.xadd(STREAM, {"event": json.dumps({"event_id": "x:1", "kind": "metric", "payload": {}})})
    with pytest.raises(ValueError, match="values.loss"):  # checked when emitted: a job never sends it
        emitter.emit("metric", step=1, values={"loss": {"not": "a number"}})
    poisoned = "other:1"  # an older or foreign producer's: checked again when recorded
    envelope = {"event_id": poisoned, "kind": "metric", "run_id": run_id, "stage_run_id": stage_id, "time": 0.0}
    redis_conn.xadd(STREAM, {"event": json.dumps({**envelope, "payload": {"step": 1, "values": {"loss": {}}}})})
    emitter.emit("metric", step=1, values={"loss": 3.0})
    emitter.emit("log", message="after")
    applied = Recorder(redis_conn, engine).drain()
    assert applied == 3  # before, the good metric, after
    assert curve(engine, stage_id) == [(1, 3.0, None)]
    with read_session(engine) as s:
        dead = s.scalars(select(DeadEvent).order_by(DeadEvent.id)).all()
        reasons = [d.error for d in dead]
        assert len(dead) == 4, reasons
        assert "malformed event" in reasons[0] and "without an 'event' field" in reasons[1]
        assert "run_id" in reasons[2]
        assert dead[3].event_id == poisoned and "values.loss" in reasons[3] and dead[3].run_id == run_id
        assert "{not json" in dead[0].raw
        log_tail = s.get(StageRun, stage_id).log_tail
        assert (
            log_tail.startswith("before\nafter\n")
            and "1 event(s) not recorded: invalid event: metric event: values.loss" in log_tail
        )
    # nothing is left pending: a restarted recorder does not trip over the same entries again
    assert redis_conn.xpending(STREAM, "recorder")["pending"] == 0
    assert Recorder(redis_conn, engine, consumer="another").drain() == 0


def test_a_restarted_attempt_replaces_the_steps_it_redoes(redis_conn, engine):
    run_id, stage_id = add_stage_run(engine)
    first = EventEmitter(redis_conn, run_id, stage_id)
    first.emit("resumed", step=0)
    for step in range(1, 7):  # killed at step 6, before the first checkpoint
        first.emit("metric", step=step, values={"loss": 10.0 - step})
    second = EventEmitter(redis_conn, run_id, stage_id)  # the retry starts from scratch
    second.emit("resumed", step=0)
    for step in range(1, 10):  # preempted at step 9, checkpoint-9 saved
        second.emit("metric", step=step, values={"loss": 5.0 - step / 10})
    third = EventEmitter(redis_conn, run_id, stage_id)
    third.emit("resumed", step=9)
    for step in range(10, 13):
        third.emit("metric", step=step, values={"loss": 1.0})
    Recorder(redis_conn, engine, batch_size=7).drain()  # batches cut across the attempts
    points = curve(engine, stage_id)
    assert [p[0] for p in points] == list(range(1, 13))
    assert points[0][1] == pytest.approx(4.9) and points[8][1] == pytest.approx(4.1) and points[9][1] == 1.0


def test_the_store_refuses_a_second_point_for_one_step(engine):
    run_id, stage_id = add_stage_run(engine)
    row = {"run_id": run_id, "stage_run_id": stage_id, "step": 3, "name": "loss", "value": 1.0}
    with write_session(engine) as s:
        s.execute(insert(Metric), [row])
    with pytest.raises(IntegrityError), write_session(engine) as s:
        s.execute(insert(Metric), [{**row, "value": 2.0}])


def test_entries_a_read_delivered_whose_reply_was_lost_are_recorded_at_the_next_step(redis_conn, engine, monkeypatch):
    """Redis stalls, then answers a read the client had already given up on: the entries are now pending on this
    consumer, and a recorder that only asks for new ones would leave them out of the curve (seen as a missing step
    after a 20 s Redis freeze mid-training)."""
    import redis

    run_id, stage_id = add_stage_run(engine)
    emitter = EventEmitter(redis_conn, run_id, stage_id)
    for step in (1, 2):
        emitter.emit("metric", step=step, values={"loss": 1.0 / step})
    read = redis_conn.xreadgroup
    lost = []

    def reply_lost_once(group, consumer, streams, **options):
        entries = read(group, consumer, streams, **options)
        if streams == {STREAM: ">"} and not lost:
            lost.append(entries)
            raise redis.TimeoutError("Timeout reading from socket")
        return entries

    monkeypatch.setattr(redis_conn, "xreadgroup", reply_lost_once)
    recorder = Recorder(redis_conn, engine)
    with pytest.raises(redis.TimeoutError):
        recorder.step()
    assert len(lost[0][0][1]) == 2  # both entries were delivered to the recorder by the read that "failed"
    assert recorder.step() == 2
    assert curve(engine, stage_id) == [(1, 1.0, None), (2, 0.5, None)]
    assert redis_conn.xpending(STREAM, "recorder")["pending"] == 0
