"""generate_negatives: typed negative responses for each SFT record, from the registry of types
(`pipeline.core.negative_types`).

Per prompt, `NegativesConfig.per_prompt` applicable types are drawn by weight without replacement. Output rows are
`{prompt, chosen, rejected, negative_type}`, validated against the registry.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from pipeline.artifacts import write_jsonl
from pipeline.core.configs import RunSpec
from pipeline.core.errors import DataError
from pipeline.core.negative_types import REGISTRY, NegativeContext, instruction_of, record_split
from pipeline.core.registry import stage_of_module
from pipeline.core.text import normalize_text
from pipeline.formats import shaped_like
from pipeline.generation import generator
from pipeline.models import loaded
from pipeline.stages import PREVIEW_ROWS, Progress, ProgressFn, StageResult
from pipeline.stages.generate_sft import OUTPUT as SFT_RECORDS
from pipeline.stages.generate_sft import clean_response
from pipeline.validation import load_and_validate_sft, validate_negative_examples

STAGE = stage_of_module(__name__)
OUTPUT = "negatives.jsonl"


def _weighted_choice(rng: random.Random, candidates: dict[str, str], weights: dict[str, float], k: int) -> list[str]:
    """k types drawn by weight without replacement (Efraimidis–Spirakis keys)."""
    keyed = [(rng.random() ** (1.0 / weights[t]), t) for t in sorted(candidates) if weights.get(t, 0) > 0]
    return [t for _, t in sorted(keyed, reverse=True)[:k]]


def run(spec: RunSpec, inputs: dict[str, Path], out_dir: Path, on_progress: ProgressFn | None = None) -> StageResult:
    progress = Progress(STAGE, on_progress)
    config = spec.negatives
    records, sft_report = load_and_validate_sft(inputs["sft"] / SFT_RECORDS, spec.validation)
    progress.emit("validation", report=sft_report.to_dict())
    samples: dict[int, str] = {}
    info = None
    if "model_sample" in config.types:
        with loaded(spec.base_model) as m:
            outputs = generator(m, spec.format).generate(
                [r["prompt"] for r in records],
                config.sampling,
                seed=config.seed,
                batch_size=spec.generation.batch_size,
                on_batch=lambda done, total: progress.progress(done, total, "model samples"),
            )
            for index, (record, output) in enumerate(zip(records, outputs, strict=True)):
                text, _ = clean_response(output.text, instruction_of(record), spec.format, spec.generation)
                if text and normalize_text(text) != normalize_text(record["completion"]):
                    samples[index] = text
            info = m.info  # read once the block has ended: its peak memory and release are filled in on exit

    weights = config.normalized_weights()
    rng = random.Random(config.seed)
    rows: list[dict[str, Any]] = []
    not_applicable = {t: 0 for t in config.types}
    for index, record in enumerate(records):
        ctx = NegativeContext(rng, records, index, samples)
        candidates = {}
        for name in config.types:
            text = REGISTRY[name](record, ctx)
            if text is None or not text.strip() or normalize_text(text) == normalize_text(record["completion"]):
                not_applicable[name] += 1
                continue
            candidates[name] = shaped_like(text, record["completion"])
        for name in _weighted_choice(rng, candidates, weights, config.per_prompt):
            rows.append(
                {
                    "prompt": record["prompt"],
                    "instruction": instruction_of(record),  # the prompt's content, without the template around it
                    "chosen": record["completion"],
                    "rejected": candidates[name],
                    "negative_type": name,
                    "split": record_split(record),
                    **({"reference": ref} if (ref := (record.get("meta") or {}).get("reference")) else {}),
                }
            )
        progress.progress(index + 1, len(records), "negatives")
    write_jsonl(out_dir / OUTPUT, rows)
    valid, report = validate_negative_examples(
        [(i + 1, r) for i, r in enumerate(rows)],
        spec.validation,
        tuple(REGISTRY),
        weights,
        source=str(out_dir / OUTPUT),
    )
    report.stats["not_applicable"] = not_applicable
    progress.emit("validation", report=report.to_dict())
    if not rows:
        raise DataError(f"generate_negatives: no negative could be made for the {len(records)} records", report=report)
    report.raise_if_failed()
    return StageResult(
        stage=STAGE,
        outputs={"negatives": OUTPUT},
        metrics={"negatives": len(rows), "by_type": report.stats["negative_types"], "model_samples": len(samples)},
        reports=[sft_report.to_dict(), report.to_dict()],
        previews={"negatives": rows[:PREVIEW_ROWS]},
        load_info=info.to_dict() if info is not None else None,
        seconds=progress.elapsed(),
    )
