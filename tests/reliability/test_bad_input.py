"""The bad-input corpus: every broken config and data file is a clear error naming the file and the field (and the
row for data), shown in the dashboard without a traceback, and nothing is queued or marked complete."""

import copy
from pathlib import Path

import pytest
import streamlit as st
from sqlalchemy import func, select
from streamlit.testing.v1 import AppTest

from app.text import shown
from db.models import Run
from db.session import read_session
from pipeline.core.configs import load_spec
from pipeline.core.errors import ConfigError
from workers import scheduler

DATA = Path(__file__).resolve().parents[1] / "data"
BAD_CONFIGS = sorted((DATA / "bad_configs").iterdir())
# files whose problem needs a second file (a held-out leak) are covered in test_validation
BAD_DATA = sorted(p for p in (DATA / "bad").glob("*.jsonl") if "leak" not in p.name)
WHOLE_FILE_PROBLEMS = {"instructions_empty.jsonl", "sft_empty.jsonl"}  # no row to point at
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
    whole_file = {  # the file as a whole is wrong: the message says how
        "broken_yaml.yaml": "not valid YAML",
        "truncated.json": "not valid JSON",
        "not_utf8.yaml": "not UTF-8",
        "not_a_mapping.yaml": "not a mapping",
        "list_not_a_mapping.yaml": "holds a list",
        "false_not_a_mapping.yaml": "holds a bool",
        "empty_file.yaml": "is empty",
    }
    if path.name in whole_file:
        assert whole_file[path.name] in message
    else:  # the field, as Section.field
        assert "Config." in message or "RunSpec." in message


def test_a_directory_given_as_a_config_or_data_file_is_named(tmp_path, tiny_ci_spec, redis_conn, engine, alignlab_home):
    from pipeline.core.errors import DataError
    from pipeline.validation import validate_file
    from workers.cli import main

    folder = tmp_path / "run.yaml"
    folder.mkdir()
    with pytest.raises(ConfigError, match="is a directory, not a config file"):
        load_spec(folder)
    assert main(["submit", "--config", str(folder)]) == 2
    data_dir = alignlab_home / "data.jsonl"
    data_dir.mkdir(parents=True, exist_ok=True)
    spec = copy.deepcopy(tiny_ci_spec)
    spec.data.instructions = str(data_dir)
    with pytest.raises(ConfigError, match="DataConfig.instructions: .* is a directory, not a JSONL file"):
        scheduler.submit(spec, redis_conn, engine)
    with pytest.raises(DataError, match="is a directory, not a JSONL file"):
        validate_file("sft", data_dir)
    with pytest.raises(DataError, match="is a directory, not a JSONL file"):
        validate_file("instructions", data_dir)
    assert redis_conn.llen("rq:queue:gpu") == 0


def test_a_jsonl_file_with_a_byte_order_mark_loads_with_a_warning(tmp_path):
    from pipeline.validation import validate_file

    path = tmp_path / "windows.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"instruction": "Name a colour."}\r\n{"instruction": "Name a fruit."}\r\n')
    report = validate_file("instructions", path)
    assert report.passed and report.rows_valid == 2 and not report.errors
    (warning,) = report.issues
    assert warning.code == "byte_order_mark" and warning.row == 1 and warning.severity == "warning"


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
        assert any(path.name in shown(e.value) for e in at.error), path.name
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
            assert any(path.name in shown(s.value) and "warnings" in shown(s.value) for s in at.success), path.name
            continue
        (error,) = [shown(e.value) for e in at.error if path.name in shown(e.value)]
        assert "First error at" in error and "Fix the file" in error, error
        first = at.dataframe[0].value.iloc[0]
        if path.name in WHOLE_FILE_PROBLEMS:
            assert first["row"] != first["row"] or first["row"] is None, path.name  # no row to name
        else:  # a row-level problem names its row
            assert f"row {int(first['row'])}" in error, path.name


def test_a_model_path_that_does_not_exist_is_refused_before_anything_is_queued(
    tiny_ci_spec, redis_conn, alignlab_home, empty_store
):
    engine = empty_store
    missing = str(alignlab_home / "models" / "does-not-exist")
    spec = copy.deepcopy(tiny_ci_spec)
    spec.base_model.name_or_path = missing
    with pytest.raises(ConfigError, match="ModelConfig.name_or_path: .*does-not-exist does not exist"):
        scheduler.submit(spec, redis_conn, engine)
    at = page("launch")
    at.text_input(key="form.base_model.name_or_path").set_value(missing).run()
    at.button(key="launch").click().run()
    assert not at.exception
    assert any("ModelConfig.name_or_path" in shown(e.value) and "does not exist" in shown(e.value) for e in at.error)
    assert redis_conn.llen("rq:queue:gpu") == 0 and redis_conn.llen("rq:queue:cpu") == 0
    with read_session(engine) as s:
        assert s.scalar(select(func.count()).select_from(Run)) == 0


def test_a_model_path_outside_the_allowed_roots_is_refused_on_launch(empty_store, redis_conn):
    at = page("launch")
    at.text_input(key="form.base_model.name_or_path").set_value("/etc/models/stolen").run()
    at.button(key="launch").click().run()
    assert not at.exception
    assert any("ModelConfig.name_or_path" in shown(e.value) and "outside" in shown(e.value) for e in at.error)
    assert redis_conn.llen("rq:queue:gpu") == 0
