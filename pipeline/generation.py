"""Batched generation (left padding, seeded, stop markers) and the text statistics used to clean and judge it.

Used by generate_sft (SFT data from the base model), generate_negatives (`model_sample`) and evaluate, so
the three decode the same way from the same prompt tokens (`formats.encode_prompt`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pipeline.configs import FormatConfig
from pipeline.formats import encode_prompt, stop_strings

REFUSAL_PATTERNS = re.compile(
    r"\b(i('m| am) sorry|i can(no|')t (help|assist|do)|i cannot|i won't|i will not|as an ai|i'm unable|i am unable"
    r"|i must decline)\b",
    re.IGNORECASE,
)


@dataclass
class Generation:
    text: str  # decoded, special tokens removed, cut at the first stop marker
    new_tokens: int  # tokens generated up to (and including) EOS, or all when EOS never came
    eos_reached: bool
    hit_stop_marker: bool


def generate_batched(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    *,
    fmt: FormatConfig,
    max_new_tokens: int,
    do_sample: bool,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    batch_size: int = 8,
    on_batch: Any = None,
) -> list[Generation]:
    """Generate one continuation per prompt, `batch_size` at a time, left-padded; batch b samples with seed + b."""
    import torch
    from transformers import GenerationConfig

    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    device = next(model.parameters()).device
    stops = stop_strings(fmt)
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        temperature=temperature if do_sample else None,
        top_p=top_p if do_sample else None,
        top_k=None,
        eos_token_id=eos,
        pad_token_id=pad,
        stop_strings=stops or None,
    )
    results: list[Generation] = []
    was_training = model.training
    model.eval()
    for batch_index, start in enumerate(range(0, len(prompts), batch_size)):
        chunk = prompts[start : start + batch_size]
        encoded = [encode_prompt(tokenizer, p) for p in chunk]
        width = max(len(ids) for ids in encoded)
        input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        attention = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, ids in enumerate(encoded):
            input_ids[row, width - len(ids) :] = torch.tensor(ids)
            attention[row, width - len(ids) :] = 1
        torch.manual_seed(seed + batch_index)
        with torch.no_grad():
            output = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention.to(device),
                generation_config=config,
                tokenizer=tokenizer if stops else None,
            )
        for row in output[:, width:].tolist():
            kept, eos_reached = generated_part(row, eos, pad, tokenizer, stops)
            text = tokenizer.decode(kept, skip_special_tokens=True, clean_up_tokenization_spaces=False)
            cut = cut_at_markers(text, stops)
            results.append(Generation(cut, len(kept), eos_reached, cut != text))
        if on_batch is not None:
            on_batch(min(start + batch_size, len(prompts)), len(prompts))
    if was_training:
        model.train()
    return results


def generated_part(row: list[int], eos: int, pad: int, tokenizer: Any, stops: list[str]) -> tuple[list[int], bool]:
    """The tokens a sequence generated and whether it generated EOS itself.

    `generate` fills a finished sequence (at EOS, or at a stop string) with the pad token; when pad == EOS (the
    loader sets that for tokenizers without a pad token) that filling looks like EOS. An EOS that comes after the
    sequence had already produced a stop string is filling, not the model ending its answer."""
    if eos not in row:
        return row, False
    first = row.index(eos)
    if pad == eos and stops:
        before = tokenizer.decode(row[:first], skip_special_tokens=True, clean_up_tokenization_spaces=False)
        if any(marker in before for marker in stops):
            return row[:first], False
    return row[: first + 1], True


def cut_at_markers(text: str, markers: list[str]) -> str:
    """Text up to the first marker (a model starting a new `Instruction:` turn)."""
    positions = [text.find(m) for m in markers if m and m in text]
    return text[: min(positions)] if positions else text


# ----------------------------------------------------------------------------------------------- text statistics


def words(text: str) -> list[str]:
    return re.findall(r"\w+|[^\w\s]", text.lower())


def distinct_n(text: str, n: int) -> float:
    """Unique n-grams / all n-grams of the words (1.0 for text too short to have one)."""
    tokens = words(text)
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 1.0


def repeated_ngram_fraction(text: str, n: int = 3) -> float:
    """Share of word n-grams that repeat an earlier one: 0 for varied text, near 1 for loops."""
    return 1.0 - distinct_n(text, n)


def longest_run(text: str) -> int:
    """Longest run of the same word repeated back to back."""
    tokens = words(text)
    best = run = 1 if tokens else 0
    for previous, current in zip(tokens, tokens[1:], strict=False):
        run = run + 1 if current == previous else 1
        best = max(best, run)
    return best


def is_refusal(text: str) -> bool:
    return bool(REFUSAL_PATTERNS.search(text))


def template_markers(fmt: FormatConfig) -> list[str]:
    """The template's literal parts (e.g. `Instruction:` and `Response:`): they must not appear in a response."""
    return [part.strip() for part in fmt.template.split("{instruction}") if part.strip()]


def has_template_leak(text: str, fmt: FormatConfig) -> bool:
    return any(marker in text for marker in template_markers(fmt))


def text_stats(text: str, fmt: FormatConfig) -> dict[str, Any]:
    """Per-sample stats shown next to every generation."""
    return {
        "chars": len(text),
        "words": len(text.split()),
        "distinct_1": round(distinct_n(text, 1), 4),
        "distinct_2": round(distinct_n(text, 2), 4),
        "repetition": round(repeated_ngram_fraction(text), 4),
        "template_leak": has_template_leak(text, fmt),
        "refusal": is_refusal(text),
    }


# ----------------------------------------------------------------------------------------------- correctness

_ARTICLES = re.compile(r"\b(a|an|the)\b")


def answer_tokens(text: str) -> list[str]:
    """SQuAD's answer normalisation: lower case, punctuation and articles dropped, words split on spaces."""
    text = re.sub(r"[^\w\s]", " ", text.casefold())
    return _ARTICLES.sub(" ", text).split()


def correctness(generation: str, reference: str) -> dict[str, float]:
    """Exact match after normalisation, and token F1 (SQuAD), of a generation against a reference answer."""
    from collections import Counter

    predicted, gold = answer_tokens(generation), answer_tokens(reference)
    common = sum((Counter(predicted) & Counter(gold)).values())
    if common == 0:
        f1 = float(predicted == gold)  # both empty: a match
    else:
        precision, recall = common / len(predicted), common / len(gold)
        f1 = 2 * precision * recall / (precision + recall)
    return {"exact_match": float(predicted == gold), "token_f1": round(f1, 6)}
