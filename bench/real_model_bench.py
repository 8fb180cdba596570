"""The real CPU model (SmolLM2-135M-Instruct, a catalog model): the whole DAG's wall time and peak memory, and the
positive control planted on it."""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import final_run_status, free_port

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


def real_model_aa(quick: bool = False) -> dict:
    """The negative control on the real model: `alignlab seeds --preset smol-cpu --seeds 0,1` (smol-ci with --quick)
    from an empty store: every trained method against itself across training seeds, tested as two methods."""
    preset = "smol-ci" if quick else "smol-cpu"
    with tempfile.TemporaryDirectory() as tmp:
        _, env = _fresh_home(tmp)
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "pipeline", "seeds", "--preset", preset, "--seeds", "0,1"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
        )
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            raise RuntimeError(f"alignlab seeds --preset {preset} failed: {done.stderr[-2000:]}")
        line = next(x for x in done.stdout.splitlines() if x.startswith("seed group report: "))
        report = json.loads(Path(line.split(": ", 1)[1]).with_suffix(".json").read_text())
    from scipy.stats import binomtest

    aa = report["aa"]
    # honest intervals find about α·n "differences" between identical methods by chance: the control fails only when
    # there are more than chance explains (one-sided binomial test at 0.05)
    excess_p = float(binomtest(aa["significant"], aa["comparisons"], aa["alpha"], alternative="greater").pvalue)
    return {
        "preset": preset,
        "seconds": round(seconds, 1),
        "aa": {k: v for k, v in aa.items() if k != "details"},
        "significant": [d for d in aa["details"] if d["significant"]],
        "headline": report["headline"],
        "excess_p": excess_p,
        "goal": "A/A: no more significant differences between identical methods than chance (binomial p ≥ 0.05)",
        "met": excess_p >= 0.05,
        "summary": f"{preset}, seeds 0 and 1 ({seconds / 60:.1f} min): {aa['text']}; more than chance: p = "
        f"{excess_p:.2f}",
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


def _until(check, timeout_s: float, what: str, proc: subprocess.Popen, log: Path):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"`alignlab up` exited while waiting for {what}: {log.read_text()[-3000:]}")
        result = check()
        if result:
            return result
        time.sleep(2)
    raise RuntimeError(f"{what} did not happen within {timeout_s:.0f} s: {log.read_text()[-3000:]}")


def real_model_up(quick: bool = False) -> dict:
    """The README's path from a clean home: `alignlab models fetch smollm2-135m-instruct`, then `alignlab up --preset
    smol-cpu` (smol-ci with --quick) until the run succeeds, then the Samples page in Chromium: the generations it
    shows for its first prompt are the evaluate stages' own outputs, read from the artifact store (not the
    database). The screenshot goes to bench/results/real_model_samples.png."""
    import signal
    import urllib.request

    from playwright.sync_api import expect, sync_playwright

    from pipeline.stages.evaluate import SAMPLES_OUT

    preset = "smol-ci" if quick else "smol-cpu"
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
        env["ALIGNLAB_HOME"] = str(home)
        started = time.perf_counter()
        fetch = [sys.executable, "-m", "pipeline", "models", "fetch", "smollm2-135m-instruct"]
        subprocess.run(fetch, cwd=ROOT, env=env, check=True, capture_output=True)
        fetch_s = time.perf_counter() - started
        port, log = free_port(), Path(tmp) / "up.log"
        up_command = [sys.executable, "-m", "workers.cli", "up", "--preset", preset, "--port", str(port)]
        with open(log, "w") as out:
            up = subprocess.Popen(up_command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            up_started = time.perf_counter()
            status = _until(lambda: final_run_status(home / "alignlab.db"), 3600, "the run to finish", up, log)
            run_s = time.perf_counter() - up_started
            if status != "succeeded":
                raise RuntimeError(f"the smol-cpu run {status}: {log.read_text()[-3000:]}")
            url = f"http://127.0.0.1:{port}"
            _until(
                lambda: urllib.request.urlopen(f"{url}/_stcore/health", timeout=5).read() == b"ok",
                120,
                "the dashboard",
                up,
                log,
            )
            generations = {}
            for path in home.rglob(SAMPLES_OUT):
                for line in path.read_text().splitlines():
                    row = json.loads(line)
                    generations.setdefault(row["prompt_id"], set()).add(row["generation"])
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=["--no-sandbox"])
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.goto(f"{url}/samples", timeout=120_000)
                expect(page.get_by_text("Reference (SFT data)")).to_be_visible(timeout=120_000)
                page.wait_for_timeout(1000)
                caption = page.get_by_text(re.compile(r"^Prompt [0-9a-f]+$")).first.inner_text()
                shown = {t.strip() for t in page.get_by_test_id("stText").all_inner_texts()}
                page.screenshot(path=str(ROOT / "bench" / "results" / "real_model_samples.png"), full_page=True)
                browser.close()
        finally:
            up.send_signal(signal.SIGINT)
            up.wait(120)
    prompt = caption.split()[-1]
    expected = {g.strip() for g in generations.get(prompt, set())}
    found = expected & shown
    minutes = run_s / 60
    return {
        "preset": preset,
        "fetch_s": round(fetch_s, 1),
        "run_s": round(run_s, 1),
        "prompt": prompt,
        "generations_on_page": sorted(found),
        "goal": "from an empty home: fetch, `alignlab up --preset` to a succeeded run, its generations on Samples",
        "met": bool(expected) and found == expected,
        "summary": f"fetch {fetch_s:.0f} s, `alignlab up --preset {preset}` to a succeeded run {minutes:.1f} min; "
        f"Samples shows {len(found)} of {len(expected)} generations of prompt {prompt} as stored, e.g. "
        f"{next(iter(sorted(found)), '')[:80]!r}",
    }
