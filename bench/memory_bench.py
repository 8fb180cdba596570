"""The memory planner against what the stages measure: each stage's planned peak (pipeline.core.memory_plan, with
the lengths the run's data really has) beside its measured peak RSS delta (peak minus the RSS before its model was
loaded), in the product's own path as a pod runs it: `alignlab up --job-process fork`, one fresh process per job."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import final_run_status, free_port
from bench.training_bench import _install_model

ROOT = Path(__file__).resolve().parent.parent
TOLERANCE = 0.30  # the bar: within ±30% of the measured peak RSS delta


def measured_lengths(spec: Any, home: Path, keys: dict[str, str]) -> dict[str, int]:
    """The longest sequence each stage met in the run's data (artifact `keys` by node, as the run recorded them), in
    the model's tokens (`memory_plan`'s `lengths`)."""
    from transformers import AutoTokenizer

    from pipeline.dag import default_store
    from pipeline.formats import encode_prompt, tokenize_pair
    from pipeline.models import resolve_model
    from pipeline.stages import read_jsonl
    from pipeline.stages.generate_sft import OUTPUT as SFT_RECORDS
    from pipeline.stages.pairs import HELDOUT, TRAIN

    os.environ["ALIGNLAB_HOME"] = str(home)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(spec.base_model.name_or_path))
    store = default_store(home)
    records = read_jsonl(store.path(keys["generate_sft"]) / SFT_RECORDS)
    train, heldout = (read_jsonl(store.path(keys["pairs"]) / name) for name in (TRAIN, HELDOUT))

    def longest(rows: list[dict[str, Any]], fields: tuple[str, ...]) -> int:
        return max(len(tokenize_pair(tokenizer, r["prompt"], r[f], 10**6).input_ids) for r in rows for f in fields)

    prompt = max(len(encode_prompt(tokenizer, r["prompt"])) for r in records)
    return {
        "generation": prompt,
        "negatives": prompt,
        "sft": longest(records, ("completion",)),
        "dpo": longest(train, ("chosen", "rejected")),
        "eval": longest(heldout, ("chosen", "rejected")),
        "eval.prompt": max(len(encode_prompt(tokenizer, r["prompt"])) for r in heldout),
    }


def _queued_run(preset_name: str, home: Path, timeout: float = 3600) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """`alignlab up --preset NAME` until the run is final; its stage runs' load facts and artifact keys (by node)
    from the database."""
    from sqlalchemy import create_engine, text

    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    env["ALIGNLAB_HOME"] = str(home)
    command = [sys.executable, "-m", "workers.cli", "up", "--preset", preset_name, "--port", str(free_port())]
    command += ["--job-process", "fork"]  # a pod's worker: each stage's peak in a fresh process of its own
    log = home / "up.log"
    with open(log, "w") as out:
        up = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout
        while (status := final_run_status(home / "alignlab.db")) is None:
            if up.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the {preset_name} run did not finish: {log.read_text()[-3000:]}")
            time.sleep(1)
    finally:
        up.send_signal(signal.SIGINT)
        up.wait(120)
    if status != "succeeded":
        raise RuntimeError(f"the {preset_name} run {status}: {log.read_text()[-3000:]}")
    engine = create_engine(f"sqlite:///{home / 'alignlab.db'}")
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT node, stage, load_info, artifact_key FROM stage_runs ORDER BY id")).all()
    engine.dispose()
    loads, keys = [], {}
    for node, stage, info, key in rows:
        keys[node] = key
        info = json.loads(info) if isinstance(info, str) else info
        if info and info.get("peak_memory_bytes") and info.get("peak_memory_kind") == "process_peak_rss":
            delta = info["peak_memory_bytes"] - info["memory_before_bytes"]
            loads.append({"node": node, "stage": stage, "delta": delta})
    return loads, keys


def compare_with_plan(preset_name: str, home: Path) -> dict[str, Any]:
    """Run the preset queued in `home` (its model already there), then each loading node's plan vs measurement."""
    from pipeline.core.configs import preset
    from pipeline.core.memory_plan import read_shape, stage_peak, terms_text

    spec = preset(preset_name)
    loads, keys = _queued_run(preset_name, home)
    lengths = measured_lengths(spec, home, keys)
    shape = read_shape(spec.base_model.name_or_path, home)
    nodes = []
    for load in loads:
        terms = stage_peak(shape, spec, load["stage"], "cpu", lengths)
        planned = sum(terms.values())
        nodes.append(
            {
                "node": load["node"],
                "measured_mib": round(load["delta"] / 2**20, 1),
                "planned_mib": round(planned / 2**20, 1),
                "ratio": round(planned / load["delta"], 3),
                "terms": terms_text(terms),
            }
        )
    return {"preset": preset_name, "lengths": lengths, "nodes": nodes}


def memory_plan(quick: bool = False) -> dict:
    """tiny-ci and smol-ci (tiny-ci alone with --quick), queued as a user's run is: every stage that loads a model,
    planned vs measured peak RSS delta; met when every one is within ±30%."""
    from pipeline.core.configs import preset

    presets = ["tiny-ci"] if quick else ["tiny-ci", "smol-ci"]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in presets:
            home = Path(tmp) / name
            _install_model(preset(name), home)
            results.append(compare_with_plan(name, home))
            shutil.rmtree(home / "artifacts", ignore_errors=True)
    every = [n for r in results for n in r["nodes"]]
    worst = max(every, key=lambda n: abs(n["ratio"] - 1))
    shown = "; ".join(
        f"{r['preset']}: " + ", ".join(f"{n['node']} {n['planned_mib']:.0f}/{n['measured_mib']:.0f}" for n in nodes)
        for r in results
        for nodes in [r["nodes"]]
    )
    return {
        "presets": results,
        "goal": f"every stage's planned peak within ±{TOLERANCE:.0%} of its measured peak RSS delta (CPU)",
        "met": all(abs(n["ratio"] - 1) <= TOLERANCE for n in every),
        "summary": f"planned / measured MiB per stage, {shown}; worst {worst['node']} {worst['ratio']:.2f}×",
    }


__all__ = ["memory_plan", "measured_lengths", "compare_with_plan"]
