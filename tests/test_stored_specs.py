"""A spec stored before the config layout changed (spec_version 1, written by the code of commit 8174739) loads,
migrates, resumes and relaunches with its recorded values, never today's defaults."""

import json
from pathlib import Path

import pytest

from pipeline.core.configs import SPEC_VERSION, RunSpec, from_dict, load_stored_spec, to_dict
from pipeline.core.errors import ConfigError

STORED = json.loads((Path(__file__).parent / "data" / "spec_v1_tiny_ci.json").read_text())


def assert_recorded_values(spec: dict) -> None:
    """The values the v1 spec recorded, each unlike today's default, where today's layout keeps them."""
    assert spec["spec_version"] == SPEC_VERSION
    assert spec["eval"]["sampling"] == {"max_new_tokens": 20, "do_sample": True, "temperature": 0.5, "top_p": 0.95}
    assert spec["negatives"]["sampling"]["temperature"] == 1.2
    assert spec["generation"]["sampling"]["top_p"] == 0.8
    assert spec["dpo"]["beta"] == 0.25
    defaults = to_dict(RunSpec())
    assert defaults["eval"]["sampling"]["temperature"] != 0.5 and defaults["dpo"]["beta"] != 0.25


def test_a_version_1_spec_migrates_with_its_values():
    assert "spec_version" not in STORED and "temperature" in STORED["eval"]
    assert_recorded_values(to_dict(load_stored_spec(STORED)))
    assert to_dict(from_dict(RunSpec, STORED)) == to_dict(load_stored_spec(STORED))


def test_a_stored_spec_missing_a_value_is_refused_not_defaulted():
    incomplete = json.loads(json.dumps(STORED))
    del incomplete["dpo"]["beta"]
    with pytest.raises(ConfigError, match=r"no value for dpo\.beta"):
        load_stored_spec(incomplete)


def test_an_unknown_layout_version_is_refused():
    with pytest.raises(ConfigError, match="spec_version"):
        load_stored_spec({**STORED, "spec_version": SPEC_VERSION + 1})


def stored_run(engine, stages: tuple[str, ...] = ("compare",)) -> int:
    """A run row as the old code stored it: its spec in the v1 layout, its stages failed."""
    from db.models import Run, StageRun
    from db.session import write_session

    with write_session(engine) as session:
        run = Run(name=STORED["name"], spec=STORED, spec_hash="v1", preset="tiny-ci", base_model="alignlab-tiny")
        session.add(run)
        session.flush()
        for node in stages:
            session.add(StageRun(run_id=run.id, node=node, stage=node, queue="cpu", status="failed"))
        return run.id


def test_resume_enqueues_the_recorded_values(redis_conn, engine):
    from workers import commands, scheduler
    from workers.queues import fetch_job

    run_id = stored_run(engine)
    replanned = scheduler.resume(run_id, redis_conn, engine)
    assert replanned.enqueued == ["compare"]
    summary = commands.run_summary(run_id, engine)
    (stage,) = summary["stages"]
    job = fetch_job(f"alignlab-{run_id}-compare-{stage['attempt']}", redis_conn)
    assert_recorded_values(job.args[3])
    commands.cancel(run_id, redis_conn, engine)


def test_relaunch_fills_the_form_with_the_recorded_values(redis_conn, db_url, engine, monkeypatch):
    from app.forms import GROUP_KEY, _key
    from tests.test_launch import launch_page, shown

    monkeypatch.setenv("DATABASE_URL", db_url)
    run_id = stored_run(engine)
    at = launch_page()
    at.radio(key="launch_source").set_value("earlier run").run()
    at.selectbox(key="launch_parent").set_value(run_id).run()
    at.checkbox(key="launch_dpo_only").uncheck().run()
    assert not at.exception
    at.selectbox(key=GROUP_KEY).set_value("eval").run()  # the form draws one group of settings at a time
    assert at.get_by_key(_key("eval.sampling.temperature")).value == 0.5
    assert_recorded_values(shown(at))
