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
        "alias_bomb.yaml": "an anchor (&name) is not accepted",
        "duplicate_key.yaml": "'beta' is given twice",
        "duplicate_key.json": "'name' is given twice",
        "deep_nesting.yaml": "nested more than 32 levels",
        "deep_nesting.json": "nested too deeply",
        "huge_integer.yaml": "an integer of 5,000 digits",
        "huge_integer.json": "an integer of 5,000 digits",
        "lone_surrogate.json": "lone surrogate",
    }
    assert len(message) < 1000, "an error quotes a bounded excerpt, never the whole input"
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


def test_a_50_mb_config_is_refused_before_it_is_parsed_and_not_repeated(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text("name: " + "x" * (50 * 1024 * 1024) + "\n")
    with pytest.raises(ConfigError) as caught:
        load_spec(big)
    assert "at most 1,048,576" in str(caught.value) and len(str(caught.value)) < 300


def test_a_long_config_value_is_refused_quoting_an_excerpt(tmp_path):
    from pipeline.core.configs import RunSpec, from_dict

    with pytest.raises(ConfigError) as caught:
        from_dict(RunSpec, {"name": "y" * 200_000})
    assert "200,000 characters" in str(caught.value) and len(str(caught.value)) < 400


@pytest.mark.parametrize("value", ["%run", "*run", "@run", "{run", "a #b", "[x", "!tag", "123", "true", "null"])
def test_cli_values_of_text_fields_are_taken_literally(value):
    import argparse

    from pipeline.cli import add_spec_arguments, spec_from_args

    parser = argparse.ArgumentParser()
    add_spec_arguments(parser)
    spec = spec_from_args(parser.parse_args(["--preset", "tiny-ci", "--name", value]))
    assert spec.name == value


def test_a_cli_value_that_does_not_parse_for_its_field_is_refused_naming_the_flag(capsys):
    import argparse

    from pipeline.cli import add_spec_arguments, spec_from_args

    parser = argparse.ArgumentParser()
    add_spec_arguments(parser)
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(["--dpo.beta", "{"])
    assert exit_.value.code == 2 and "--dpo.beta" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args(["--sft.max_steps", "*anchor"])
    spec = spec_from_args(parser.parse_args(["--preset", "tiny-ci", "--dpo.beta", "0.25", "--sft.max_steps", "7"]))
    assert spec.dpo.beta == 0.25 and spec.sft.max_steps == 7  # typed fields still read as numbers
    with pytest.raises(SystemExit):
        parser.parse_args(["--sft.max_steps", "9" * 5000])
    assert "integer of 5,000 digits" in capsys.readouterr().err


def test_a_lone_surrogate_in_a_config_value_is_refused_naming_the_field():
    from pipeline.core.configs import RunSpec, from_dict

    with pytest.raises(ConfigError, match=r"RunSpec\.name: holds a lone surrogate"):
        from_dict(RunSpec, {"name": "run \ud800"})


def test_a_fifo_given_as_a_config_or_data_file_is_refused_without_waiting(tmp_path):
    """Opening a FIFO for reading blocks until a writer comes: the check runs in a child with a bound, so a
    regression fails here instead of hanging the suite."""
    import os
    import subprocess
    import sys

    from tests.test_cli_up import ROOT

    fifo = tmp_path / "rows.jsonl"
    os.mkfifo(fifo)
    config = tmp_path / "run.yaml"
    os.mkfifo(config)
    probe = (
        "import sys\n"
        "from pipeline.core.configs import load_spec\n"
        "from pipeline.core.errors import ConfigError, DataError\n"
        "from pipeline.validation import validate_file\n"
        "try:\n    load_spec(sys.argv[1])\nexcept ConfigError as exc:\n    print('CONFIG', exc)\n"
        "try:\n    validate_file('instructions', sys.argv[2])\nexcept DataError as exc:\n    print('DATA', exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, str(config), str(fifo)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"CONFIG {config}: is a FIFO (named pipe), not a regular config file" in done.stdout
    assert f"DATA {fifo}: is a FIFO (named pipe), not a regular JSONL file" in done.stdout


@pytest.mark.parametrize(
    "name, code",
    [
        ("instructions_invisible_only.jsonl", "empty_text"),
        ("instructions_lone_surrogate.jsonl", "not_text"),
        ("instructions_duplicate_key.jsonl", "duplicate_key"),
    ],
)
def test_bad_instruction_rows_are_refused_at_submit_naming_row_and_field(
    name, code, tiny_ci_spec, redis_conn, engine, alignlab_home
):
    import shutil

    path = alignlab_home / name
    shutil.copy(DATA / "bad" / name, path)
    spec = copy.deepcopy(tiny_ci_spec)
    spec.data.instructions = str(path)
    with pytest.raises(ConfigError) as caught:
        scheduler.submit(spec, redis_conn, engine)
    assert f"DataConfig.instructions: instructions data from {path}" in str(caught.value)
    assert f"{name}:2 field instruction: {code}" in str(caught.value)
    with read_session(engine) as s:
        assert s.scalar(select(func.count()).select_from(Run)) == 0
    assert redis_conn.llen("rq:queue:gpu") + redis_conn.llen("rq:queue:cpu") == 0


def test_a_gigantic_line_is_skipped_in_bounded_chunks_and_named(tmp_path):
    """A data file whose one line is 40 MB: refused by row without ever holding the line (reads are bounded)."""
    from pipeline.validation import MAX_LINE_BYTES, validate_file

    path = tmp_path / "huge.jsonl"
    with path.open("wb") as out:
        out.write(b'{"instruction": "Name a colour."}\n{"instruction": "')
        for _ in range(40):
            out.write(b"x" * 1024 * 1024)
        out.write(b'"}\n{"instruction": "Name a fruit."}\n')
    assert path.stat().st_size > 2 * MAX_LINE_BYTES
    report = validate_file("instructions", path)
    assert [(i.row, i.code) for i in report.issues if i.row is not None] == [(2, "line_too_long")]
    assert report.rows_valid == 2
