"""Pipeline benchmarks, each a side-by-side comparison in one process tree on the same data, model and settings:

- generation: the batched `HFGenerator.generate` vs a per-prompt `generate` loop (what the seed script did);
- sft_overhead / dpo_overhead: the train_sft / train_dpo stage vs a plain TRL script with identical arguments;
- dpo_ref_cache: DPO with precomputed reference log-probs vs the reference forward pass on every step, 2 epochs;
- eval_memory: the four evaluations one model at a time vs one model alone vs all four loaded at once;
- cache: an identical rerun of the tiny DAG vs its first run.

Runs alternate (A, B, A, B, ...) and the medians are compared, so drift on a shared machine hits both sides."""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pipeline.core.home import alignlab_home

ROOT = Path(__file__).resolve().parents[1]
# the caller's home, read before any benchmark points ALIGNLAB_HOME at its own temporary one: the real model is
# fetched and converted there once, and copied from there
CALLER_HOME = alignlab_home()


def _spec(quick: bool, model: str = "tiny") -> Any:
    """The tiny model's CPU preset, or (`model="real"`) the real model's: smol-ci's few instructions with smol-cpu's
    training and generation settings, trained for epochs enough that training, not loading and saving, decides a
    ratio."""
    from pipeline.core.configs import preset

    if model == "real":
        spec = preset("smol-ci")
        if not quick:
            full = preset("smol-cpu")
            spec.sft, spec.dpo, spec.generation = full.sft, full.dpo, full.generation
            spec.sft.num_epochs, spec.dpo.num_epochs = 6.0, 2.0
        return spec
    spec = preset("tiny-ci" if quick else "tiny-cpu")
    if not quick:
        # long enough that training, not the fixed seconds of loading and saving, decides the ratio (as on a pod)
        spec.sft.num_epochs = 10.0
        spec.dpo.num_epochs = 4.0
    return spec


def _install_model(spec: Any, home: Path) -> None:
    """The spec's base model under `home/models`: the tiny model built, or the real catalog model copied from the
    caller's ALIGNLAB_HOME (fetched and converted there once)."""
    from pipeline.core.catalog import CATALOG
    from pipeline.packaged import ensure_packaged
    from pipeline.tiny import ensure_tiny

    packaged = CATALOG.get(spec.base_model.name_or_path)
    if packaged is None:
        ensure_tiny(home / "models")
        return
    target = home / "models" / packaged.name
    if not target.exists():
        shutil.copytree(ensure_packaged(packaged, CALLER_HOME / "models" / packaged.name), target)


def _prepared_home(spec: Any, home: Path) -> dict[str, Any]:
    """A home with the spec's model and the data stages (SFT records, negatives, pairs) complete."""
    from pipeline.core.configs import from_dict, to_dict
    from pipeline.dag import artifact_keys, default_store, run_dag

    _install_model(spec, home)
    data = to_dict(spec)
    data["stages"] = ["generate_sft", "generate_negatives", "make_pairs"]
    run_dag(from_dict(type(spec), data), home)
    return {"store": default_store(home), "keys": artifact_keys(spec)}


def _alternate(sides: dict[str, Any], repeats: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(repeats):
        for name, fn in sides.items():
            started = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - started)
    return times


# ----------------------------------------------------------------------------------------------- generation


def generation(quick: bool = False, model: str = "tiny") -> dict:
    """Same prompts, model and greedy decoding: batched and left-padded vs one `generate` call per prompt."""
    from types import SimpleNamespace

    import torch

    from pipeline.formats import render_prompt
    from pipeline.generation import HFGenerator
    from pipeline.models import load_model
    from pipeline.tiny import demo_records

    spec = _spec(quick, model)
    real = model == "real"
    with tempfile.TemporaryDirectory() as tmp:
        _install_model(spec, Path(tmp))
        import os

        os.environ["ALIGNLAB_HOME"] = tmp
        lm, tokenizer, info = load_model(spec.base_model)
    n_prompts = 16 if quick else 32 if real else 64
    prompts = [render_prompt(r["instruction"], spec.format, tokenizer) for r in demo_records()][:n_prompts]
    max_new = spec.generation.sampling.max_new_tokens
    greedy = spec.generation.sampling.model_copy(update={"do_sample": False})
    batch = spec.generation.batch_size if real else 32
    generator = HFGenerator(SimpleNamespace(model=lm, tokenizer=tokenizer), spec.format)

    def batched():
        generator.generate(prompts, greedy, batch_size=batch)

    def loop():
        for prompt in prompts:
            ids = tokenizer(prompt, return_tensors="pt")
            with torch.no_grad():
                lm.generate(**ids, max_new_tokens=max_new, do_sample=False, pad_token_id=tokenizer.eos_token_id)

    times = _alternate({"batched": batched, "loop": loop}, 1 if quick or real else 3)
    b, l_ = statistics.median(times["batched"]), statistics.median(times["loop"])
    speedup = l_ / b
    goal = 8.0 if info.device == "cuda" else 4.0
    return {
        "model": spec.base_model.name_or_path,
        "prompts": len(prompts),
        "max_new_tokens": max_new,
        "batch_size": batch,
        "device": info.device,
        "batched_s": b,
        "loop_s": l_,
        "speedup": speedup,
        "goal": f"≥ {goal:g}× ({'GPU' if info.device == 'cuda' else 'CPU'})",
        "met": speedup >= goal,
        "summary": f"batched {b:.2f} s vs per-prompt loop {l_:.2f} s for {len(prompts)} prompts × {max_new} tokens "
        f"= {speedup:.1f}× faster",
    }


