"""The price table and the cost ledger: each attempt of a stage run charged at its queue's price when it ends,
attempts adding up, no price meaning an unknown cost (never free), a wrong price file named with its field; and
Launch's forecast from earlier runs' times at today's prices."""

from datetime import timedelta

import pytest

from db.models import StageRun
from db.session import read_session, write_session
from pipeline.core.durations import estimate_cost
from pipeline.core.errors import ConfigError
from pipeline.core.prices import Prices, ledger_text, load_prices, prices_path, set_price
from tests.conftest import add_stage_run
from workers.events import EventEmitter
from workers.recorder import Recorder


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("ALIGNLAB_HOME", str(tmp_path))
    return tmp_path


def _attempt(redis_conn, engine, run_id, stage_id, hours: float, end: str = "finished") -> None:
    """One attempt that started `hours` ago and ends now with `end`."""
    emitter = EventEmitter(redis_conn, run_id, stage_id)
    emitter.emit("started", job_id="job", worker="w")
    Recorder(redis_conn, engine).drain()
    with write_session(engine) as s:
        stage_run = s.get(StageRun, stage_id)
        stage_run.started_at = stage_run.started_at - timedelta(hours=hours)
    if end == "finished":
        emitter.emit("finished", status="succeeded", metrics={})
    else:
        emitter.emit("failed", error="RuntimeError: boom", error_type="RuntimeError", cancelled=False)
    Recorder(redis_conn, engine).drain()


def _ledger(engine, stage_id):
    with read_session(engine) as s:
        stage_run = s.get(StageRun, stage_id)
        return stage_run.charged_seconds, stage_run.cost


def test_each_attempt_is_charged_at_its_queues_price_and_attempts_add_up(home, redis_conn, engine):
    set_price("gpu", 0.80)
    run_id, stage_id = add_stage_run(engine)  # on queue gpu
    _attempt(redis_conn, engine, run_id, stage_id, hours=2, end="failed")  # a failed attempt was paid for too
    seconds, cost = _ledger(engine, stage_id)
    assert seconds == pytest.approx(7200, abs=5) and cost == pytest.approx(1.60, abs=0.01)
    set_price("gpu", 0.40)  # the price changed before the retry: the first attempt keeps its price
    _attempt(redis_conn, engine, run_id, stage_id, hours=1)
    seconds, cost = _ledger(engine, stage_id)
    assert seconds == pytest.approx(3 * 3600, abs=10) and cost == pytest.approx(1.60 + 0.40, abs=0.01)


def test_a_queue_without_a_price_has_an_unknown_cost_not_a_free_one(home, redis_conn, engine):
    set_price("gpu-80gb", 2.0)
    run_id, stage_id = add_stage_run(engine)  # gpu: no price
    _attempt(redis_conn, engine, run_id, stage_id, hours=1)
    seconds, cost = _ledger(engine, stage_id)
    assert seconds == pytest.approx(3600, abs=5) and cost is None
    set_price("gpu", 1.0)  # priced now, but the first attempt's cost stays unknown: so does the total
    _attempt(redis_conn, engine, run_id, stage_id, hours=1)
    assert _ledger(engine, stage_id)[1] is None


def test_a_wrong_price_file_is_named_with_its_field(home):
    prices_path().write_text("per_hour:\n  gpu: 0.79\n  h100: 2.5\n")
    with pytest.raises(ConfigError, match=r"prices\.yaml: field per_hour: .*'h100' is not a queue"):
        load_prices()
    prices_path().write_text("per_hour:\n  gpu: -1\n")
    with pytest.raises(ConfigError, match="a price per hour is a number ≥ 0"):
        load_prices()
    prices_path().write_text("currency: EUR\nper_hour: {gpu: 0.79}\ncolour: red\n")
    with pytest.raises(ConfigError, match="field colour: Extra inputs are not permitted"):
        load_prices()
    prices_path().unlink()
    with pytest.raises(ConfigError, match="'a100' is not a queue"):
        set_price("a100", 1.0)


def test_launch_forecasts_cost_from_recorded_times_at_todays_prices():
    prices = Prices(per_hour={"gpu": 0.60, "cpu": 0.0})
    recorded = {("train_sft", "gpu"): [1800.0, 3600.0, 2700.0], ("compare", "cpu"): [60.0]}
    cost, text = estimate_cost([("train_sft", "gpu"), ("compare", "cpu")], recorded, prices)
    assert cost == pytest.approx(2700 / 3600 * 0.60)
    assert text == "about 0.45 USD at today's prices (gpu 0.60 USD/h, cpu 0.00 USD/h), from 1 to 3 earlier runs"
    cost, text = estimate_cost([("train_sft", "gpu"), ("dpo_sft", "gpu-80gb")], recorded, prices)
    assert cost is None
    assert text.startswith("unknown: no earlier run of this model at a comparable workload has timed dpo_sft")
    cost, text = estimate_cost([("train_sft", "gpu")], recorded, Prices())
    assert cost is None and text == "unknown: queue gpu has no price (alignlab prices set gpu PRICE_PER_HOUR)"


def test_a_runs_cost_in_words_never_counts_an_unpriced_stage_as_free():
    prices = Prices(currency="EUR", per_hour={"gpu": 1.0})
    assert ledger_text([{"queue": "gpu", "charged_seconds": None, "cost": None}], prices).startswith(
        "nothing charged yet"
    )
    stages = [
        {"queue": "gpu", "charged_seconds": 1800.0, "cost": 0.5},
        {"queue": "gpu", "charged_seconds": 5400.0, "cost": 1.5},
    ]
    assert ledger_text(stages, prices) == "2.00 EUR for 2.00 worker hours over 2 stage runs"
    stages.append({"queue": "cpu", "charged_seconds": 60.0, "cost": None})
    assert ledger_text(stages, prices) == (
        "at least 2.00 EUR; unknown for queue cpu (no price when those stages ended: alignlab prices set cpu "
        "PRICE_PER_HOUR)"
    )
