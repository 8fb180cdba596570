"""The real CPU model (SmolLM2-135M-Instruct, a catalog model): the whole DAG's wall time and peak memory, and the
positive control planted on it."""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(preset: str, env: dict[str, str]) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", "--preset", preset], cwd=ROOT, env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"alignlab run --preset {preset} failed: {done.stderr[-2000:]}")
    return time.perf_counter() - started, done.stdout


def _report(stdout: str) -> dict:
    line = next(x for x in stdout.splitlines() if x.startswith("report: "))
    return json.loads((Path(line.split(": ", 1)[1]).parent / "report.json").read_text())


def _fresh_home(tmp: str) -> tuple[Path, dict[str, str]]:
    from pipeline.core.catalog import SMOLLM2_135M_INSTRUCT
    from pipeline.packaged import ensure_packaged

    home = Path(tmp)
    cached = ensure_packaged(SMOLLM2_135M_INSTRUCT)  # the caller's ALIGNLAB_HOME keeps one converted copy
    shutil.copytree(cached, home / "models" / SMOLLM2_135M_INSTRUCT.name)
    return home, {**os.environ, "ALIGNLAB_HOME": str(home)}


def real_model_control(quick: bool = False) -> dict:
    """The positive control on the real model: `alignlab run --preset smol-control` from an empty store."""
    with tempfile.TemporaryDirectory() as tmp:
        _, env = _fresh_home(tmp)
        seconds, stdout = _run("smol-control", env)
        (control,) = _report(stdout)["controls"]
    return {
        "seconds": round(seconds, 1),
        "control": control,
        "goal": "the planted effect detected (CI excludes 0, right sign)",
        "met": control["passed"],
        "summary": f"smol-control, whole DAG {seconds / 60:.1f} min: {control['text']}",
    }


def real_model(quick: bool = False) -> dict:
    """`alignlab run --preset smol-cpu` (smol-ci with --quick) in a fresh process on a fetched model, then
    smol-control in the same store (its data stages reused): the full DAG's time and peak RSS, and the control."""
    from pipeline.core.catalog import SMOLLM2_135M_INSTRUCT
    from pipeline.packaged import ensure_packaged

    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        cached = ensure_packaged(SMOLLM2_135M_INSTRUCT)  # the caller's ALIGNLAB_HOME keeps one converted copy
        shutil.copytree(cached, home / "models" / SMOLLM2_135M_INSTRUCT.name)
        env = {**os.environ, "ALIGNLAB_HOME": str(home)}
        dag_preset = "smol-ci" if quick else "smol-cpu"
        seconds, stdout = _run(dag_preset, env)
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
        report = _report(stdout)
        control = None
        if not quick:
            control_seconds, control_out = _run("smol-control", env)
            (control,) = _report(control_out)["controls"]
            control["seconds"] = round(control_seconds, 1)
    minutes = seconds / 60
    met = minutes <= 20 and peak <= 4 * 2**30 and (quick or control["passed"])
    summary = f"{dag_preset}: whole DAG {minutes:.1f} min, peak RSS {peak / 2**30:.2f} GiB; {report['answer']['text']}"
    if control:
        summary += f"; smol-control ({control['seconds'] / 60:.1f} min, data stages reused): {control['text']}"
    return {
        "preset": dag_preset,
        "seconds": round(seconds, 1),
        "peak_rss_bytes": peak,
        "go": report["go"],
        "answer": report["answer"],
        "control": control,
        "goal": "smol-cpu ≤ 20 min and ≤ 4 GB on 2 cores; the positive control detected",
        "met": met,
        "summary": summary,
    }


LOAD_AND_MEASURE = """
import json, sys
import psutil, torch
from pipeline.core.configs import ModelConfig
from pipeline.formats import render_prompt
from pipeline.core.configs import FormatConfig
from pipeline import models
process = psutil.Process()
import transformers, bitsandbytes  # noqa: F401  (imports paid before the baseline)
before = process.memory_info().rss
config = ModelConfig(name_or_path=sys.argv[1], device="cpu", dtype="float32", load_in_8bit=sys.argv[2] == "8bit")
model, tokenizer, info = models.load_model(config)
ids = tokenizer(render_prompt("What is the capital of France?", FormatConfig(), tokenizer), return_tensors="pt")
with torch.no_grad():
    out = model.generate(**ids, max_new_tokens=12, do_sample=False)
# after a generation every weight has been read: memory-mapped safetensors pages count as resident only then
used = process.memory_info().rss
answer = tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
print(json.dumps({"delta": used - before, "quantization": info.quantization, "fallback": info.fallback,
                  "answer": answer, "footprint": model.get_memory_footprint()}))
"""


def real_model_8bit(quick: bool = False) -> dict:
    """The real model loaded through `pipeline.models.load_model` in float32 and in 8-bit (bitsandbytes' CPU
    backend), each in a fresh process: resident memory added by loading it and generating once (every weight read),
    and that the 8-bit model still answers."""
    from pipeline.core.catalog import SMOLLM2_135M_INSTRUCT
    from pipeline.packaged import ensure_packaged

    ensure_packaged(SMOLLM2_135M_INSTRUCT)
    results = {}
    for mode in ("32bit", "8bit"):
        done = subprocess.run(
            [sys.executable, "-c", LOAD_AND_MEASURE, SMOLLM2_135M_INSTRUCT.name, mode],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        results[mode] = json.loads(done.stdout.strip().splitlines()[-1])
    ratio = results["8bit"]["delta"] / results["32bit"]["delta"]
    mib = {mode: r["delta"] / 2**20 for mode, r in results.items()}
    return {
        **results,
        "ratio": ratio,
        "goal": "8-bit loads (no fallback) and takes less memory than float32",
        "met": results["8bit"]["quantization"] == "8bit" and ratio < 1.0,
        "summary": f"RSS added by load + one generation: float32 {mib['32bit']:.0f} MiB vs 8-bit "
        f"{mib['8bit']:.0f} MiB = {ratio:.2f}× "
        f"(weights footprint {results['32bit']['footprint'] / 2**20:.0f} vs {results['8bit']['footprint'] / 2**20:.0f}"
        f" MiB); 8-bit answers {results['8bit']['answer']!r}",
    }
