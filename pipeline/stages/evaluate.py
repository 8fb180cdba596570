"""evaluate: one model per call (base, sft, sft_dpo or dpo_only) on the held-out prompts and pairs.

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
from pipeline.configs import METHODS, RunSpec, to_dict
from pipeline.errors import ConfigError
from pipeline.formats import IGNORE_INDEX, tokenize_pair
from pipeline.generation import correctness, generate_batched, text_stats
from pipeline.models import loaded
from pipeline.stages import PREVIEW_ROWS, Progress, ProgressFn, StageResult
from pipeline.stages.negatives import REGISTRY
from pipeline.stages.pairs import HELDOUT, TRAIN
from pipeline.training import model_config_from_ref
from pipeline.validation import load_and_validate_pairs, normalize_text

STAGE = "evaluate"
PAIRS_OUT, SAMPLES_OUT = "pairs_eval.jsonl", "samples.jsonl"
MAX_EVAL_LENGTH = 4096


def config_slice(spec: RunSpec, method: str) -> dict[str, Any]:
    return {
        "method": method,
        "base_model": to_dict(spec.base_model),
        "format": to_dict(spec.format),
        "eval": to_dict(spec.eval),
        "validation": to_dict(spec.validation),
    }


def prompt_id(prompt: str) -> str:
    return hashlib.sha256(normalize_text(prompt).encode()).hexdigest()[:16]


def completion_logprobs(
    model: Any, tokenizer: Any, prompts: list[str], completions: list[str], batch_size: int = 8
) -> list[tuple[float, int]]:
    """(sum of log-probs, token count) of each completion + EOS given its prompt, in batches (right padding)."""
    import torch

    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    results: list[tuple[float, int]] = []
    model.eval()
    for start in range(0, len(prompts), batch_size):
        examples = []
        for prompt, completion in zip(
            prompts[start : start + batch_size], completions[start : start + batch_size], strict=True
        ):
            example = tokenize_pair(tokenizer, prompt, completion, MAX_EVAL_LENGTH)
            if isinstance(example, str):
                raise ConfigError(f"evaluate: cannot score a completion ({example}) for prompt {prompt[:60]!r}")
            examples.append(example)
        width = max(len(e.input_ids) for e in examples)
        input_ids = torch.full((len(examples), width), pad, dtype=torch.long)
        labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
        attention = torch.zeros((len(examples), width), dtype=torch.long)
        for row, e in enumerate(examples):
            input_ids[row, : len(e.input_ids)] = torch.tensor(e.input_ids)
            labels[row, : len(e.labels)] = torch.tensor(e.labels)
            attention[row, : len(e.input_ids)] = 1
        with torch.no_grad():
            logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits.float()
        logps = torch.log_softmax(logits[:, :-1], dim=-1)
        targets = labels[:, 1:].to(device)
        mask = targets != IGNORE_INDEX
        gathered = logps.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1) * mask
        for row in range(len(examples)):
            results.append((float(gathered[row].sum()), int(mask[row].sum())))
    return results


def _mean(values: list[float]) -> float | None:
    return round(statistics.fmean(values), 6) if values else None


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
    heldout = splits["heldout"]
    prompts: dict[str, dict[str, Any]] = {}
    for pair in heldout:
        prompts.setdefault(
            prompt_id(pair["prompt"]),
            {"prompt": pair["prompt"], "reference": pair["chosen"], "answer": pair.get("reference")},
        )
    chosen_ids = sorted(prompts)[: config.max_prompts] if config.max_prompts else sorted(prompts)
    if not chosen_ids:
        raise ConfigError("evaluate: the held-out split has no prompts; raise SplitConfig.heldout_fraction")
    selected = set(chosen_ids)
    pairs = [p for p in heldout if prompt_id(p["prompt"]) in selected]
    model_config = spec.base_model if method == "base" else model_config_from_ref(inputs["model"], spec.base_model)

    with loaded(model_config) as m:
        texts = [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs]
        scored = completion_logprobs(
            m.model, m.tokenizer, [p["prompt"] for p in pairs] * 2, texts, batch_size=config.batch_size
        )
        progress.progress(1, 3, "log-probs")
        references = completion_logprobs(
            m.model,
            m.tokenizer,
            [prompts[i]["prompt"] for i in chosen_ids],
            [prompts[i]["reference"] for i in chosen_ids],
            batch_size=config.batch_size,
        )
        progress.progress(2, 3, "reference NLL")
        generations = generate_batched(
            m.model,
            m.tokenizer,
            [prompts[i]["prompt"] for i in chosen_ids],
            fmt=spec.format,
            max_new_tokens=config.max_new_tokens,
            do_sample=config.do_sample,
            temperature=config.temperature,
            top_p=config.top_p,
            seed=config.seed,
            batch_size=config.batch_size,
        )
        progress.progress(3, 3, "generations")
        info = m.info

    pair_rows = []
    for index, pair in enumerate(pairs):
        (chosen_sum, chosen_n), (rejected_sum, rejected_n) = scored[index], scored[len(pairs) + index]
        pair_rows.append(
            {
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
        )
    samples = []
    for pid, (ref_sum, ref_n), generation in zip(chosen_ids, references, generations, strict=True):
        stats = text_stats(generation.text, spec.format)
        stats.update(new_tokens=generation.new_tokens, eos_reached=generation.eos_reached)
        answer = prompts[pid]["answer"]
        samples.append(
            {
                "method": method,
                "prompt_id": pid,
                "prompt": prompts[pid]["prompt"],
                "reference": prompts[pid]["reference"],
                "answer": answer,
                "generation": generation.text,
                "reference_nll": -ref_sum / ref_n,
                "stats": stats,
                "correctness": correctness(generation.text, answer) if answer else None,
            }
        )
    write_jsonl(out_dir / PAIRS_OUT, pair_rows)
    write_jsonl(out_dir / SAMPLES_OUT, samples)

    by_type: dict[str, list[float]] = defaultdict(list)
    for row in pair_rows:
        by_type[row["negative_type"] or "untyped"].append(row["correct"])
    metrics = {
        "prompts": len(samples),
        "pairs": len(pair_rows),
        "preference_accuracy": _mean([r["correct"] for r in pair_rows]),
        "preference_accuracy_per_token": _mean([r["correct_mean"] for r in pair_rows]),
        "mean_margin": _mean([r["margin"] for r in pair_rows]),
        "reference_nll": _mean([s["reference_nll"] for s in samples]),
        "exact_match": _mean([s["correctness"]["exact_match"] for s in samples if s["correctness"]]),
        "token_f1": _mean([s["correctness"]["token_f1"] for s in samples if s["correctness"]]),
        "eos_rate": _mean([float(s["stats"]["eos_reached"]) for s in samples]),
        "mean_new_tokens": _mean([s["stats"]["new_tokens"] for s in samples]),
        "distinct_1": _mean([s["stats"]["distinct_1"] for s in samples]),
        "distinct_2": _mean([s["stats"]["distinct_2"] for s in samples]),
        "repetition": _mean([s["stats"]["repetition"] for s in samples]),
        "template_leak_rate": _mean([float(s["stats"]["template_leak"]) for s in samples]),
        "refusal_rate": _mean([float(s["stats"]["refusal"]) for s in samples]),
        "accuracy_by_type": {t: _mean(v) for t, v in sorted(by_type.items())},
        "peak_memory_bytes": info.peak_memory_bytes,
    }
    return StageResult(
        stage=STAGE,
        role=method,
        outputs={"pairs": PAIRS_OUT, "samples": SAMPLES_OUT},
        metrics=metrics,
        reports=[report.to_dict()],
        previews={"samples": samples[:PREVIEW_ROWS]},
        load_info=info.to_dict(),
        seconds=progress.elapsed(),
    )
