"""What a stage's time grows with, read from the spec alone, so that Launch can scale an earlier run's recorded
time to this run's work: a stage declares `Stage.work(spec, instructions)` in the registry (instructions = the
run's instruction count, None where it is "all of the source"); a stage that declares none is a fixed cost.

Earlier runs of the same model give each stage a throughput (recorded seconds per unit of its work); the forecast
is that throughput times this run's work. Pure Python: the dashboard imports it."""

from __future__ import annotations

from typing import Any


def times(*factors: float | None) -> float | None:
    """The product, or None when a factor is unknown."""
    product = 1.0
    for factor in factors:
        if factor is None:
            return None
        product *= factor
    return product


def trained_examples(config: Any, items: float | None) -> float | None:
    """Examples a training section passes through: max_steps × global batch × accumulation when max_steps is set,
    else the items (records; pairs for DPO) × epochs."""
    if config.max_steps > 0:
        return float(config.max_steps * config.batch_size * config.grad_accumulation)
    return times(items, config.num_epochs)


def heldout_prompts(spec: Any, instructions: float | None) -> float | None:
    return float(spec.eval.max_prompts) if spec.eval.max_prompts else times(instructions, spec.split.heldout_fraction)


def work_ratio(work: Any, this: Any, earlier: Any) -> float | None:
    """How many times an earlier run's work this run's is, for a stage whose work is `work` (None: a fixed cost, 1).

    An instruction count of "all of the source" is known only as the source's: it cancels between two runs that take
    all of the same source, and leaves the ratio unknown (None) against any other."""
    if work is None:
        return 1.0
    counts = [spec.data.max_instructions or None for spec in (this, earlier)]
    now, then = work(this, counts[0]), work(earlier, counts[1])
    if now is not None and then is not None:
        return now / then if then else None
    if counts == [None, None] and this.data.instructions == earlier.data.instructions:
        now, then = work(this, 1.0), work(earlier, 1.0)  # the same whole source: its count cancels
        return now / then if now is not None and then else None
    return None
