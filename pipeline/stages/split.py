"""split_prompts: the held-out prompts, chosen first — before any stage generates training data or trains — and
recorded as an artifact of their own.

Instructions are read and validated once, here. A row's split comes from the data's own split field when every
row has one (datasets often ship a test split), otherwise from a seeded shuffle of the distinct instructions
(`SplitConfig.heldout_fraction`). Every later stage reads the split from this artifact: SFT and DPO train on
training prompts only, negatives never borrow a held-out text, and evaluation scores held-out prompts only.
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

from pipeline.artifacts import write_jsonl
from pipeline.core.configs import RunSpec
from pipeline.core.conversations import as_prompt
from pipeline.core.errors import DataError
from pipeline.core.negative_types import NO_NEW_CONTENT  # their text is a fixed sentence, or chosen + filler
from pipeline.core.registry import stage_of_module
from pipeline.core.text import normalize_text
from pipeline.sources import instruction_rows
from pipeline.stages import Progress, ProgressFn, StageResult, read_jsonl, write_json
from pipeline.validation import Noted, template_separators, validate_instructions

STAGE = stage_of_module(__name__)
OUTPUT = "instructions.jsonl"  # {row, instruction, split, reference?, messages?}
SPLIT = "split.json"  # how the split was made and the held-out instructions
TRAIN, HELDOUT = "train", "heldout"


def read_split(artifact: Path) -> list[dict[str, Any]]:
    """The rows of a split artifact: {row, instruction, split, reference?}."""
    return read_jsonl(artifact / OUTPUT)


def assign(
    instructions: list[tuple[int, str]], records: dict[int, Any], spec: RunSpec, source: str
) -> tuple[dict[int, str], str]:
    """Row -> train / heldout, and how it was decided."""
    field = spec.split.split_field
    given = {row: (records.get(row) or {}).get(field) if field else None for row, _ in instructions}
    if field and any(value is not None for value in given.values()):
        bad = [row for row, value in given.items() if value not in (TRAIN, HELDOUT)]
        if bad:
            raise DataError(
                f"{source}: rows {', '.join(map(str, bad[:10]))} have no valid field {field!r} "
                f"({TRAIN!r} or {HELDOUT!r}) while other rows have one; give every row its split, or set "
                "SplitConfig.split_field to '' to split by heldout_fraction"
            )
        if HELDOUT not in given.values() or TRAIN not in given.values():
            raise DataError(f"{source}: field {field!r} puts every row in one split; both splits need prompts")
        return dict(given), f"the data's field {field!r}"
    distinct = sorted({normalize_text(text) for _, text in instructions})
    if len(distinct) < 2:
        raise DataError(f"{source}: {len(distinct)} distinct instruction(s); a split needs at least two")
    random.Random(spec.split.seed).shuffle(distinct)
    n_heldout = min(max(1, math.ceil(len(distinct) * spec.split.heldout_fraction)), len(distinct) - 1)
    heldout = set(distinct[:n_heldout])
    rule = f"a seeded shuffle (seed {spec.split.seed}) holding out {spec.split.heldout_fraction:.0%} of prompts"
    return {row: HELDOUT if normalize_text(text) in heldout else TRAIN for row, text in instructions}, rule


def run(spec: RunSpec, inputs: dict[str, Path], out_dir: Path, on_progress: ProgressFn | None = None) -> StageResult:
    progress = Progress(STAGE, on_progress)
    rows, source = instruction_rows(spec.data.instructions, spec.data.split)
    rows = list(rows)
    records = {row: (record.record if isinstance(record, Noted) else record) for row, record in rows}
    instructions, report = validate_instructions(
        rows, spec.data.instruction_field, spec.validation, source, template_separators(spec.format)
    )
    progress.emit("validation", report=report.to_dict())
    report.raise_if_failed()
    if spec.data.max_instructions:
        instructions = instructions[: spec.data.max_instructions]
    split, rule = assign(instructions, records, spec, source)
    reference_field = spec.split.reference_field
    out = []
    for row, text in instructions:
        record = records.get(row) or {}
        reference = record.get(reference_field) if reference_field else None
        item = {"row": row, "instruction": text, "split": split[row]}
        _, conversation, _ = as_prompt(record)  # validated above
        if conversation is not None:
            item["messages"] = conversation.turns  # the prompt as turns: rendered by the model's chat template
            reference = reference if isinstance(reference, str) else conversation.reference
        if isinstance(reference, str) and reference.strip():
            item["reference"] = reference.strip()
        if isinstance(record.get("check"), dict):  # validated above: the checker that grades an answer to it
            item["check"] = record["check"]
        out.append(item)
    write_jsonl(out_dir / OUTPUT, out)
    heldout = [r["instruction"] for r in out if r["split"] == HELDOUT]
    summary = {
        "source": source,
        "rule": rule,
        "train": len(out) - len(heldout),
        "heldout": len(heldout),
        "with_reference": sum("reference" in r for r in out),
        "with_check": sum("check" in r for r in out),
        "heldout_instructions": heldout,
    }
    write_json(out_dir / SPLIT, summary)
    progress.log(f"{summary['train']} training and {summary['heldout']} held-out prompts, split by {rule}")
    return StageResult(
        stage=STAGE,
        outputs={"instructions": OUTPUT, "split": SPLIT},
        metrics={k: summary[k] for k in ("train", "heldout", "with_reference", "with_check", "rule")},
        reports=[report.to_dict()],
        previews={"split": [{k: v for k, v in summary.items() if k != "heldout_instructions"}]},
        seconds=progress.elapsed(),
    )


def _sft_texts(records: list[dict[str, Any]], source: str) -> tuple[list, list, list[int]]:
    """(held-out texts, training texts, the record index of each held-out text) of SFT records."""
    heldout, training, owners = [], [], []
    for row, record in enumerate(records, start=1):
        meta = record.get("meta") or {}
        texts = [("instruction", meta.get("instruction") or record["prompt"]), ("completion", record["completion"])]
        if meta.get("split") == HELDOUT:
            texts.append(("reference", meta.get("reference")))
            kept = [(f"{source}:{row}", name, text) for name, text in texts if text]
            heldout += kept
            owners += [row - 1] * len(kept)
        else:
            training += [(f"{source}:{row}", name, text) for name, text in texts if text]
    return heldout, training, owners


def sft_decontamination(records: list[dict[str, Any]], spec: RunSpec, source: str) -> Any:
    """The held-out prompts' instructions, answers and reference answers against what train_sft trains on."""
    from pipeline.validation import check_decontamination

    heldout, training, _ = _sft_texts(records, source)
    return check_decontamination(heldout, training, spec.split, source)


