"""The offline tiny model: a BPE tokenizer and a small Llama, built deterministically from a seed.

No model can be downloaded on these machines, yet tests and the embedded default need one. `build_tiny`
trains a byte-level BPE tokenizer on the shipped demo corpus, builds a ~3M-parameter `LlamaForCausalLM`,
pre-trains it for a few hundred steps on the demo instructions in the project's prompt format (so that it
answers in that format and generation produces text worth cleaning), and saves both with
`save_pretrained`: it then loads through exactly the code path of a real Hugging Face model.
"""

from __future__ import annotations

import json
import os
import random
import time
from importlib import resources
from pathlib import Path
from typing import Any

from pipeline.core.configs import FormatConfig, tiny_dir_name
from pipeline.core.home import alignlab_home
from pipeline.core.text import render_template

DEMO_INSTRUCTIONS = "demo_instructions.jsonl"
BOS, EOS, PAD = "<s>", "</s>", "<pad>"


def demo_path() -> Path:
    """Path of the shipped demo instructions (JSONL: instruction, response, category)."""
    return Path(str(resources.files("pipeline") / "data" / DEMO_INSTRUCTIONS))


def demo_records() -> list[dict[str, str]]:
    with demo_path().open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def demo_corpus(fmt: FormatConfig | None = None) -> list[str]:
    """The tiny model's pretraining corpus: the demo's *training* instructions and responses in the prompt
    format. The demo's held-out rows (its `split` field, which split_prompts honours) are never in it, so what the
    demo evaluates on is unseen by the base model too."""
    fmt = fmt or FormatConfig()
    return [
        render_template(fmt.template, r["instruction"]) + " " + r["response"]
        for r in demo_records()
        if r["split"] == "train"
    ]


def build_tokenizer(corpus: list[str], vocab_size: int = 1024) -> Any:
    """A byte-level BPE tokenizer (GPT-2/Qwen family) with BOS added by its post-processor."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, bos_id)]),
        ]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, model_max_length=512
    )


def build_tiny(
    out_dir: str | Path,
    seed: int = 0,
    pretrain_steps: int = 200,
    hidden_size: int = 256,
    num_layers: int = 4,
) -> Path:
    """Build the tiny model + tokenizer into `out_dir` (created) and return it. Deterministic for a seed."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    random.seed(seed)
    torch.manual_seed(seed)
    corpus = demo_corpus()
    tokenizer = build_tokenizer(corpus)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 8 // 3,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    losses = _pretrain(model, tokenizer, corpus, pretrain_steps, seed) if pretrain_steps else []
    model.generation_config = GenerationConfig(
        do_sample=False,
        max_new_tokens=64,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "alignlab_tiny.json").write_text(
        json.dumps(
            {
                "seed": seed,
                "pretrain_steps": pretrain_steps,
                "parameters": sum(p.numel() for p in model.parameters()),
                "final_loss": losses[-1] if losses else None,
                "build_seconds": round(time.perf_counter() - started, 2),
            },
            indent=2,
        )
    )
    return out


def _pretrain(model: Any, tokenizer: Any, corpus: list[str], steps: int, seed: int) -> list[float]:
    """A few hundred AdamW steps over the demo corpus (each text + EOS), plain torch for speed."""
    import torch

    rng = random.Random(seed)
    encoded = [tokenizer(text)["input_ids"] + [tokenizer.eos_token_id] for text in corpus]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 20) * (1 - s / (steps + 1)))
    model.train()
    losses = []
    for _ in range(steps):
        batch = [encoded[rng.randrange(len(encoded))] for _ in range(16)]
        width = max(len(ids) for ids in batch)
        input_ids = torch.full((len(batch), width), tokenizer.pad_token_id)
        labels = torch.full((len(batch), width), -100)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, ids in enumerate(batch):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            labels[row, : len(ids)] = torch.tensor(ids)
            mask[row, : len(ids)] = 1
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    model.eval()
    return losses


def tiny_dir(root: str | Path | None = None, seed: int = 0) -> Path:
    root = Path(root) if root else alignlab_home() / "models"
    return root / tiny_dir_name(seed)


def is_built(root: str | Path | None = None, seed: int = 0) -> bool:
    return (tiny_dir(root, seed) / "alignlab_tiny.json").exists()


def ensure_tiny(root: str | Path | None = None, seed: int = 0) -> Path:
    """The tiny model's directory under `root` (default ALIGNLAB_HOME/models), built once if missing."""
    target = tiny_dir(root, seed)
    if is_built(root, seed):
        return target
    root = target.parent
    tmp = root / f".building-{os.getpid()}-{target.name}"
    build_tiny(tmp, seed=seed)
    try:
        tmp.rename(target)
    except OSError:  # another process finished first: theirs is identical (same seed)
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return target
