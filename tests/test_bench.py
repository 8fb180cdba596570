"""The benchmarks stay runnable: each queue benchmark once at its smallest size (no timing is asserted)."""

import json
import subprocess
import sys

# a bound for a hung benchmark, not a timing: on a 2-core machine beside a CPU-heavy process the pipeline
# benchmarks at their smallest size took over 20 minutes (2026-12-05)
HANG_GUARD_S = 3600


def test_bench_quick_writes_json_and_markdown(redis_server_url, tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "bench", "queue_latency", "recorder", "dashboard", "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
        env={**__import__("os").environ, "REDIS_URL": redis_server_url},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    data = json.loads((tmp_path / "results-quick.json").read_text())
    assert set(data["results"]) == {"queue_latency", "recorder", "dashboard"}
    assert data["results"]["dashboard"]["runs"] == 20 and set(data["results"]["dashboard"]["pages"]) >= {"compare"}
    browser = data["results"]["dashboard"]["browser"]  # measured in Chromium, every page
    assert isinstance(browser, dict) and set(browser) == set(data["results"]["dashboard"]["pages"])
    assert all(0 < page["p50_s"] <= page["p95_s"] for page in browser.values())
    assert data["results"]["recorder"]["events"] == 2000
    assert data["results"]["queue_latency"]["n"] == 5
    assert data["machine"]["cpu_count"] >= 1
    assert "| queue_latency |" in (tmp_path / "results-quick.md").read_text()


def test_pipeline_and_gpu_benchmarks_run_at_their_smallest_size(tiny_model_dir, tmp_path):
    names = ["generation", "sft_overhead", "dpo_overhead", "dpo_ref_cache", "eval_memory", "cache", "gpu"]
    out = subprocess.run(
        [sys.executable, "-m", "bench", *names, "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads((tmp_path / "results-quick.json").read_text())["results"]
    assert set(results) == set(names)
    assert results["cache"]["reused_nodes"] == results["cache"]["nodes"] == 12
    assert results["generation"]["speedup"] > 0 and results["sft_overhead"]["tokens"] > 0
    assert results["eval_memory"]["peak_mib"]["all_at_once"] > 0
    assert results["gpu"]["training"]["tokens_per_s"] > 0
    import torch

    assert results["gpu"]["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():  # decided by this machine, not by the result under test
        assert "no CUDA device" in results["gpu"]["cuda"]


def test_results_holding_numpy_scalars_are_written_as_plain_json(monkeypatch, tmp_path):
    """A p-value from scipy and a comparison of it are numpy scalars: the results file still gets written."""
    import numpy as np

    import bench.__main__ as bench_main

    def scipy_shaped(quick: bool = False) -> dict:
        p = np.float64(0.5)
        return {"excess_p": p, "met": p >= 0.05, "goal": "p ≥ 0.05", "summary": "p = 0.50"}

    monkeypatch.setitem(bench_main.BENCHMARKS, "scipy_shaped", scipy_shaped)
    assert bench_main.main(["scipy_shaped", "--out", str(tmp_path)]) == 0
    written = json.loads((tmp_path / "results.json").read_text())["results"]["scipy_shaped"]
    assert written["excess_p"] == 0.5 and written["met"] is True


def test_the_plain_sft_script_trains_on_the_records_the_stage_trains_on(monkeypatch, tmp_path):
    """The overhead ratio compares like with like: the plain TRL script gets the train prompts' records only, as the
    stage does (with the held-out ones it trained a quarter more and the stage looked 1.35x faster)."""
    import pytest
    import trl

    from bench import training_bench
    from pipeline.artifacts import write_jsonl
    from pipeline.core.configs import preset

    class Captured(Exception):
        pass

    def capture(**kwargs):
        raise Captured(kwargs["train_dataset"].to_list())

    monkeypatch.setattr(trl, "SFTTrainer", capture)
    monkeypatch.setattr(training_bench, "_plain_load", lambda spec: (None, None))
    records = [
        {"prompt": "Name a tree.", "completion": " An oak.", "meta": {"split": "train"}},
        {"prompt": "Name a colour.", "completion": " Blue.", "meta": {"split": "heldout"}},
    ]
    write_jsonl(tmp_path / "sft.jsonl", records)
    with pytest.raises(Captured) as trained:
        training_bench.plain_sft(preset("tiny-ci"), tmp_path / "sft.jsonl", tmp_path / "plain")
    assert trained.value.args[0] == [{"prompt": "Name a tree.", "completion": " An oak."}]


def test_the_memory_plan_bench_sets_every_loading_stage_beside_its_measurement(tiny_model_dir, tmp_path):
    """`bench memory_plan --quick`: tiny-ci queued through `alignlab up`; every node that loads a model, its plan
    and its measured peak RSS delta (how close they are is the bench's result, not asserted here)."""
    out = subprocess.run(
        [sys.executable, "-m", "bench", "memory_plan", "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    (result,) = json.loads((tmp_path / "results-quick.json").read_text())["results"]["memory_plan"]["presets"]
    nodes = {n["node"]: n for n in result["nodes"]}
    loading = ["generate_sft", "train_sft", "negatives", "dpo_sft", "dpo_base"]
    assert list(nodes) == loading + ["eval_base", "eval_sft", "eval_sft_dpo", "eval_dpo_only"]
    assert all(n["measured_mib"] > 0 and n["planned_mib"] > 0 for n in nodes.values())
    assert all(abs(n["ratio"] - n["planned_mib"] / n["measured_mib"]) < 0.01 for n in nodes.values())
    assert 0 < result["lengths"]["generation"] < result["lengths"]["sft"] <= tiny_ci_max_length()


def tiny_ci_max_length() -> int:
    from pipeline.core.configs import preset

    return preset("tiny-ci").sft.max_length
