"""The negative-type registry: each type of rejected response declared once, as one function.

A type is `(record, context) -> rejected text or None` (None: not applicable to this record), registered with
`@negative_type(name)`. The config's choices, the validation of negatives and pairs, and generate_negatives all
read `REGISTRY`; adding a type is one decorated function. `model_sample` is the one type that needs a model: the
stage generates those samples and hands them in through the context. Pure Python (the dashboard imports it).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pipeline.core.errors import DataError
from pipeline.core.text import normalize_text

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
    model_samples: dict[int, str] = field(default_factory=dict)  # model_sample's texts, by record index


NegativeFn = Callable[[dict[str, Any], NegativeContext], str | None]
REGISTRY: dict[str, NegativeFn] = {}
OPT_IN: set[str] = set()  # types a run must name in NegativesConfig.types (a planted effect, not a default negative)
NO_NEW_CONTENT: set[str] = set()  # types whose text adds nothing of a prompt beyond its chosen answer


def negative_type(name: str, *, default: bool = True, adds_content: bool = True) -> Callable[[NegativeFn], NegativeFn]:
    """Register a type. `default=False`: only runs that name it use it. `adds_content=False`: its text carries no
    held-out content of its own (a fixed refusal; the chosen answer plus fixed filler), so the decontamination check
    does not read it as a held-out text."""

    def register(fn: NegativeFn) -> NegativeFn:
        REGISTRY[name] = fn
        if not default:
            OPT_IN.add(name)
        if not adds_content:
            NO_NEW_CONTENT.add(name)
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


def instruction_of(record: dict[str, Any]) -> str:
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


@negative_type("refusal", adds_content=False)
def refusal(record: dict[str, Any], ctx: NegativeContext) -> str | None:
    """An unwarranted refusal of a harmless instruction."""
    return ctx.rng.choice(REFUSALS)


@negative_type("constraint_violation")
def constraint_violation(record: dict[str, Any], ctx: NegativeContext) -> str | None:
    """A response that breaks a length or format the instruction asks for; None when it asks for none."""
    instruction = instruction_of(record)
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


FILLER = (
    "I hope this helps, and please let me know if you have any other questions about this topic at all.",
    "This is a very interesting question, and there is a great deal more that could be said about it here.",
    "To put it another way, and to be completely clear about everything that was asked, that is the answer.",
)


@negative_type("padded", default=False, adds_content=False)
def padded(record: dict[str, Any], ctx: NegativeContext) -> str | None:
    """The chosen answer followed by two sentences of filler: the same content, longer. A planted preference for
    concise answers (the positive control): DPO on these pairs must make a model's answers shorter."""
    first, second = ctx.rng.sample(FILLER, 2)
    return f"{record['completion'].strip()} {first} {second}"


SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")  # "e.g. 2" does not end one


@negative_type("first_sentence", default=False, adds_content=False)
def first_sentence(record: dict[str, Any], ctx: NegativeContext) -> str | None:
    """The chosen answer's first sentence alone, where it has more than one: a stop the model itself could make
    (its own answer's opening, then the end of the turn). A planted preference for fuller answers that a real model
    can act on: DPO on these pairs must make its answers longer. (`padded`'s filler is text a real model never
    writes, so avoiding it need not change where the model stops.)"""
    parts = SENTENCE_END.split(record["completion"].strip(), maxsplit=1)
    return parts[0] if len(parts) == 2 else None


def names() -> tuple[str, ...]:
    return tuple(REGISTRY)


def default_names() -> tuple[str, ...]:
    return tuple(n for n in REGISTRY if n not in OPT_IN)
