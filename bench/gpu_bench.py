"""The GPU benchmark: a realistic-size model built from its config (random weights: nothing can be downloaded on the
benchmark machine) measured for generation and training throughput, MFU against the card's peak bf16 FLOP/s, peak
memory, 8-bit loading through alignlab's loader, and the memory the driver gets back after a forked job.

On a machine without CUDA it runs a small config on the CPU (to keep it working) and says what it skipped."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

# a Qwen2.5-0.5B-shaped model (the runpod preset's size class) and a small one for CPU runs
QWEN_05B = {
    "model_type": "qwen2",
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "vocab_size": 151936,
    "max_position_embeddings": 4096,
    "tie_word_embeddings": True,
}
SMALL = {**QWEN_05B, "hidden_size": 128, "intermediate_size": 512, "num_hidden_layers": 2, "num_attention_heads": 4}
SMALL["vocab_size"] = 4096

# dense bf16 tensor-core peaks (FLOP/s) from the vendors' data sheets
PEAK_BF16 = {
    "H200": 989e12,
    "H100 SXM": 989e12,
    "H100 80GB HBM3": 989e12,
    "H100 PCIe": 756e12,
    "H100": 756e12,
    "A100": 312e12,
    "L40S": 362e12,
    "RTX 4090": 165e12,
    "A10": 125e12,
}


def peak_flops(device_name: str) -> float | None:
    for key, value in PEAK_BF16.items():  # most specific names first
        if key in device_name:
            return value
    return None


def build(config: dict[str, Any], device: str, dtype: Any) -> Any:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    model_config = AutoConfig.for_model(**config)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(model_config, dtype=dtype)
    return model.eval()


def generation_speed(model: Any, device: str, prompts: int, new_tokens: int, batch: int) -> dict[str, float]:
    import torch

    vocab = model.config.vocab_size
    ids = torch.randint(10, vocab, (prompts, 32), device=device)
    common = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False, "pad_token_id": 0}

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    with torch.no_grad():
        model.generate(ids[:2], **{**common, "max_new_tokens": 4, "min_new_tokens": 4})  # warm-up
        sync()
        started = time.perf_counter()
        for start in range(0, prompts, batch):
            model.generate(
                ids[start : start + batch], attention_mask=torch.ones_like(ids[start : start + batch]), **common
            )
        sync()
        batched = time.perf_counter() - started
        started = time.perf_counter()
        for row in range(prompts):
            model.generate(ids[row : row + 1], attention_mask=torch.ones_like(ids[row : row + 1]), **common)
        sync()
        loop = time.perf_counter() - started
    tokens = prompts * new_tokens
    return {"batched_tokens_per_s": tokens / batched, "loop_tokens_per_s": tokens / loop, "speedup": loop / batched}


def training_speed(model: Any, device: str, batch: int, seq: int, steps: int) -> dict[str, float]:
    """Full fine-tuning steps (forward, backward, AdamW) on random tokens: tokens/s and MFU (6·N·tokens/s)."""
    import torch

    model.train()
    params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    ids = torch.randint(10, model.config.vocab_size, (batch, seq), device=device)

    def step():
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up (allocations, kernels)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    tokens_per_s = batch * seq * steps / seconds
    result = {"parameters": params, "tokens_per_s": tokens_per_s, "achieved_flops": 6 * params * tokens_per_s}
    if device == "cuda":
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    model.eval()
    return result


FORKED_JOB = """
import sys, torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.bfloat16).to("cuda")
model(torch.randint(10, 1000, (4, 64), device="cuda"))
torch.cuda.synchronize()
print(torch.cuda.memory_allocated())
"""


def cuda_only(saved: Path) -> dict[str, Any]:
    """8-bit loading through alignlab's loader, and the memory a forked job gives back to the driver."""
    import torch

    from pipeline.core.configs import ModelConfig
    from pipeline.models import load_model, release_memory

    free_before = torch.cuda.mem_get_info()[0]
    out = subprocess.run([sys.executable, "-c", FORKED_JOB, str(saved)], capture_output=True, text=True, check=True)
    child_allocated = int(out.stdout.strip().splitlines()[-1])
    free_after = torch.cuda.mem_get_info()[0]
    model, _, info = load_model(ModelConfig(name_or_path=str(saved), load_in_8bit=True, device="cuda"))
    eight_bit = {
        "quantization": info.quantization,
        "fallback": info.fallback,
        "memory_gib": torch.cuda.memory_allocated() / 2**30,
        "load_seconds": info.load_seconds,
    }
    del model
    release_memory()
    return {
        "forked_job_allocated_gib": child_allocated / 2**30,
        "driver_free_before_gib": free_before / 2**30,
        "driver_free_after_gib": free_after / 2**30,
        "returned_after_fork_gib": (free_after - free_before) / 2**30,
        "eight_bit": eight_bit,
    }


def gpu(quick: bool = False) -> dict:
    import torch

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    config = QWEN_05B if cuda and not quick else SMALL
    dtype = torch.bfloat16 if cuda else torch.float32
    model = build(config, device, dtype)
    name = torch.cuda.get_device_name(0) if cuda else "cpu"
    if cuda and not quick:
        gen = generation_speed(model, device, prompts=256, new_tokens=128, batch=64)
        train = training_speed(model, device, batch=8, seq=1024, steps=10)
    else:
        gen = generation_speed(model, device, prompts=8, new_tokens=8, batch=8)
        train = training_speed(model, device, batch=2, seq=64, steps=2)
    peak = peak_flops(name) if cuda else None
    result: dict[str, Any] = {"device": name, "config": config, "generation": gen, "training": train}
    result["mfu"] = train["achieved_flops"] / peak if peak else None
    if cuda:
        with tempfile.TemporaryDirectory() as tmp:
            model.save_pretrained(tmp)
            del model
            torch.cuda.empty_cache()
            result["cuda"] = cuda_only(Path(tmp))
    else:
        result["cuda"] = "not run: no CUDA device (8-bit CUDA loading and forked-job memory need one)"
    mfu = f"MFU {result['mfu']:.1%} of {peak / 1e12:.0f} TFLOP/s" if result["mfu"] else "MFU n/a (no GPU peak)"
    result.update(
        goal="≥ 8× batched generation on GPU; report MFU, memory, 8-bit, memory returned",
        met=gen["speedup"] >= 8 if cuda else None,  # a CPU run keeps the code working; it cannot meet a GPU goal
        summary=f"{name}, {train['parameters'] / 1e6:,.0f}M params: generation batched "
        f"{gen['batched_tokens_per_s']:,.0f} vs loop {gen['loop_tokens_per_s']:,.0f} tokens/s = "
        f"{gen['speedup']:.1f}×; training "
        f"{train['tokens_per_s']:,.0f} tokens/s, {mfu}"
        + (
            f"; forked job {result['cuda']['forked_job_allocated_gib']:.2f} GiB, "
            f"{result['cuda']['returned_after_fork_gib']:+.2f} GiB free after; 8-bit "
            f"{result['cuda']['eight_bit']['memory_gib']:.2f} GiB"
            if cuda
            else " (CPU: a small config; the GPU numbers need a GPU)"
        ),
    )
    return json.loads(json.dumps(result, default=str))
