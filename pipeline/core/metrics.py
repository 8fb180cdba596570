"""The metric registry: each evaluation metric declared once.

A `Metric` says how one value is computed (from an evaluated sample, or from a scored preference pair), whether
higher is better, when a single sample is flagged for review, and its label and unit. `evaluate` computes every
sample metric into each sample's stats, `compare` pairs methods on every compared metric, the read models flag
samples and the pages label columns, all by iterating over `METRICS`. Adding a metric is one `register(Metric(...))`.
Pure Python: the dashboard imports it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pipeline.core import text
from pipeline.core.checkers import check_answer
from pipeline.core.errors import ConfigError


@dataclass(frozen=True)
class EvaluatedSample:
    """What a sample metric may look at: one model's generation for one held-out prompt."""

    text: str  # the generation, cut at the first stop marker
    new_tokens: int
    eos_reached: bool
    reference: str  # the SFT completion the prompt's pairs chose
    answer: str | None  # a reference answer from the data, when it has one
    reference_nll: float  # mean NLL of `reference` under the model
    template: str  # the prompt template
    check: dict[str, Any] | None = None  # the data's checker of this prompt's answer (pipeline.core.checkers)


@dataclass(frozen=True)
class Metric:
    name: str
    label: str
    unit: str  # "share", "tokens", "nats", "log-prob", "chars"
    per: Literal["sample", "pair", "corpus"]
    # EvaluatedSample -> value; a scored pair row -> value; or, per corpus, the method's normalised texts -> value
    compute: Callable[[Any], float | None]
    higher_is_better: bool | None  # None: neither (e.g. length), reported without a direction
    help: str = ""
    flag: str = ""  # a sample is flagged "<flag>" for review when `flagged(value, sample stats)` holds
    flagged: Callable[[float, dict[str, Any]], bool] | None = None
    compared: bool = True  # compare pairs methods on it (False: shown beside each sample only)


METRICS: dict[str, Metric] = {}


def register(metric: Metric) -> Metric:
    if metric.name in METRICS:
        raise ConfigError(f"metric {metric.name!r} is declared twice")
    METRICS[metric.name] = metric
    return metric


def unregister(name: str) -> None:
    METRICS.pop(name, None)


def sample_metrics() -> list[Metric]:
    return [m for m in METRICS.values() if m.per == "sample"]


def pair_metrics() -> list[Metric]:
    return [m for m in METRICS.values() if m.per == "pair"]


def corpus_metrics() -> list[Metric]:
    return [m for m in METRICS.values() if m.per == "corpus"]


def compared_metrics() -> tuple[str, ...]:
    return tuple(m.name for m in METRICS.values() if m.compared)


def sample_stats(sample: EvaluatedSample) -> dict[str, Any]:
    """Every sample metric of one generation (the stats stored and shown beside it)."""
    return {m.name: m.compute(sample) for m in sample_metrics()}


def sample_flags(stats: dict[str, Any]) -> list[str]:
    """What a reviewer should look at in one generation, from its stored stats."""
    flags = []
    for m in sample_metrics():
        value = stats.get(m.name)
        if m.flagged is not None and value is not None and m.flagged(value, stats):
            flags.append(m.flag)
    return flags


def label(name: str) -> str:
    metric = METRICS.get(name)
    return f"{metric.label} ({metric.unit})" if metric else name


REPETITION_FLAG = 0.5  # share of repeated 3-grams from which a generation is flagged
LENGTH_BLOWUP = 3.0  # a generation longer than 3x its reference (+40 chars) is flagged


def _blown_up(ratio: float, stats: dict[str, Any]) -> bool:
    """Longer than LENGTH_BLOWUP x the reference plus 40 characters (`ratio` is length / reference length)."""
    return ratio > LENGTH_BLOWUP and stats["chars"] - LENGTH_BLOWUP * stats["chars"] / ratio > 40


def _corpus_distinct_2(texts: list[str]) -> float:
    bigrams = [tuple(t.split()[i : i + 2]) for t in texts for i in range(max(0, len(t.split()) - 1))]
    return len(set(bigrams)) / len(bigrams) if bigrams else 0.0


def _unique_share(texts: list[str]) -> float:
    return len(set(texts)) / len(texts) if texts else 0.0


