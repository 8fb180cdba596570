"""evaluate: one model per call (base, sft, sft_dpo or dpo_only) on the held-out prompts and pairs.

The prompts are every held-out prompt of the SFT records (whether or not a pair was made for it); the pairs are the
held-out pairs of those prompts.

Per held-out pair: log-probs of chosen and rejected (sum and per-token mean) → preference accuracy overall and
per negative type. Per held-out prompt: NLL of the SFT completion, and one batched generation (fixed seed,
greedy by default) with its length, EOS, distinct-1/2, repetition, template leak and refusal. Rows are per
prompt / per pair, keyed by a hash of the prompt, so `compare` can pair methods item by item.
"""

from __future__ import annotations

import hashlib
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from pipeline.artifacts import write_jsonl
from pipeline.core.configs import METHODS, RunSpec
from pipeline.core.errors import ConfigError
from pipeline.core.metrics import EvaluatedSample, pair_metrics, sample_metrics, sample_stats
from pipeline.core.negative_types import REGISTRY, record_split
from pipeline.core.registry import stage_of_module
from pipeline.core.text import normalize_text
from pipeline.generation import generator
from pipeline.models import loaded
from pipeline.stages import PREVIEW_ROWS, Progress, ProgressFn, StageResult
from pipeline.stages.generate_sft import OUTPUT as SFT_RECORDS
from pipeline.stages.pairs import HELDOUT, TRAIN
from pipeline.training import model_config_from_ref
from pipeline.validation import load_and_validate_pairs, load_and_validate_sft

STAGE = stage_of_module(__name__)
PAIRS_OUT, SAMPLES_OUT = "pairs_eval.jsonl", "samples.jsonl"


def prompt_id(prompt: str) -> str:
    return hashlib.sha256(normalize_text(prompt).encode()).hexdigest()[:16]


def _mean(values: list[float | None]) -> float | None:
    """The mean of the values a metric has (None where it does not apply, e.g. correctness without answers)."""
    present = [v for v in values if v is not None]
    return round(statistics.fmean(present), 6) if present else None


def heldout_prompts(
    records: list[dict[str, Any]], heldout_pairs: list[dict[str, Any]], max_prompts: int
) -> tuple[dict[str, dict], list[dict]]:
    """The held-out prompts evaluated (by prompt id, sorted; at most `max_prompts`, 0 = all) and their pairs.

    Every held-out prompt of the SFT records is generated on and scored, its SFT completion the reference: a prompt
    for which no pair could be made (say, a one-sentence answer has no first-sentence negative) still measures the
    generation metrics, which need no pair."""
    prompts: dict[str, dict[str, Any]] = {}
    for record in records:
        if record_split(record) == "heldout":
            prompts.setdefault(
                prompt_id(record["prompt"]),
                {
                    "prompt": record["prompt"],
                    "reference": record["completion"],
                    "answer": (record.get("meta") or {}).get("reference"),
                    "check": (record.get("meta") or {}).get("check"),
                    # the user's own words, as a judge must see them (not the chat-templated prompt)
                    "instruction": (record.get("meta") or {}).get("instruction") or record["prompt"],
                },
            )
    chosen = sorted(prompts)[:max_prompts] if max_prompts else sorted(prompts)
    if not chosen:
        raise ConfigError("evaluate: the held-out split has no prompts; raise SplitConfig.heldout_fraction")
    selected = set(chosen)
    pairs = [p for p in heldout_pairs if prompt_id(p["prompt"]) in selected]
    return {pid: prompts[pid] for pid in chosen}, pairs


def pair_row(method: str, pair: dict[str, Any], chosen: tuple[float, int], rejected: tuple[float, int]) -> dict:
    """One scored held-out pair: (sum of log-probs, tokens) of chosen and of rejected."""
    (chosen_sum, chosen_n), (rejected_sum, rejected_n) = chosen, rejected
    return {
        "method": method,
        "pair_id": hashlib.sha256(
            "\x00".join(normalize_text(pair[k]) for k in ("prompt", "chosen", "rejected")).encode()
        ).hexdigest()[:16],
        "prompt_id": prompt_id(pair["prompt"]),
        "negative_type": pair.get("negative_type"),
        "chosen_logp": chosen_sum,
        "rejected_logp": rejected_sum,
        "chosen_logp_mean": chosen_sum / chosen_n,
        "rejected_logp_mean": rejected_sum / rejected_n,
        "margin": chosen_sum - rejected_sum,
        "correct": float(chosen_sum > rejected_sum),
        "correct_mean": float(chosen_sum / chosen_n > rejected_sum / rejected_n),
    }


