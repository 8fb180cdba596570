"""The bad-input corpus: every broken config and data file is a clear error naming the file and the field (and the
row for data), shown in the dashboard without a traceback, and nothing is queued or marked complete."""

import copy
from pathlib import Path

import pytest
import streamlit as st
from sqlalchemy import func, select
from streamlit.testing.v1 import AppTest

from db.models import Run
from db.session import read_session
from pipeline.configs import load_spec
from pipeline.errors import ConfigError
from tests.test_queue import drain_queues
from workers import scheduler
from workers.recorder import Recorder

DATA = Path(__file__).resolve().parents[1] / "data"
BAD_CONFIGS = sorted((DATA / "bad_configs").iterdir())
# files whose problem needs a second file (a held-out leak) are covered in test_validation
BAD_DATA = sorted(p for p in (DATA / "bad").glob("*.jsonl") if "leak" not in p.name)
WARNINGS_ONLY = {"sft_duplicates.jsonl", "pairs_prefix.jsonl"}  # usable files with something worth knowing
MAIN = "../../app/main.py"


def kind_of(path: Path) -> str:
    return path.name.split("_", 1)[0]


def test_the_corpus_has_at_least_thirty_files_and_configs():
    assert len(BAD_CONFIGS) + len(BAD_DATA) >= 30


@pytest.mark.parametrize("path", BAD_CONFIGS, ids=lambda p: p.name)
def test_every_bad_config_names_its_file_and_what_is_wrong(path):
    with pytest.raises(ConfigError) as caught:
        load_spec(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ")
    unparseable = {"broken_yaml.yaml", "truncated.json", "not_utf8.yaml", "not_a_mapping.yaml"}
    if path.name in unparseable:
        assert any(w in message for w in ("YAML", "JSON", "UTF-8", "mapping"))
    else:  # the field, as Section.field
        assert "Config." in message or "RunSpec." in message


@pytest.fixture
def empty_store(redis_conn, tmp_path, monkeypatch):
    from db.migrate import upgrade
    from db.session import make_engine

    st.cache_data.clear()
    url = f"sqlite:///{tmp_path / 'bad.db'}"
    upgrade(url)
    monkeypatch.setenv("DATABASE_URL", url)
    return make_engine(url)


def page(name):
    at = AppTest.from_file(MAIN, default_timeout=60).run()
    at.switch_page(f"views/{name}.py").run()
    return at


def test_bad_configs_imported_on_launch_show_an_error_not_a_traceback(empty_store, redis_conn):
    at = page("launch")
    at.radio(key="launch_source").set_value("config file").run()
    for path in BAD_CONFIGS:
        at.file_uploader(key="launch_import").set_value((path.name, path.read_bytes(), "application/x-yaml")).run()
        assert not at.exception, path.name
        assert any(path.name in e.value for e in at.error), path.name
    with read_session(empty_store) as s:
        assert s.scalar(select(func.count()).select_from(Run)) == 0
    assert redis_conn.llen("rq:queue:gpu") == 0


def test_bad_data_files_checked_on_the_data_page_name_file_row_and_field(empty_store):
    at = page("data")
    for path in BAD_DATA:
        at.selectbox(key="check_kind").set_value(kind_of(path))
        at.file_uploader(key="check_file").set_value((path.name, path.read_bytes(), "application/jsonl")).run()
        assert not at.exception, path.name
        if path.name in WARNINGS_ONLY:
            assert any(path.name in s.value and "warnings" in s.value for s in at.success), path.name
            continue
        (error,) = [e.value for e in at.error if path.name in e.value]
        assert "First error at" in error and "Fix the file" in error, error
        issues = at.dataframe[0].value
        first = issues.iloc[0]
        if first["row"] == first["row"] and first["row"] is not None:  # a row-level problem names row and field
            assert f"row {int(first['row'])}" in error


def test_a_model_path_that_does_not_exist_fails_its_stage_and_completes_nothing(
    tiny_ci_spec, redis_conn, engine, alignlab_home
):
    from pipeline.dag import artifact_keys, default_store

    spec = copy.deepcopy(tiny_ci_spec)
    spec.name = "no-model"
    spec.base_model.name_or_path = str(alignlab_home / "models" / "does-not-exist")
    run_id = scheduler.submit(spec, redis_conn, engine)
    drain_queues(redis_conn)
    Recorder(redis_conn, engine).drain()
    scheduler.reconcile(redis_conn, engine)
    summary = scheduler.run_summary(run_id, engine)
    assert summary["status"] == "failed"
    first = summary["stages"][0]
    assert first["node"] == "generate_sft" and first["status"] == "failed"
    assert "does-not-exist" in first["error"] and "no such directory" in first["error"]
    assert {s["status"] for s in summary["stages"][1:]} == {"cancelled"}
    store = default_store(alignlab_home)
    assert not any(store.is_complete(key) for key in artifact_keys(spec).values())


def test_a_model_path_outside_the_allowed_roots_is_refused_on_launch(empty_store, redis_conn):
    at = page("launch")
    at.text_input(key="form.base_model.name_or_path").set_value("/etc/models/stolen")
    at.button[[b.label for b in at.button].index("Launch")].click().run()
    assert not at.exception
    assert any("ModelConfig.name_or_path" in e.value and "outside" in e.value for e in at.error)
    assert redis_conn.llen("rq:queue:gpu") == 0