# ----------------------------------------------------------------------------------------------- training overhead


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


PLAIN_INFO = type("Info", (), {"device": "cpu", "dtype": "float32"})()  # what trainer_args needs of a LoadInfo


def _plain_load(spec: Any) -> tuple[Any, Any]:
    """What a script does: from_pretrained on the same directory, fp32 on the CPU."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.models import resolve_model

    path = resolve_model(spec.base_model.name_or_path)
    return AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path, dtype="float32")


def plain_sft(spec: Any, records_path: Path, out_dir: Path) -> None:
    """What a researcher's script does: load, SFTTrainer with the same arguments, train, save."""
    from datasets import Dataset
    from trl import SFTTrainer

    from pipeline.stages.train_sft import training_records
    from pipeline.training import lora_config, sft_trainer_config

    tokenizer, model = _plain_load(spec)
    rows = [{"prompt": r["prompt"], "completion": r["completion"]} for r in training_records(_records(records_path))]
    info = PLAIN_INFO
    args = sft_trainer_config(spec.sft, out_dir, info)
    lora = lora_config(spec.base_model)  # the same LoraConfig the stages build
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer, peft_config=lora
    )
    trainer.train()
    trainer.save_model(str(out_dir / "model"))


def plain_dpo(spec: Any, train_path: Path, out_dir: Path, precompute: bool | None = None) -> None:
    from datasets import Dataset
    from trl import DPOTrainer

    from pipeline.training import dpo_trainer_config, lora_config

    tokenizer, model = _plain_load(spec)
    rows = [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in _records(train_path)]
    info = PLAIN_INFO
    args = dpo_trainer_config(spec.dpo, out_dir, info, precompute)
    lora = lora_config(spec.base_model)  # the same LoraConfig the stages build
    trainer = DPOTrainer(
        model=model,
        ref_model=None,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=lora,
    )
    trainer.train()
    trainer.save_model(str(out_dir / "model"))


def _tokens(spec: Any, rows: list[dict[str, Any]], fields: tuple[str, ...], epochs: float) -> int:
    from transformers import AutoTokenizer

    from pipeline.models import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(spec.base_model.name_or_path))
    per_epoch = sum(len(tokenizer(r["prompt"] + r[f])["input_ids"]) for r in rows for f in fields)
    return int(per_epoch * epochs)