def sample_row(
    method: str, pid: str, prompt: dict[str, Any], reference: tuple[float, int], generation: Any, template: str
) -> dict[str, Any]:
    """One generation for a held-out prompt, with every sample metric of the registry in its stats."""
    ref_sum, ref_n = reference
    evaluated = EvaluatedSample(
        text=generation.text,
        new_tokens=generation.new_tokens,
        eos_reached=generation.eos_reached,
        reference=prompt["reference"],
        answer=prompt["answer"],
        reference_nll=-ref_sum / ref_n,
        template=template,
        check=prompt.get("check"),
    )
    return {
        "method": method,
        "prompt_id": pid,
        "prompt": prompt["prompt"],
        "instruction": prompt.get("instruction", prompt["prompt"]),
        "reference": prompt["reference"],
        "answer": prompt["answer"],
        "generation": generation.text,
        "stats": sample_stats(evaluated),
    }


def summary(pair_rows: list[dict[str, Any]], samples: list[dict[str, Any]]) -> dict[str, Any]:
    """The stage's metrics: the mean of every pair and sample metric, and preference accuracy per negative type."""
    by_type: dict[str, list[float]] = defaultdict(list)
    for row in pair_rows:
        by_type[row["negative_type"] or "untyped"].append(row["correct"])
    return {
        "prompts": len(samples),
        "pairs": len(pair_rows),
        **{m.name: _mean([m.compute(r) for r in pair_rows]) for m in pair_metrics()},
        **{m.name: _mean([s["stats"][m.name] for s in samples]) for m in sample_metrics()},
        "accuracy_by_type": {t: _mean(v) for t, v in sorted(by_type.items())},
    }


def run(
    spec: RunSpec,
    inputs: dict[str, Path],
    out_dir: Path,
    on_progress: ProgressFn | None = None,
    method: str = "base",
) -> StageResult:
    if method not in METHODS:
        raise ConfigError(f"evaluate: method must be one of {METHODS}, got {method!r}")
    if method != "base" and "model" not in inputs:
        raise ConfigError(f"evaluate({method}) needs its trained model artifact as input 'model'")
    progress = Progress(STAGE, on_progress, role=method)
    config = spec.eval
    splits, report = load_and_validate_pairs(
        inputs["pairs"] / TRAIN, inputs["pairs"] / HELDOUT, spec.validation, tuple(REGISTRY)
    )
    progress.emit("validation", report=report.to_dict())
    records, records_report = load_and_validate_sft(inputs["sft"] / SFT_RECORDS, spec.validation)
    progress.emit("validation", report=records_report.to_dict())
    prompts, pairs = heldout_prompts(records, splits["heldout"], config.max_prompts)
    chosen_ids = list(prompts)
    model_config = spec.base_model if method == "base" else model_config_from_ref(inputs["model"], spec.base_model)

    with loaded(model_config) as m:
        model = generator(m, spec.format)
        texts = [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs]
        scored = model.completion_logprobs([p["prompt"] for p in pairs] * 2, texts, batch_size=config.batch_size)
        progress.progress(1, 3, "log-probs")
        references = model.completion_logprobs(
            [prompts[i]["prompt"] for i in chosen_ids],
            [prompts[i]["reference"] for i in chosen_ids],
            batch_size=config.batch_size,
        )
        progress.progress(2, 3, "reference NLL")
        generations = model.generate(
            [prompts[i]["prompt"] for i in chosen_ids],
            config.sampling,
            seed=config.seed,
            batch_size=config.batch_size,
        )
        progress.progress(3, 3, "generations")
        info = m.info

    pair_rows = [pair_row(method, pair, scored[index], scored[len(pairs) + index]) for index, pair in enumerate(pairs)]
    samples = [
        sample_row(method, pid, prompts[pid], reference, generation, spec.format.template)
        for pid, reference, generation in zip(chosen_ids, references, generations, strict=True)
    ]
    write_jsonl(out_dir / PAIRS_OUT, pair_rows)
    write_jsonl(out_dir / SAMPLES_OUT, samples)

    metrics = {**summary(pair_rows, samples), "peak_memory_bytes": info.peak_memory_bytes}
    return StageResult(
        stage=STAGE,
        role=method,
        outputs={"pairs": PAIRS_OUT, "samples": SAMPLES_OUT},
        metrics=metrics,
        reports=[report.to_dict(), records_report.to_dict()],
        previews={"samples": samples[:PREVIEW_ROWS]},
        load_info=info.to_dict(),
        seconds=progress.elapsed(),
    )
