"""make_pairs: dedupe typed negatives, balance types to the configured weights, write train / held-out pairs.

The split is not made here: each pair keeps its prompt's split, chosen by split_prompts before anything trained,
so no prompt is ever in both files. `validate_preference_pairs` (chosen ≠ rejected, duplicates, leakage) gates
the written files.
"""

from __future__ import annotations

import math
import random
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from pipeline.artifacts import write_jsonl
from pipeline.core.configs import RunSpec
from pipeline.core.errors import DataError
from pipeline.core.negative_types import REGISTRY
from pipeline.core.registry import stage_of_module
from pipeline.core.text import normalize_text
from pipeline.stages import PREVIEW_ROWS, Progress, ProgressFn, StageResult
from pipeline.stages.negatives import OUTPUT as NEGATIVES
from pipeline.stages.split import contaminated_heldout_pairs
from pipeline.validation import WARNING, load_and_validate_negatives, validate_preference_pairs

STAGE = stage_of_module(__name__)
TRAIN, HELDOUT = "train.jsonl", "heldout.jsonl"


KEPT = ("prompt", "instruction", "chosen", "rejected", "negative_type", "split", "reference")


def dedupe(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Drop repeats of (prompt, chosen, rejected) up to case and whitespace, and chosen == rejected."""
    seen, kept = set(), []
    for row in rows:
        key = (normalize_text(row["prompt"]), normalize_text(row["chosen"]), normalize_text(row["rejected"]))
        if key in seen or key[1] == key[2]:
            continue
        seen.add(key)
        kept.append(row)
    return kept


def balance(rows: list[dict[str, Any]], weights: dict[str, float], rng: random.Random) -> list[dict[str, Any]]:
    """Subsample over-represented types towards `weights`.

    The per-unit-weight level is the median of (available / weight) over the types: a type scarcer than that
    keeps every row it has (the mix then deviates for it, which validation reports as `type_mix_off`), and
    an abundant type is cut to level × weight. Balancing to the single scarcest type would throw most data away.
    """
    by_type: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_type[row["negative_type"]].append(row)
    active = {t: w for t, w in weights.items() if w > 0 and by_type.get(t)}
    if not active:
        return rows
    level = statistics.median(len(by_type[t]) / w for t, w in active.items())
    kept = []
    for negative_type, weight in active.items():
        pool = by_type[negative_type][:]
        rng.shuffle(pool)
        kept.extend(pool[: max(1, math.floor(level * weight))])
    return kept


def run(spec: RunSpec, inputs: dict[str, Path], out_dir: Path, on_progress: ProgressFn | None = None) -> StageResult:
    progress = Progress(STAGE, on_progress)
    config = spec.pairs
    weights = spec.negatives.normalized_weights()
    negatives, negatives_report = load_and_validate_negatives(
        inputs["negatives"] / NEGATIVES, spec.validation, tuple(REGISTRY), weights
    )
    progress.emit("validation", report=negatives_report.to_dict())
    rng = random.Random(config.seed)
    rows = dedupe([{k: r[k] for k in KEPT if k in r} for r in negatives])
    duplicates = len(negatives) - len(rows)
    if config.balance_types:
        rows = balance(rows, weights, rng)
    per_prompt: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        per_prompt[normalize_text(row["prompt"])].append(row)
    rows = [row for group in per_prompt.values() for row in group[: config.max_pairs_per_prompt]]
    train = [r for r in rows if r["split"] == "train"]
    heldout = [r for r in rows if r["split"] == "heldout"]
    # a held-out pair with a text that is also a training text (the same model sample or fixed reply) is not held out
    leaked = contaminated_heldout_pairs(train, heldout, spec, str(out_dir))
    dropped = [(heldout[i]["prompt"], why) for i, why in sorted(leaked.items())]
    heldout = [r for i, r in enumerate(heldout) if i not in leaked]
    write_jsonl(out_dir / TRAIN, train)
    write_jsonl(out_dir / HELDOUT, heldout)
    _, report = validate_preference_pairs(
        [(i + 1, r) for i, r in enumerate(train)],
        [(i + 1, r) for i, r in enumerate(heldout)],
        spec.validation,
        tuple(REGISTRY),
        weights,
        source=str(out_dir / TRAIN),
        heldout_source=str(out_dir / HELDOUT),
    )
    report.stats["deduplicated"] = duplicates
    report.stats["heldout_dropped_as_contaminated"] = len(dropped)
    for prompt, why in dropped:
        message = f"held-out pair for {prompt[:60]!r} dropped: {why}"
        report.add(None, "rejected", "heldout_same_as_training", message, WARNING, file=str(out_dir / HELDOUT))
    progress.emit("validation", report=report.to_dict())
    if not train:
        raise DataError(f"make_pairs: no training pairs left from {inputs['negatives'] / NEGATIVES}", report=report)
    if not heldout:
        raise DataError(
            "make_pairs: no held-out pair: the held-out prompts' SFT records or negatives were all dropped; see the "
            "generate_sft and generate_negatives reports, or raise SplitConfig.heldout_fraction"
        )
    report.raise_if_failed()
    return StageResult(
        stage=STAGE,
        outputs={"train": TRAIN, "heldout": HELDOUT},
        metrics={
            "train_pairs": len(train),
            "heldout_pairs": len(heldout),
            "train_prompts": report.stats["train_prompts"],
            "heldout_prompts": report.stats["heldout_prompts"],
            "deduplicated": duplicates,
            "heldout_dropped_as_contaminated": len(dropped),
            "by_type": report.stats.get("negative_types", {}),
        },
        reports=[negatives_report.to_dict(), report.to_dict()],
        previews={"train_pairs": train[:PREVIEW_ROWS], "heldout_pairs": heldout[:PREVIEW_ROWS]},
        seconds=progress.elapsed(),
    )