def _stage_vs_plain(stage_node: str, quick: bool, model: str = "tiny") -> dict:
    import os

    from pipeline.core.registry import node_by_name
    from pipeline.dag import run_node
    from pipeline.stages.generate_sft import OUTPUT as SFT_RECORDS
    from pipeline.stages.pairs import TRAIN
    from pipeline.stages.train_sft import training_records

    spec = _spec(quick, model)
    # on the real model a run is minutes: the fixed per-stage cost no longer hides, and the bar is higher; at least
    # five pairs, which side runs first alternating, so the spread of the pairs' ratios is known
    goal, repeats = (0.97, 5) if model == "real" else (0.95, 5)
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        os.environ["ALIGNLAB_HOME"] = tmp
        ready = _prepared_home(spec, home)
        store, keys = ready["store"], ready["keys"]
        node = node_by_name(stage_node)
        if stage_node == "train_sft":
            data = store.path(keys["generate_sft"]) / SFT_RECORDS
            # what the stage trains on: the train prompts' records (held-out ones in the plain script would make
            # it train a quarter more and the stage look that much faster)
            tokens = _tokens(spec, training_records(_records(data)), ("completion",), spec.sft.num_epochs)

            def plain():
                plain_sft(spec, data, home / "plain")
        else:
            data = store.path(keys["pairs"]) / TRAIN
            tokens = _tokens(spec, _records(data), ("chosen", "rejected"), spec.dpo.num_epochs)

            def plain():
                plain_dpo(spec, data, home / "plain")

        def stage():
            run_node(spec, store, node, keys)

        def reset():
            shutil.rmtree(store.path(keys[stage_node]), ignore_errors=True)
            shutil.rmtree(home / "plain", ignore_errors=True)

        times: dict[str, list[float]] = {"stage": [], "plain": []}
        for pair in range(1 if quick else repeats):
            order = (("stage", stage), ("plain", plain)) if pair % 2 == 0 else (("plain", plain), ("stage", stage))
            for name, fn in order:
                reset()
                started = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - started)
    s, p = statistics.median(times["stage"]), statistics.median(times["plain"])
    ratio = (tokens / s) / (tokens / p)
    # tokens/s of the stage over the plain script's, pair by pair: the spread says whether the median means anything
    pair_ratios = sorted(plain_s / stage_s for stage_s, plain_s in zip(times["stage"], times["plain"], strict=True))
    low, high = pair_ratios[0], pair_ratios[-1]
    if len(pair_ratios) < 2:
        reading = f"one pair ({low:.2f}): no spread, no reading (a quick run)"
    elif low <= 1 <= high:
        reading = f"no measurable difference from plain TRL (pair ratios {low:.2f}–{high:.2f} cover 1)"
    elif high < 1:
        reading = f"slower than plain TRL in every pair ({low:.2f}–{high:.2f})"
    else:
        reading = f"faster than plain TRL in every pair ({low:.2f}–{high:.2f}); both sides do the same work, look why"
    return {
        "pairs": len(pair_ratios),
        "pair_ratios": pair_ratios,
        "reading": reading,
        "model": spec.base_model.name_or_path,
        "tokens": tokens,
        "stage_s": s,
        "plain_s": p,
        "stage_tokens_per_s": tokens / s,
        "plain_tokens_per_s": tokens / p,
        "ratio": ratio,
        "goal": f"tokens/s ≥ {goal:.2f}× the plain TRL script",
        "met": ratio >= goal,
        "fixed_overhead_s": s - p,
        "summary": f"{stage_node} {tokens / s:,.0f} tokens/s vs plain TRL {tokens / p:,.0f} tokens/s = {ratio:.2f}× "
        f"median of {len(pair_ratios)} alternating pairs: {reading} ({s:.1f} s vs {p:.1f} s for {tokens:,} tokens; "
        f"validation, masking check, checkpoints and model save included: {s - p:+.1f} s)",
    }


def sft_overhead(quick: bool = False) -> dict:
    return _stage_vs_plain("train_sft", quick)


def dpo_overhead(quick: bool = False) -> dict:
    return _stage_vs_plain("dpo_base", quick)


# the same measurements on the real model (SmolLM2-135M-Instruct, fetched once): one entry each in the results


def real_sft_overhead(quick: bool = False) -> dict:
    return _stage_vs_plain("train_sft", quick, "real")


def real_dpo_overhead(quick: bool = False) -> dict:
    return _stage_vs_plain("dpo_base", quick, "real")


def real_generation(quick: bool = False) -> dict:
    return generation(quick, "real")


def real_eval_memory(quick: bool = False) -> dict:
    return eval_memory(quick, "real")


def real_cache(quick: bool = False) -> dict:
    return cache(quick, "real")


def dpo_ref_cache(quick: bool = False) -> dict:
    """2 epochs of DPO: the frozen reference's log-probs computed once up front vs on every step."""
    import os

    from pipeline.stages.pairs import TRAIN

    spec = _spec(quick)
    spec.dpo.num_epochs = 2.0
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        os.environ["ALIGNLAB_HOME"] = tmp
        ready = _prepared_home(spec, home)
        data = ready["store"].path(ready["keys"]["pairs"]) / TRAIN

        def run(precompute: bool):
            shutil.rmtree(home / "plain", ignore_errors=True)
            plain_dpo(spec, data, home / "plain", precompute=precompute)

        times = _alternate({"cached": lambda: run(True), "every_step": lambda: run(False)}, 1 if quick else 3)
    c, e = statistics.median(times["cached"]), statistics.median(times["every_step"])
    return {
        "cached_s": c,
        "every_step_s": e,
        "ratio": c / e,
        "goal": "report the ratio",
        "met": True,
        "summary": f"precomputed reference {c:.1f} s vs reference forward every step {e:.1f} s = {c / e:.2f}× "
        "(2 epochs, LoRA: the reference is the adapter-disabled policy)",
    }


# ----------------------------------------------------------------------------------------------- eval memory

EVAL_NODES = ["eval_base", "eval_sft", "eval_sft_dpo", "eval_dpo_only"]


