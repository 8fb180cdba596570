"""Durations as people read them, and a stage's elapsed time and estimate of what is left. Pure Python."""

from __future__ import annotations

import statistics
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.core.prices import Prices


def human_duration(seconds: float | None) -> str:
    """'0.4 s', '5.4 s', '16 min 53 s', '2 h 03 min'; '' when there is no duration (never 'None')."""
    if seconds is None:
        return ""
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {secs} s"


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)  # SQLite hands back naive UTC datetimes


def elapsed_seconds(started_at: datetime | None, finished_at: datetime | None, now: datetime) -> float | None:
    """How long a stage ran (finished) or has been running (not yet finished); None before it started."""
    if started_at is None:
        return None
    return ((_aware(finished_at) if finished_at else _aware(now)) - _aware(started_at)).total_seconds()


def remaining_seconds(elapsed: float | None, done: int, total: int) -> float | None:
    """What is left at the rate so far (elapsed per unit of progress); None while nothing is done to judge by."""
    if elapsed is None or total <= 0 or done <= 0 or done > total:
        return None
    return elapsed * (total - done) / done


def scaled_to(spec: Any, recorded: dict[tuple[str, str], list[tuple[float, dict[str, Any]]]]) -> dict:
    """Each (node, queue)'s recorded seconds in earlier runs, scaled to `spec`'s work for that stage (recorded seconds
    per unit of work × this run's units: pipeline.core.workload); a time whose run's spec cannot be read or whose
    work is not comparable to this run's is left out."""
    from pipeline.core.configs import load_stored_spec
    from pipeline.core.errors import ConfigError
    from pipeline.core.registry import STAGES, node_by_name
    from pipeline.core.workload import work_ratio

    specs: dict[int, Any] = {}
    scaled: dict[tuple[str, str], list[float]] = {}
    for (node, queue), times in recorded.items():
        work = STAGES[node_by_name(node).stage].work
        for seconds, stored in times:
            if id(stored) not in specs:
                try:
                    specs[id(stored)] = load_stored_spec(stored)
                except ConfigError:
                    specs[id(stored)] = None
            earlier = specs[id(stored)]
            ratio = work_ratio(work, spec, earlier) if earlier is not None else None
            if ratio is not None:
                scaled.setdefault((node, queue), []).append(seconds * ratio)
    return scaled


def _recorded_basis(
    nodes: list[tuple[str, str]], recorded: dict[tuple[str, str], list[float]]
) -> tuple[dict[tuple[str, str], float] | None, str]:
    """The median recorded seconds of each (node, queue), and the basis in words ("from 1 to 3"); None and what has
    no basis when any node has never been timed on its queue."""
    missing = [f"{node} on {queue}" for node, queue in nodes if not recorded.get((node, queue))]
    if missing:
        return None, "unknown: no earlier run of this model at a comparable workload has timed " + ", ".join(missing)
    counts = [len(recorded[n]) for n in nodes]
    basis = f"from {min(counts)}" + (f" to {max(counts)}" if max(counts) != min(counts) else "")
    return {n: statistics.median(recorded[n]) for n in nodes}, basis


def estimate_run(
    nodes: list[tuple[str, str]], recorded: dict[tuple[str, str], list[float]]
) -> tuple[float | None, str]:
    """A run's duration from earlier runs: the median recorded time of each (node, queue) it will run, summed, with
    its basis in words; None and what has no basis when any node has never been timed on its queue."""
    medians, basis = _recorded_basis(nodes, recorded)
    if medians is None:
        return None, basis
    total = sum(medians.values())
    return total, (
        f"about {human_duration(total)}: the median of each stage's time in {basis} earlier runs of this model on the "
        "same queues, scaled to this run's work (instructions, new tokens, epochs), if nothing is reused"
    )


def estimate_cost(
    nodes: list[tuple[str, str]], recorded: dict[tuple[str, str], list[float]], prices: Prices
) -> tuple[float | None, str]:
    """A run's cost: each node's median recorded time on its queue at that queue's price today, summed; None and
    why when a node has no recorded time or its queue no price."""
    medians, basis = _recorded_basis(nodes, recorded)
    if medians is None:
        return None, basis
    queues = list(dict.fromkeys(queue for _, queue in nodes))
    unpriced = [queue for queue in queues if prices.price(queue) is None]
    if unpriced:
        names = ", ".join(unpriced)
        return None, f"unknown: queue {names} has no price (alignlab prices set {unpriced[0]} PRICE_PER_HOUR)"
    total = sum(prices.cost(seconds, queue) for (_, queue), seconds in medians.items())
    rates = ", ".join(f"{queue} {prices.money(prices.price(queue))}/h" for queue in queues)
    return total, f"about {prices.money(total)} at today's prices ({rates}), {basis} earlier runs"