def _correct(field: str) -> Callable[[EvaluatedSample], float | None]:
    return lambda s: text.correctness(s.text, s.answer)[field] if s.answer else None


for _metric in (
    # per scored pair (log-probs of chosen and rejected), clustered by prompt in compare
    Metric("preference_accuracy", "preference accuracy", "share", "pair", lambda r: r["correct"], True,
           "Share of held-out pairs whose chosen answer has the higher summed log-prob (favours shorter answers)."),
    Metric("preference_accuracy_per_token", "preference accuracy per token", "share", "pair",
           lambda r: r["correct_mean"], True, "The same with per-token mean log-probs (length-normalised)."),
    Metric("implicit_reward_accuracy", "implicit reward accuracy", "share", "pair",
           lambda r: r.get("implicit_correct"), True,
           "DPO models only: share of pairs their implicit reward (log-prob gain over the reference) ranks right."),
    Metric("margin", "log-prob margin", "log-prob", "pair", lambda r: r["margin"], True,
           "Summed log-prob of chosen minus rejected."),
    # per generated sample
    Metric("correct", "verified correct", "share", "sample",
           lambda s: float(check_answer(s.text, s.check)) if s.check else None, True,
           "The answer is right by its task's checker against the data's gold answer (verifiable data only): the "
           "primary metric with headroom. Never scored against a model's own sample."),
    Metric("reference_nll", "reference NLL", "nats/token", "sample", lambda s: s.reference_nll, False,
           "Mean negative log-likelihood of the chosen (SFT) completion."),
    Metric("exact_match", "exact match", "share", "sample", _correct("exact_match"), True,
           "Generation equals the data's reference answer after normalisation (SQuAD)."),
    Metric("token_f1", "token F1", "share", "sample", _correct("token_f1"), True,
           "Token overlap F1 with the data's reference answer (SQuAD)."),
    Metric("eos_rate", "EOS reached", "share", "sample", lambda s: float(s.eos_reached), True,
           "The model ended its answer with EOS instead of running into the token limit.",
           flag="no EOS", flagged=lambda v, _: v < 1),
    Metric("distinct_2", "distinct bigrams", "share", "sample", lambda s: round(text.distinct_n(s.text, 2), 4), True,
           "Unique word bigrams / all bigrams of the generation."),
    Metric("repetition", "repeated trigrams", "share", "sample",
           lambda s: round(text.repeated_ngram_fraction(s.text), 4), False,
           "Share of word 3-grams that repeat an earlier one.",
           flag="repetition", flagged=lambda v, _: v >= REPETITION_FLAG),
    Metric("template_leak_rate", "template leak", "share", "sample",
           lambda s: float(text.has_template_leak(s.text, s.template)), False,
           "The generation contains the prompt template's markers (it started a new turn).",
           flag="template leak", flagged=lambda v, _: v > 0),
    Metric("refusal_rate", "refusal", "share", "sample", lambda s: float(text.is_refusal(s.text)), False,
           "The generation refuses.", flag="refusal", flagged=lambda v, _: v > 0),
    Metric("new_tokens", "new tokens", "tokens", "sample", lambda s: float(s.new_tokens), None,
           "Tokens generated (up to and including EOS)."),
    Metric("chars", "length", "chars", "sample", lambda s: float(len(s.text)), None,
           "Characters of the generation.", compared=False),
    Metric("length_ratio", "length / reference", "ratio", "sample",
           lambda s: round(len(s.text) / max(len(s.reference), 1), 4), None,
           "Generation length over the chosen completion's length.",
           flag="length blow-up", flagged=_blown_up,
           compared=False),
    # per method, over all its generations (bootstrapped over prompts): per-sample distinct-n is ~1 for short
    # outputs even when the outputs repeat each other
    Metric("corpus_distinct_2", "corpus distinct bigrams", "share", "corpus", _corpus_distinct_2, True,
           "Unique bigrams over all of a method's generations.", compared=False),
    Metric("unique_output_share", "unique outputs", "share", "corpus", _unique_share, True,
           "Share of a method's generations that no other prompt got verbatim.", compared=False),
):  # fmt: skip
    register(_metric)
