"""Dashboard page render time on a big store: 1,000 runs, 200,000 metric points, evaluations and samples.

Each page is rendered by Streamlit's AppTest (the page script, its queries and its charts, server side), warm, as a
user clicking around would see it; p50/p95 per page over repeated renders."""

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


def dashboard(quick: bool = False) -> dict:
    runs, points, renders = (20, 4_000, 3) if quick else (1_000, 200_000, 20)
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
    per_page = {
        label: {
            "p50_s": statistics.median(t),
            "p95_s": sorted(t)[max(0, int(round(0.95 * len(t))) - 1)],
        }
        for label, t in times.items()
    }
    worst = max(v["p95_s"] for v in per_page.values())
    slowest = max(per_page, key=lambda k: per_page[k]["p95_s"])
    return {
        **size,
        "fill_s": fill_s,
        "renders_per_page": renders,
        "pages": per_page,
        "goal": "p95 ≤ 1 s per page",
        "met": worst <= 1.0,
        "summary": f"{size['runs']:,} runs, {size['metric_points']:,} metric points: worst page p95 "
        f"{worst * 1000:.0f} ms ({slowest}); "
        + ", ".join(f"{k} {v['p95_s'] * 1000:.0f}" for k, v in per_page.items())
        + " ms p95",
    }
