"""The judge stage's throughput on the CPU: the local judge (SmolLM2-135M-Instruct) reading its verdicts from the
next-token probabilities of the two labels, both orders of every pair in the same batches, beside a plain batched
forward pass of the same model over the same token batches (full logits, tokenised beforehand), timed alternately
in one process."""

from __future__ import annotations

import statistics
import time
from typing import Any

REPEATS = 5


def _plain_batches(judge: Any, texts: list[str], batch_size: int) -> list[tuple[Any, Any]]:
    """The judge's own token batches (its chat template, left padding), built before the clock starts."""
    from pipeline.core.configs import FormatConfig
    from pipeline.formats import encode_prompt, render_prompt
    from pipeline.generation import left_padded

    tokenizer = judge.source.tokenizer
    encoded = [encode_prompt(tokenizer, render_prompt(t, FormatConfig(), tokenizer)) for t in texts]
    pad = tokenizer.pad_token_id
    return [left_padded(encoded[start : start + batch_size], pad) for start in range(0, len(encoded), batch_size)]


def judge_throughput(quick: bool = False) -> dict:
    import torch

    from pipeline.core.catalog import SMOLLM2_135M_INSTRUCT
    from pipeline.core.configs import JudgeConfig, ModelConfig
    from pipeline.judges import JudgeItem, ModelJudge, judge_text
    from pipeline.models import loaded, prepare_model
    from pipeline.tiny import demo_records

    prepare_model(SMOLLM2_135M_INSTRUCT.name, lambda event: None)
    model = ModelConfig(name_or_path=SMOLLM2_135M_INSTRUCT.name, dtype="float32", load_in_8bit=False, device="cpu")
    config = JudgeConfig(model=model, batch_size=8)
    records = demo_records()[: 9 if quick else 33]
    items = []
    for first, second in zip(records, records[1:], strict=False):  # a pair of answers, shown in both orders
        items += [JudgeItem(first["instruction"], first["response"], second["response"])]
        items += [JudgeItem(first["instruction"], second["response"], first["response"])]
    texts = [judge_text(item, config.max_response_chars) for item in items]
    judged, plain = [], []
    with loaded(model) as m:
        judge = ModelJudge(m, config)
        batches = _plain_batches(judge, texts, config.batch_size)
        judge.first_slot_probabilities(texts[: config.batch_size])  # warm up both paths
        with torch.no_grad():
            m.model(input_ids=batches[0][0], attention_mask=batches[0][1])
        for _ in range(2 if quick else REPEATS):  # alternately, so that a busy moment hits both
            judge.tokens = 0
            started = time.perf_counter()
            judge.first_slot_probabilities(texts)
            judged.append(time.perf_counter() - started)
            tokens = judge.tokens
            started = time.perf_counter()
            with torch.no_grad():
                for input_ids, attention in batches:
                    m.model(input_ids=input_ids, attention_mask=attention).logits.float()
            plain.append(time.perf_counter() - started)
    judge_s, plain_s = statistics.median(judged), statistics.median(plain)
    ratio = plain_s / judge_s  # the judge's throughput as a share of the plain pass's
    return {
        "goal": "judge throughput ≥ 0.9× a plain batched forward pass over the same inputs (CPU)",
        "met": ratio >= 0.9,
        "summary": (
            f"judge {tokens / judge_s:.0f} prompt tokens/s, {len(items) / judge_s:.1f} judgements/s "
            f"({len(items)} = {len(items) // 2} pairs × 2 orders, batch {config.batch_size}, SmolLM2-135M float32) "
            f"= {ratio:.2f}× a plain batched forward pass ({plain_s:.2f} s vs {judge_s:.2f} s, median of "
            f"{len(judged)})"
        ),
        "judge_tokens_per_s": tokens / judge_s,
        "ratio": ratio,
        "judge_s": judged,
        "plain_s": plain,
    }
