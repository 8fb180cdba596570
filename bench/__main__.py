"""`python -m bench [NAME ...] [--quick]`: benchmarks as side-by-side ratios, results in bench/results/."""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

from bench import queue_bench

BENCHMARKS = {
    "queue_latency": queue_bench.queue_latency,
    "recorder": queue_bench.recorder_throughput,
    "orchestration": queue_bench.orchestration,
}
RESULTS = Path(__file__).parent / "results"


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
        f"Machine: {info['platform']}, {info['cpu_count']} cores, device {info['device_name']}, torch {info['torch']}, "
        f"{info['time']}",
        "",
        "| benchmark | measured | goal | met |",
        "|---|---|---|---|",
    ]
    for name, result in results.items():
        lines.append(f"| {name} | {result['summary']} | {result['goal']} | {'yes' if result['met'] else 'no'} |")
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
    (args.out / f"results{suffix}.json").write_text(json.dumps({"machine": info, "results": results}, indent=2))
    (args.out / f"results{suffix}.md").write_text(to_markdown(results, info))
    print(to_markdown(results, info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
