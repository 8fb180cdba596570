"""`python -m bench [NAME ...] [--quick]`: benchmarks as side-by-side ratios, results in bench/results/."""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

from bench import (
    dashboard_bench,
    gpu_bench,
    judge_bench,
    memory_bench,
    queue_bench,
    real_model_bench,
    training_bench,
)

BENCHMARKS = {
    "generation": training_bench.generation,
    "sft_overhead": training_bench.sft_overhead,
    "dpo_overhead": training_bench.dpo_overhead,
    "dpo_ref_cache": training_bench.dpo_ref_cache,
    "eval_memory": training_bench.eval_memory,
    "cache": training_bench.cache,
    "queue_latency": queue_bench.queue_latency,
    "recorder": queue_bench.recorder_throughput,
    "orchestration": queue_bench.orchestration,
    "dashboard": dashboard_bench.dashboard,
    "gpu": gpu_bench.gpu,
    "real_model": real_model_bench.real_model,
    "real_model_control": real_model_bench.real_model_control,
    "real_model_8bit": real_model_bench.real_model_8bit,
    "real_model_aa": real_model_bench.real_model_aa,
    "real_model_up": real_model_bench.real_model_up,
    "real_sft_overhead": training_bench.real_sft_overhead,
    "real_dpo_overhead": training_bench.real_dpo_overhead,
    "real_generation": training_bench.real_generation,
    "real_eval_memory": training_bench.real_eval_memory,
    "real_cache": training_bench.real_cache,
    "memory_plan": memory_bench.memory_plan,
    "soak": queue_bench.soak,
    "judge": judge_bench.judge_throughput,
}
RESULTS = Path(__file__).parent / "results"
MET = {True: "yes", False: "no", None: "not measurable here"}


def machine() -> dict:
    from pipeline.models import environment_summary

    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
        **environment_summary(),
    }


def to_markdown(results: dict, info: dict) -> str:
    lines = [
        f"Latest run: {info['platform']}, {info['cpu_count']} cores, device {info['device_name']}, "
        f"torch {info['torch']}, "
        f"{info['time']}",
        "",
        "| benchmark | measured | goal | met | device, when |",
        "|---|---|---|---|---|",
    ]
    for name, result in results.items():
        where = result.get("machine", info)
        ran = f"{where.get('device_name', '?')}, {where.get('time', '?')}"
        lines.append(f"| {name} | {result['summary']} | {result['goal']} | {MET[result['met']]} | {ran} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("names", nargs="*", choices=[*BENCHMARKS, []], help="Benchmarks to run (default: all).")
    parser.add_argument("--quick", action="store_true", help="Smallest sizes: keeps the benchmarks working in CI.")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    info = machine()
    results = {}
    for name in args.names or list(BENCHMARKS):
        print(f"running {name} ...", flush=True)
        results[name] = BENCHMARKS[name](quick=args.quick)
        print(f"  {results[name]['summary']} (goal {results[name]['goal']})", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = "-quick" if args.quick else ""
    path = args.out / f"results{suffix}.json"
    # benchmarks run one by one keep the others' latest numbers; each result names the machine it ran on
    merged = json.loads(path.read_text())["results"] if path.exists() else {}
    merged.update({name: {**result, "machine": info} for name, result in results.items()})
    path.write_text(json.dumps({"machine": info, "results": merged}, indent=2, default=_plain))
    (args.out / f"results{suffix}.md").write_text(to_markdown(merged, info))
    print(to_markdown(results, info))
    return 0


def _plain(value: object) -> object:
    """numpy and torch scalars (a p-value from scipy, a comparison of two of them) as the Python numbers they hold:
    a benchmark's hour of work is not lost to `TypeError: Object of type bool is not JSON serializable`."""
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"a benchmark result holds a {type(value).__name__}, which JSON cannot store")


if __name__ == "__main__":
    sys.exit(main())
