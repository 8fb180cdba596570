"""generate_negatives: typed negative responses for each SFT record, from one registry of types.

Each type is one function `(record, context) -> rejected text or None` (None = not applicable to this
record). Per prompt, `NegativesConfig.per_prompt` applicable types are drawn by weight without replacement.
Output rows are `{prompt, chosen, rejected, negative_type}`, validated against the registry.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.artifacts import write_jsonl
from pipeline.core.configs import NEGATIVE_TYPES, FormatConfig, RunSpec
from pipeline.core.errors import DataError
from pipeline.core.registry import stage_of_module
from pipeline.formats import completion_text
from pipeline.generation import generator
from pipeline.models import loaded
from pipeline.stages import PREVIEW_ROWS, Progress, ProgressFn, StageResult
from pipeline.stages.generate_sft import OUTPUT as SFT_RECORDS
from pipeline.stages.generate_sft import clean_response
from pipeline.validation import load_and_validate_sft, normalize_text, validate_negative_examples

STAGE = stage_of_module(__name__)
OUTPUT = "negatives.jsonl"

REFUSALS = (
    "I'm sorry, but I can't help with that.",
    "I cannot assist with this request.",
    "As an AI, I am unable to answer that.",
    "I won't be able to help with this one.",
)
NUMBER_WORDS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "ten": 10}


@dataclass
class NegativeContext:
    rng: random.Random
    records: list[dict[str, Any]]
    index: int
    fmt: FormatConfig
    model_samples: dict[int, str] = field(default_factory=dict)


NegativeFn = Callable[[dict[str, Any], NegativeContext], str | None]
REGISTRY: dict[str, NegativeFn] = {}


def negative_type(name: str) -> Callable[[NegativeFn], NegativeFn]:
    def register(fn: NegativeFn) -> NegativeFn:
        REGISTRY[name] = fn
        return fn

    return register


def record_split(record: dict[str, Any]) -> str:
    """The split of an SFT record's prompt (made by split_prompts before any training)."""
    split = (record.get("meta") or {}).get("split")
    if split not in ("train", "heldout"):
        raise DataError(
            f"SFT record for {record['prompt'][:60]!r}: meta.split is {split!r}; records come from generate_sft, "
            "which takes each prompt's split from split_prompts"
        )
    return split


def _instruction(record: dict[str, Any]) -> str:
    return (record.get("meta") or {}).get("instruction") or record["prompt"]


@negative_type("model_sample")
def model_sample(record: dict[str, Any], ctx: NegativeContext) -> str | None:
    """A high-temperature sample of the base model for the same prompt: fluent-looking but unreliable."""
    return ctx.model_samples.get(ctx.index)


@negative_type("truncated")
def truncated(record: dict[str, Any], ctx: NegativeContext) -> str | None:
    """The chosen response cut off between a third and two thirds of its words, without an ending."""
    words = record["completion"].split()
    if len(words) < 4:
        return None
    cut = ctx.rng.randint(max(1, len(words) // 3), max(1, 2 * len(words) // 3))
    return " ".join(words[:cut]).rstrip(".!?,;:")


@negative_type("off_topic")
def off_topic(record: dict[str, Any], ctx: NegativeContext) -> str | None:
    """The response written for another prompt of the run."""
    mine = normalize_text(record["completion"])
    split = record_split(record)  # never borrow an answer across the split: a held-out answer stays held out
    others = [
        i
        for i, r in enumerate(ctx.records)
        if i != ctx.index and record_split(r) == split and normalize_text(r["completion"]) != mine
    ]
    if not others:
        return None
    return ctx.records[ctx.rng.choice(others)]["completion"].strip()


@negative_type("repetitive")
def repetitive(record: dict[str, Any], ctx: NegativeContext) -> str | None:
    """The opening words of the chosen response looped, as a degenerate model does."""
    words = record["completion"].split()
    if not words:
        return None
    phrase = " ".join(words[: min(4, len(words))]).rstrip(".!?")
    return " ".join([phrase] * 5)


@negative_type("refusal")
def refusal(record: dict[str, Any], ctx: NegativeContext) -> str | None:
    """An unwarranted refusal of a harmless instruction."""
    return ctx.rng.choice(REFUSALS)


@negative_type("constraint_violation")
def constraint_violation(record: dict[str, Any], ctx: NegativeContext) -> str | None:
    """A response that breaks a length or format the instruction asks for; None when it asks for none."""
    instruction = _instruction(record)
    chosen = record["completion"].strip()
    lowered = instruction.lower()
    at_most = re.search(r"at most (\w+) words", lowered)
    if at_most:
        limit = NUMBER_WORDS.get(at_most.group(1)) or (int(at_most.group(1)) if at_most.group(1).isdigit() else 5)
        filler = " It is worth describing in much more detail, with many further words than were asked for."
        text = chosen
        while len(text.split()) <= limit + 8:
            text += filler
        return text
    if "single word" in lowered or "one word" in lowered:
        return f"The answer to this question is {chosen.rstrip('.').lower()}, as most people would agree."
    if "capital letters" in lowered:
        return chosen.lower() if chosen.lower() != chosen else None
    if "one sentence" in lowered:
        return f"{chosen} It has many uses. People talk about it often. There is much more to say."
    if re.search(r"\blist (three|two|four|five)\b", lowered):
        first = re.split(r"[:,]| and ", chosen)
        items = [part.strip(" .") for part in first if part.strip(" .")]
        return f"Just one: {items[-1]}." if items else None
    if "yes or no" in lowered:
        return "It depends on many things, and it is hard to say in general."
    if "past tense" in lowered and ":" in instruction:
        original = instruction.split(":", 1)[1].strip()
        return original if normalize_text(original) != normalize_text(chosen) else None
    return None


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
    load_info = None
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
                text, _ = clean_response(output.text, _instruction(record), spec.format, spec.generation)
                if text and normalize_text(text) != normalize_text(record["completion"]):
                    samples[index] = text
            load_info = m.info.to_dict()

    weights = config.normalized_weights()
    rng = random.Random(config.seed)
    rows: list[dict[str, Any]] = []
    not_applicable = {t: 0 for t in config.types}
    for index, record in enumerate(records):
        ctx = NegativeContext(rng, records, index, spec.format, samples)
        candidates = {}
        for name in config.types:
            text = REGISTRY[name](record, ctx)
            if text is None or not text.strip() or normalize_text(text) == normalize_text(record["completion"]):
                not_applicable[name] += 1
                continue
            candidates[name] = completion_text(text.strip(), spec.format)
        for name in _weighted_choice(rng, candidates, weights, config.per_prompt):
            rows.append(
                {
                    "prompt": record["prompt"],
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
        load_info=load_info,
        seconds=progress.elapsed(),
    )


assert set(REGISTRY) == set(NEGATIVE_TYPES), "every configurable negative type needs a registered function"