def eval_child(mode: str, home: str, spec_json: str) -> dict:
    """One measurement in a fresh process: `one` (eval_sft_dpo alone), `sequential` (the four evaluate nodes one
    model at a time, as the DAG runs them) or `all_at_once` (four models loaded together, then evaluated)."""
    import os

    os.environ["ALIGNLAB_HOME"] = home
    import peft  # noqa: F401 - every mode pays the same imports, so the difference is the models
    import torch  # noqa: F401
    import transformers  # noqa: F401

    from pipeline.core.configs import RunSpec, from_dict
    from pipeline.core.registry import node_by_name
    from pipeline.dag import artifact_keys, default_store, run_node
    from pipeline.models import MemoryTracker, load_model
    from pipeline.training import model_config_from_ref

    spec = from_dict(RunSpec, json.loads(spec_json))
    store, keys = default_store(home), artifact_keys(spec)
    tracker = MemoryTracker("cpu")
    baseline = tracker.start()
    held = []
    if mode == "all_at_once":
        for node in EVAL_NODES:
            model_dep = dict(node_by_name(node).deps).get("model")
            config = (
                model_config_from_ref(store.path(keys[model_dep]), spec.base_model) if model_dep else spec.base_model
            )
            held.append(load_model(config))
    for node in EVAL_NODES if mode != "one" else ["eval_sft_dpo"]:
        shutil.rmtree(store.path(keys[node]), ignore_errors=True)
        run_node(spec, store, node_by_name(node), keys)
    return {"peak_bytes": tracker.peak(), "baseline_bytes": baseline, "models_held": len(held)}


def eval_memory(quick: bool = False, model: str = "tiny") -> dict:
    import os

    from pipeline.core.configs import to_dict
    from pipeline.dag import run_dag

    spec = _spec(True, model)  # the evaluations, not the training, are measured: the small preset's models suffice
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["ALIGNLAB_HOME"] = tmp
        _install_model(spec, Path(tmp))
        run_dag(spec, tmp)
        results: dict[str, list[dict]] = {"one": [], "sequential": [], "all_at_once": []}
        for _ in range(1 if quick or model == "real" else 2):
            for mode in results:
                out = subprocess.run(
                    [sys.executable, "-m", "bench.training_bench", "eval-child", mode, tmp, json.dumps(to_dict(spec))],
                    capture_output=True,
                    text=True,
                    cwd=ROOT,
                    check=True,
                )
                results[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
    peak = {mode: statistics.median(r["peak_bytes"] for r in runs) for mode, runs in results.items()}
    above = {
        mode: statistics.median(r["peak_bytes"] - r["baseline_bytes"] for r in runs) for mode, runs in results.items()
    }
    ratio = peak["sequential"] / peak["one"]
    mib = 2**20
    return {
        "model": spec.base_model.name_or_path,
        "peak_mib": {k: v / mib for k, v in peak.items()},
        "above_imports_mib": {k: v / mib for k, v in above.items()},
        "sequential_vs_one": ratio,
        "all_at_once_vs_one": peak["all_at_once"] / peak["one"],
        "goal": "sequential peak ≤ 1.10× one model alone",
        "met": ratio <= 1.10,
        "summary": f"peak RSS: one model {peak['one'] / mib:.0f} MiB, four one at a time {peak['sequential'] / mib:.0f}"
        f" MiB = {ratio:.2f}×, four at once {peak['all_at_once'] / mib:.0f} MiB = "
        f"{peak['all_at_once'] / peak['one']:.2f}× (above the imports: {above['one'] / mib:.0f} / "
        f"{above['sequential'] / mib:.0f} / {above['all_at_once'] / mib:.0f} MiB)",
    }


# ----------------------------------------------------------------------------------------------- cache


def cache(quick: bool = False, model: str = "tiny") -> dict:
    """The whole DAG, then the identical spec again: every node must come back from the artifact store."""
    import os

    from pipeline.dag import run_dag

    spec = _spec(True, model)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["ALIGNLAB_HOME"] = tmp
        _install_model(spec, Path(tmp))
        started = time.perf_counter()
        run_dag(spec, tmp)
        first = time.perf_counter() - started
        started = time.perf_counter()
        again = run_dag(spec, tmp)
        rerun = time.perf_counter() - started
    reused = sum(r.reused for r in again.results.values())
    ratio = rerun / first
    return {
        "model": spec.base_model.name_or_path,
        "first_s": first,
        "rerun_s": rerun,
        "reused_nodes": reused,
        "nodes": len(again.results),
        "ratio": ratio,
        "goal": "≤ 0.05×",
        "met": ratio <= 0.05 and reused == len(again.results),
        "summary": f"first run {first:.1f} s, identical rerun {rerun:.2f} s = {ratio:.3f}× "
        f"({reused}/{len(again.results)} nodes reused)",
    }


if __name__ == "__main__":
    if sys.argv[1:2] == ["eval-child"]:
        print(json.dumps(eval_child(*sys.argv[2:5])))