# texts a stage generated (not the user's data): a held-out one that is also a training text is dropped where it is
# made; an overlap in the data itself (instructions, references) is the user's to fix, and fails the training stage
GENERATED_FIELDS = ("completion", "chosen", "rejected")


def _generated_overlaps(report: Any, owners: list[int]) -> dict[int, str]:
    return {
        owners[issue.row - 1]: issue.message
        for issue in report.errors
        if issue.row is not None and issue.field in GENERATED_FIELDS
    }


def contaminated_heldout(records: list[dict[str, Any]], spec: RunSpec, source: str) -> dict[int, str]:
    """The held-out SFT records whose generated answer the decontamination check flags (record index -> why): a base
    model can write the same answer for a held-out and a training prompt, and that answer is then not held out."""
    from pipeline.validation import check_decontamination

    heldout, training, owners = _sft_texts(records, source)
    return _generated_overlaps(check_decontamination(heldout, training, spec.split, source), owners)


def _pair_text(pair: dict[str, Any], field_name: str) -> str | None:
    """A pair's text as the check compares it: a prompt by its content (its instruction), since the template around
    it (a chat template's system turn) is the same for every prompt and would make every held-out prompt look like
    a training one."""
    if field_name == "prompt":
        return pair.get("instruction") or pair.get("prompt")
    return pair.get(field_name)


def _held_pair_texts(heldout: list[dict[str, Any]], source: str) -> list[tuple[int, tuple[str, str, str]]]:
    """(pair index, (where, field, text)) of each held-out pair's texts that must not be a training text."""
    fields = ("prompt", "chosen", "rejected", "reference")
    return [
        (i, (f"{source}/heldout:{i + 1}", f, _pair_text(r, f)))
        for i, r in enumerate(heldout)
        for f in fields
        if _pair_text(r, f) and not (f == "rejected" and r.get("negative_type") in NO_NEW_CONTENT)
    ]


def _training_pair_texts(train: list[dict[str, Any]], source: str) -> list[tuple[str, str, str]]:
    fields = ("prompt", "chosen", "rejected")
    return [(f"{source}/train:{i}", f, _pair_text(r, f)) for i, r in enumerate(train, start=1) for f in fields]


def contaminated_heldout_pairs(
    train: list[dict[str, Any]], heldout: list[dict[str, Any]], spec: RunSpec, source: str
) -> dict[int, str]:
    """The held-out pairs whose generated texts the decontamination check flags (pair index -> why): e.g. a negative
    that is the same text for a held-out and a training prompt (a model sample, a fixed constraint-violating reply)."""
    from pipeline.validation import check_decontamination

    held = _held_pair_texts(heldout, source)
    report = check_decontamination([text for _, text in held], _training_pair_texts(train, source), spec.split, source)
    return _generated_overlaps(report, [index for index, _ in held])


def pairs_decontamination(train: list[dict[str, Any]], heldout: list[dict[str, Any]], spec: RunSpec, source: str):
    """Held-out pairs (prompt, chosen, rejected, reference) against the training pairs, rejected texts included:
    a held-out answer must not come back as another prompt's negative."""
    from pipeline.validation import check_decontamination

    training = _training_pair_texts(train, source)
    held = [text for _, text in _held_pair_texts(heldout, source)]
    unique = list({(f, " ".join(t.split()).casefold()): (w, f, t) for w, f, t in held}.values())
    return check_decontamination(unique, training, spec.split, source)
