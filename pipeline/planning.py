"""The power plan of a run before anything is queued: how many held-out prompts it will evaluate (read off its
data and split settings, as the split stage will), and what that can detect on the primary metric
(`pipeline.core.power`), from a pilot when one is given."""

from __future__ import annotations

from typing import Any

from pipeline.core.configs import RunSpec
from pipeline.core.errors import AlignlabError
from pipeline.core.power import PowerPlan, plan
from pipeline.paths import BLOB_PREFIX


def planned_heldout_prompts(spec: RunSpec) -> int | None:
    """The held-out prompts the run will evaluate, or None where only the worker can read the data (a Hugging Face
    dataset id, an uploaded blob)."""
    from pipeline.sources import SHIPPED, instruction_rows
    from pipeline.stages.split import HELDOUT, assign
    from pipeline.validation import Noted, template_separators, validate_instructions

    source = spec.data.instructions
    if source.startswith(BLOB_PREFIX):
        return None
    try:
        rows, where = instruction_rows(source, spec.data.split) if source in SHIPPED or _local(source) else (None, "")
    except AlignlabError:
        return None
    if rows is None:
        return None
    rows = list(rows)
    records = {row: (record.record if isinstance(record, Noted) else record) for row, record in rows}
    instructions, _ = validate_instructions(
        rows, spec.data.instruction_field, spec.validation, where, template_separators(spec.format)
    )
    if spec.data.max_instructions:
        instructions = instructions[: spec.data.max_instructions]
    if not instructions:
        return 0
    split, _ = assign(instructions, records, spec, where)
    heldout = sum(1 for value in split.values() if value == HELDOUT)
    return min(heldout, spec.eval.max_prompts) if spec.eval.max_prompts else heldout


def _local(source: str) -> bool:
    from pathlib import Path

    return Path(source).expanduser().is_file()


def power_plan(spec: RunSpec, pilot: list[float] | None = None, pilot_source: str = "") -> PowerPlan | None:
    """The run's plan on its primary metric; None when its held-out size cannot be known before the worker reads
    the data."""
    n = planned_heldout_prompts(spec)
    if n is None:
        return None
    config = spec.compare
    return plan(config.primary_metric, n, config.confidence, config.target_difference, pilot, pilot_source)


def plan_summary(plan_: PowerPlan | None, spec: RunSpec) -> dict[str, Any]:
    if plan_ is None:
        return {"text": f"no power plan: the held-out size of {spec.data.instructions!r} is known only to the worker"}
    return plan_.to_dict()
