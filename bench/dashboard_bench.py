"""Dashboard page render time on a big store: 1,000 runs, 200,000 metric points, evaluations and samples.

Each page is rendered by Streamlit's AppTest (the page script, its queries and its charts, server side), warm, as a
user clicking around would see it; p50/p95 per page over repeated renders. Then the same store behind a real
Streamlit server, loaded in Chromium: the time from navigation to the page's main content visible."""

from __future__ import annotations

import os
import random
import statistics
import tempfile
import time
from datetime import timedelta
from pathlib import Path

MAIN = str(Path(__file__).resolve().parents[1] / "app" / "main.py")
NODES = [
    ("generate_sft", "generate_sft", None),
    ("train_sft", "train_sft", None),
    ("negatives", "generate_negatives", None),
    ("pairs", "make_pairs", None),
    ("dpo_sft", "train_dpo", "sft"),
    ("dpo_base", "train_dpo", "base"),
    ("eval_base", "evaluate", "base"),
    ("eval_sft", "evaluate", "sft"),
    ("eval_sft_dpo", "evaluate", "sft_dpo"),
    ("eval_dpo_only", "evaluate", "dpo_only"),
    ("compare", "compare", None),
]
METHODS = ("base", "sft", "sft_dpo", "dpo_only")


def fill(url: str, runs: int, metric_points: int, seed: int = 0) -> dict:
    """A store shaped like a busy lab's: `runs` finished runs, their curves, evaluations and samples."""
    from sqlalchemy import insert

    from db.migrate import upgrade
    from db.models import Evaluation, Metric, Run, Sample, StageRun, utcnow
    from db.session import make_engine
    from pipeline.core.configs import preset, to_dict

    upgrade(url)
    engine = make_engine(url)
    rng = random.Random(seed)
    spec = to_dict(preset("tiny-cpu"))
    now = utcnow()
    per_run = metric_points // runs
    with engine.begin() as c:
        c.execute(
            insert(Run),
            [
                {
                    "id": i,
                    "name": f"run-{i}",
                    "spec": {**spec, "dpo": {**spec["dpo"], "beta": rng.choice([0.05, 0.1, 0.2, 0.5])}},
                    "spec_hash": f"{i:064x}",
                    "preset": "tiny-cpu",
                    "base_model": "alignlab-tiny",
                    "tags": ["bench"],
                    "status": "succeeded",
                    "created_at": now - timedelta(hours=i),
                    "started_at": now - timedelta(hours=i),
                    "finished_at": now - timedelta(hours=i) + timedelta(minutes=20),
                }
                for i in range(1, runs + 1)
            ],
        )
        c.execute(
            insert(StageRun),
            [
                {
                    "id": (i - 1) * len(NODES) + n + 1,
                    "run_id": i,
                    "node": node,
                    "stage": stage,
                    "role": role,
                    "queue": "gpu",
                    "status": "succeeded",
                    "attempt": 1,
                    "progress_done": 10,
                    "progress_total": 10,
                    "log_tail": "step 10 loss 0.5\n" * 20,
                    "load_info": {"device": "cuda", "dtype": "bfloat16", "quantization": "none"},
                    "peak_memory_bytes": 2**30,
                }
                for i in range(1, runs + 1)
                for n, (node, stage, role) in enumerate(NODES)
            ],
        )
        # curves: SFT loss and DPO loss/rewards, split over the three training stages of each run
        rows = []
        for i in range(1, runs + 1):
            for k in range(per_run):
                node = (1, 4, 5)[k % 3]
                name = ("loss", "rewards/margins", "rewards/accuracies", "rewards/chosen")[k // 3 % 4]
                rows.append(
                    {
                        "run_id": i,
                        "stage_run_id": (i - 1) * len(NODES) + node + 1,
                        "step": k // 12,
                        "name": name,
                        "value": rng.random(),
                    }
                )
            if len(rows) > 50_000:
                c.execute(insert(Metric), rows)
                rows = []
        if rows:
            c.execute(insert(Metric), rows)
        compare_id = {i: (i - 1) * len(NODES) + len(NODES) for i in range(1, runs + 1)}
        c.execute(
            insert(Evaluation),
            [
                {
                    "run_id": i,
                    "stage_run_id": compare_id[i],
                    "method": method,
                    "metric": metric,
                    "negative_type": negative_type,
                    "value": value,
                    "ci_low": value - 0.05,
                    "ci_high": value + 0.05,
                    "n": 200,
                }
                for i in range(1, runs + 1)
                for method in METHODS
                for metric, negative_type in [
                    ("preference_accuracy", None),
                    ("reference_nll", None),
                    ("eos_rate", None),
                    ("preference_accuracy", "model_sample"),
                    ("preference_accuracy", "truncation"),
                ]
                for value in [rng.random()]
            ],
        )
        c.execute(
            insert(Sample),
            [
                {
                    "run_id": i,
                    "stage_run_id": compare_id[i] - 4 + m,
                    "method": method,
                    "prompt_id": f"p{p:04d}",
                    "prompt": f"Instruction: question {p}\nResponse:",
                    "reference": "a reference answer",
                    "generation": "a generated answer " * rng.randint(1, 8),
                    "stats": {"repetition": rng.random() * 0.6, "eos_reached": rng.random() > 0.1, "chars": 100},
                }
                for i in range(max(1, runs - 20), runs + 1)  # the newest runs carry samples
                for p in range(50)
                for m, method in enumerate(METHODS)
            ],
        )
    engine.dispose()
    return {"runs": runs, "metric_points": per_run * runs}


def render_times(url: str, pages: dict[str, dict], renders: int) -> dict[str, list[float]]:
    from streamlit.testing.v1 import AppTest

    os.environ["DATABASE_URL"] = url
    times: dict[str, list[float]] = {}
    for label, how in pages.items():
        at = AppTest.from_file(MAIN, default_timeout=120)
        for key, value in how.get("query", {}).items():
            at.query_params[key] = value
        at.run()
        if how.get("page"):
            at.switch_page(how["page"]).run()
        assert not at.exception, f"{label}: {at.exception}"
        samples = []
        for _ in range(renders):
            started = time.perf_counter()
            at.run()
            samples.append(time.perf_counter() - started)
            assert not at.exception, f"{label}: {at.exception}"
        times[label] = samples
    return times


CHROMIUM = "/usr/bin/chromium"
# what a person sees when the page has arrived: its main content, per page (path, text)
BROWSER_PAGES = {
    "runs table": ("/runs", "Click a row to open its run."),
    "run page": ("/runs?run={runs}", "Run {runs} · run-{runs} · succeeded"),
    "launch": ("/launch", "Key settings"),
    "data": ("/data", "Validation reports"),
    "compare": ("/compare", "Compare methods"),
    "samples": ("/samples", "Samples"),
}


def browser_times(url: str, runs: int, loads: int) -> dict[str, list[float]] | str:
    """Seconds from navigation (a fresh load of the page's URL in Chromium) to its main content visible, against a
    real Streamlit server on the same store; a reason instead when there is no Chromium to drive."""
    import importlib.util
    import socket
    import subprocess
    import sys
    import urllib.request

    if not Path(CHROMIUM).exists() or importlib.util.find_spec("playwright") is None:
        return f"not measured: {CHROMIUM} or playwright missing"
    from playwright.sync_api import expect, sync_playwright

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "DATABASE_URL": url}
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", MAIN, "--server.address", "127.0.0.1", "--server.port", str(port)]
        + ["--server.headless", "true", "--browser.gatherUsageStats", "false"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{base}/_stcore/health", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    return "not measured: the Streamlit server did not start"
                time.sleep(0.2)
        times: dict[str, list[float]] = {}
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            for label, (path, text) in BROWSER_PAGES.items():
                path, text = path.format(runs=runs), text.format(runs=runs)
                page.goto(base + path, timeout=120_000)  # warm: the server has run this page once
                expect(page.get_by_text(text, exact=True).first).to_be_visible(timeout=120_000)
                samples = []
                for _ in range(loads):
                    started = time.perf_counter()
                    page.goto(base + path, wait_until="commit", timeout=120_000)
                    expect(page.get_by_text(text, exact=True).first).to_be_visible(timeout=120_000)
                    samples.append(time.perf_counter() - started)
                times[label] = samples
            browser.close()
        return times
    finally:
        server.terminate()
        server.wait(30)


def p95(values: list[float]) -> float:
    return sorted(values)[max(0, int(round(0.95 * len(values))) - 1)]


def dashboard(quick: bool = False) -> dict:
    runs, points, renders, loads = (20, 4_000, 3, 2) if quick else (1_000, 200_000, 20, 20)
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/bench.db"
        started = time.perf_counter()
        size = fill(url, runs, points)
        fill_s = time.perf_counter() - started
        pages = {
            "runs table": {},
            "run page": {"query": {"run": str(runs)}},
            "launch": {"page": "views/launch.py"},
            "data": {"page": "views/data.py"},
            "compare": {"page": "views/compare.py"},
            "samples": {"page": "views/samples.py"},
        }
        times = render_times(url, pages, renders)
        in_browser = browser_times(url, runs, loads)
    per_page = {label: {"p50_s": statistics.median(t), "p95_s": p95(t)} for label, t in times.items()}
    worst = max(v["p95_s"] for v in per_page.values())
    slowest = max(per_page, key=lambda k: per_page[k]["p95_s"])
    summary = (
        f"{size['runs']:,} runs, {size['metric_points']:,} metric points: server side, worst page p95 "
        f"{worst * 1000:.0f} ms ({slowest}); "
        + ", ".join(f"{k} {v['p95_s'] * 1000:.0f}" for k, v in per_page.items())
        + " ms p95"
    )
    browser: dict | str = in_browser
    met = worst <= 1.0
    if isinstance(in_browser, dict):
        browser = {label: {"p50_s": statistics.median(t), "p95_s": p95(t)} for label, t in in_browser.items()}
        worst_browser = max(v["p95_s"] for v in browser.values())
        met = met and worst_browser <= 2.0
        summary += (
            f"; in Chromium, navigation to main content visible, worst p95 {worst_browser:.2f} s ("
            + ", ".join(f"{k} {v['p95_s']:.2f}" for k, v in browser.items())
            + " s)"
        )
    else:
        summary += f"; Chromium {in_browser}"
    return {
        **size,
        "fill_s": fill_s,
        "renders_per_page": renders,
        "pages": per_page,
        "browser_loads_per_page": loads,
        "browser": browser,
        "goal": "p95 ≤ 1 s per page server side; p95 ≤ 2 s in Chromium from navigation to main content visible",
        "met": met,
        "summary": summary,
    }
