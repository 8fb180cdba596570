import json
import os
import subprocess
import sys
import textwrap

import pytest

from pipeline.artifacts import COMPLETE, ArtifactStore, artifact_key, code_version
from pipeline.core.errors import ArtifactError


def test_key_hashes_stage_config_inputs_and_code_version():
    base = artifact_key("train_sft", {"lr": 1e-3, "epochs": 2}, ["generate_sft-" + "a" * 20], "v1")
    assert base == artifact_key("train_sft", {"epochs": 2, "lr": 1e-3}, ["generate_sft-" + "a" * 20], "v1")
    assert base.startswith("train_sft-")
    assert base != artifact_key("train_sft", {"lr": 2e-3, "epochs": 2}, ["generate_sft-" + "a" * 20], "v1")
    assert base != artifact_key("train_sft", {"lr": 1e-3, "epochs": 2}, ["generate_sft-" + "b" * 20], "v1")
    assert base != artifact_key("train_sft", {"lr": 1e-3, "epochs": 2}, ["generate_sft-" + "a" * 20], "v2")
    assert base != artifact_key("train_dpo", {"lr": 1e-3, "epochs": 2}, ["generate_sft-" + "a" * 20], "v1")
    assert code_version().startswith("0.1.0+")


@pytest.mark.parametrize("key", ["../evil-" + "0" * 20, "/etc/passwd", "train_sft-zz", "a/b-" + "0" * 20, "", None])
def test_keys_cannot_escape_the_root(tmp_path, key):
    store = ArtifactStore(tmp_path)
    with pytest.raises(ArtifactError):
        store.path(key)


def test_write_marks_complete_and_reuses(tmp_path):
    store = ArtifactStore(tmp_path)
    key = artifact_key("make_pairs", {"seed": 1}, [])
    assert not store.is_complete(key)
    with pytest.raises(ArtifactError, match="missing or incomplete"):
        store.get(key)
    with store.writer(key, {"config": {"seed": 1}}) as w:
        assert not w.reused
        (w.dir / "pairs.jsonl").write_text("{}\n")
    assert store.is_complete(key) and store.keys() == [key]
    meta = store.meta(key)
    assert meta["config"] == {"seed": 1} and meta["key"] == key and "seconds" in meta
    with store.writer(key) as again:
        assert again.reused and again.dir == store.get(key)
    assert (store.get(key) / "pairs.jsonl").read_text() == "{}\n"


def test_failure_leaves_work_dir_for_resume_and_no_marker(tmp_path):
    store = ArtifactStore(tmp_path)
    key = artifact_key("train_sft", {"x": 1}, [])
    with pytest.raises(RuntimeError):
        with store.writer(key) as w:
            (w.dir / "checkpoint-10").mkdir()
            raise RuntimeError("killed at step 10")
    assert not store.is_complete(key) and not store.path(key).exists()
    assert (store.partial_path(key) / "checkpoint-10").is_dir()  # the next attempt resumes from here
    with store.writer(key) as w:
        assert (w.dir / "checkpoint-10").is_dir()
    assert store.is_complete(key)


WRITER = textwrap.dedent(
    """
    import os, sys, time
    from pipeline.artifacts import ArtifactStore
    store = ArtifactStore(sys.argv[1])
    key, tag, crash = sys.argv[2], sys.argv[3], sys.argv[4] == "crash"
    with store.writer(key, {"writer": tag}) as w:
        if w.reused:
            print("reused", flush=True)
            sys.exit(0)
        for i in range(20):
            (w.dir / f"part-{i}.txt").write_text(tag * 1000)
            time.sleep(0.01)
            if crash and i == 10:
                os._exit(9)  # a killed worker: no exception handling, no cleanup
    print("wrote", flush=True)
    """
)


def run_writer(root, key, tag, mode="ok"):
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(root), key, tag, mode], stdout=subprocess.PIPE, text=True
    )


def test_crash_mid_write_leaves_no_complete(tmp_path):
    key = artifact_key("generate_sft", {"n": 1}, [])
    proc = run_writer(tmp_path, key, "A", "crash")
    assert proc.wait(timeout=60) == 9
    store = ArtifactStore(tmp_path)
    assert not store.is_complete(key)
    assert not (store.path(key) / COMPLETE).exists()
    assert store.keys() == []
    # the lock died with the process: a new writer gets it and completes
    assert run_writer(tmp_path, key, "B").wait(timeout=60) == 0
    assert store.meta(key)["writer"] == "B"


def test_two_writers_of_one_key_do_not_corrupt_it(tmp_path):
    key = artifact_key("generate_negatives", {"n": 2}, [])
    procs = [run_writer(tmp_path, key, tag) for tag in ("A", "B")]
    outputs = sorted(p.communicate(timeout=120)[0].strip() for p in procs)
    assert [p.returncode for p in procs] == [0, 0]
    assert outputs == ["reused", "wrote"]
    store = ArtifactStore(tmp_path)
    winner = store.meta(key)["writer"]
    parts = sorted(store.get(key).glob("part-*.txt"))
    assert len(parts) == 20 and all(p.read_text() == winner * 1000 for p in parts)
    assert not store.partial_path(key).exists()


def test_meta_is_json_with_code_version(tmp_path):
    store = ArtifactStore(tmp_path)
    key = artifact_key("compare", {}, [])
    with store.writer(key, {"inputs": ["a"]}):
        pass
    data = json.loads((store.get(key) / COMPLETE).read_text())
    assert data["code_version"] == code_version() and data["inputs"] == ["a"]
    assert os.listdir(store.root / ".partial") == []
