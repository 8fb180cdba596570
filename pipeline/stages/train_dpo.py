"""train_dpo: TRL `DPOTrainer`, run twice per run with one and the same `DPOConfig`: init = SFT model
(SFT→DPO) and init = base model (DPO-only), each with its own init as the reference.

The reference is where SFT→DPO silently goes wrong (a merged-in-memory model or a new LoRA on an unmerged
base gets the *base* as reference). This stage uses the safe route: the SFT adapter is merged into 16-bit
base weights and saved, and the policy is loaded from that saved directory, so a new LoRA's disabled-adapter
reference (or TRL's reload for full fine-tuning) is the SFT model. It proves it: at step 1 policy == reference,
so the rewards are 0 and the sigmoid loss is ln 2; the stage records that as a check.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

from pipeline.core.configs import RunSpec, to_dict
from pipeline.core.errors import ConfigError
from pipeline.core.negative_types import REGISTRY
from pipeline.core.registry import stage_of_module
from pipeline.distributed import fit_on_devices, is_main_process
from pipeline.models import load_model, loaded, release_memory
from pipeline.stages import Progress, ProgressFn, StageResult, read_json, write_json
from pipeline.stages.pairs import HELDOUT, TRAIN
from pipeline.stages.split import pairs_decontamination
from pipeline.training import (
    MODEL_DIR,
    dpo_trainer_config,
    drop_console_printer,
    free_trainer,
    lora_config,
    model_config_from_ref,
    note_topped_up_batch,
    raise_if_stopped,
    read_log,
    require_trainable,
    start_from_checkpoint,
    step_one,
    training_callbacks,
    write_model_ref,
)
from pipeline.validation import load_and_validate_pairs

STAGE = stage_of_module(__name__)
INIT_DIR = "init_model"
EFFECTIVE_CONFIG = "effective_config.json"
INITS = ("sft", "base")
LN2 = math.log(2)
# Trainer arguments that cannot change the trained weights: excluded from the parity check.
NON_RESULT_ARGS = {
    "output_dir",
    "logging_dir",
    "run_name",
    "report_to",
    "disable_tqdm",
    "logging_steps",
    "logging_strategy",
    "logging_first_step",
    "logging_nan_inf_filter",
    "save_steps",
    "save_strategy",
    "save_total_limit",
    "save_only_model",
    "save_safetensors",
    "push_to_hub",
    "hub_model_id",
    "hub_strategy",
    "hub_token",
    "hub_private_repo",
    "hub_always_push",
    "hub_revision",
    "overwrite_output_dir",
    "dataloader_num_workers",
    "dataloader_persistent_workers",
    "dataloader_prefetch_factor",
    "dataloader_pin_memory",
    "eval_steps",
    "eval_strategy",
    "resume_from_checkpoint",
    "trackio_space_id",
    "project",
    "log_level",
    "log_level_replica",
    "log_on_each_node",
    "skip_memory_metrics",
    "include_num_input_tokens_seen",
    "enable_jit_checkpoint",
}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def prepare_init(spec: RunSpec, init: str, inputs: dict[str, Path], out_dir: Path, progress: Progress) -> str:
    """The directory or id the policy starts from. For an SFT LoRA: merged into 16-bit base weights, saved."""
    if init == "base":
        return spec.base_model.name_or_path
    sft_config = model_config_from_ref(inputs["sft_model"], spec.base_model)
    if sft_config.adapter is None:
        return sft_config.name_or_path  # full fine-tuned SFT weights
    target = out_dir / INIT_DIR
    if (target / "config.json").exists():
        return str(target)
    progress.log("merging the SFT adapter into 16-bit base weights for the SFT→DPO policy and reference")
    # Merging into 8-bit weights is lossy: merge in 16/32-bit.
    merge_config = sft_config.model_copy(update=dict(load_in_8bit=False))
    model, tokenizer, _ = load_model(merge_config)
    merged = model.merge_and_unload()
    merged.save_pretrained(str(target))
    tokenizer.save_pretrained(str(target))
    del model, merged, tokenizer
    release_memory()
    return str(target)


def effective_config(args: Any, spec: RunSpec, info: Any, train_path: Path, init_model: str) -> dict[str, Any]:
    """Every setting that can change the result, after defaults are filled (the parity check diffs this)."""
    trainer_args = {k: v for k, v in args.to_dict().items() if k not in NON_RESULT_ARGS}
    return {
        "init_model": init_model,
        "reference_model": "precomputed from init" if spec.dpo.precompute_ref_log_probs else init_model,
        "trainer": trainer_args,
        "lora": (
            {k: spec.base_model.__dict__[k] for k in ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules")}
            if spec.dpo.use_lora
            else None
        ),
        "policy": {"dtype": info.dtype, "quantization": info.quantization, "device": info.device},
        "devices": {"count": spec.dpo.devices, "strategy": spec.dpo.distributed},
        "format": to_dict(spec.format),
        "train_data_sha256": _sha256(train_path),
    }


def _validated_pairs(spec: RunSpec, inputs: dict[str, Path]) -> tuple[dict[str, list[dict[str, Any]]], Any]:
    return load_and_validate_pairs(inputs["pairs"] / TRAIN, inputs["pairs"] / HELDOUT, spec.validation, tuple(REGISTRY))


def fit(
    spec: RunSpec,
    inputs: dict[str, Path],
    out_dir: Path,
    progress: Progress,
    resume: str | None,
    init_model: str,
) -> dict:
    """Train the policy from `init_model` on the validated train pairs, from `resume` (a checkpoint) or step 0; the
    same on every rank of a multi-device run, where rank 0 alone reports and writes (pipeline.distributed)."""
    from datasets import Dataset
    from trl import DPOTrainer

    config = spec.dpo
    splits, _ = _validated_pairs(spec, inputs)  # validated and reported by `run`; the rows again, here
    dataset = Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in splits["train"]])
    note_topped_up_batch(config, len(dataset), progress)
    policy_config = spec.base_model.model_copy(update=dict(name_or_path=init_model, adapter=None))
    with loaded(policy_config) as m:
        info = m.info
        require_trainable(info, config.use_lora, STAGE)
        args = dpo_trainer_config(config, out_dir, info)
        if is_main_process():
            effective = effective_config(args, spec, info, inputs["pairs"] / TRAIN, init_model)
            write_json(out_dir / EFFECTIVE_CONFIG, effective)
        callbacks = training_callbacks(out_dir, progress, info.device)
        trainer = DPOTrainer(
            model=m.model,
            ref_model=None,
            args=args,
            train_dataset=dataset,
            processing_class=m.tokenizer,
            peft_config=lora_config(spec.base_model) if config.use_lora else None,
            callbacks=callbacks,
        )
        drop_console_printer(trainer)
        output = trainer.train(resume_from_checkpoint=resume)
        raise_if_stopped(callbacks, trainer)
        trainer.save_model(str(out_dir / MODEL_DIR))  # every rank takes part (sharded weights); rank 0 writes
        if is_main_process():
            m.tokenizer.save_pretrained(str(out_dir / MODEL_DIR))
        free_trainer(trainer)
        del trainer
    return {
        "train_pairs": len(splits["train"]),
        "steps": output.global_step,
        "train_runtime_s": output.metrics.get("train_runtime"),
        "load_info": info.to_dict(),
    }


def run(
    spec: RunSpec,
    inputs: dict[str, Path],
    out_dir: Path,
    on_progress: ProgressFn | None = None,
    init: str = "sft",
) -> StageResult:
    if init not in INITS:
        raise ConfigError(f"train_dpo: init must be one of {INITS}, got {init!r}")
    if init == "sft" and "sft_model" not in inputs:
        raise ConfigError("train_dpo(init='sft') needs the train_sft artifact as input 'sft_model'")
    progress = Progress(STAGE, on_progress, role=init)
    config = spec.dpo
    splits, report = _validated_pairs(spec, inputs)
    progress.emit("validation", report=report.to_dict())
    decontamination = pairs_decontamination(splits["train"], splits["heldout"], spec, str(inputs["pairs"]))
    progress.emit("validation", report=decontamination.to_dict())
    decontamination.raise_if_failed()
    init_model = prepare_init(spec, init, inputs, out_dir, progress)
    resume = start_from_checkpoint(out_dir, progress)
    fitted = fit_on_devices(fit, "dpo", spec, inputs, out_dir, progress, resume, init_model=init_model)

    if config.use_lora:
        write_model_ref(out_dir, INIT_DIR if init_model == str(out_dir / INIT_DIR) else init_model, MODEL_DIR)
    else:
        write_model_ref(out_dir, MODEL_DIR, None)
    log = read_log(out_dir)
    first = step_one(log) or {}
    rewards_zero = all(abs(first.get(k, float("nan"))) < 1e-3 for k in ("rewards/chosen", "rewards/rejected"))
    loss_ln2 = abs(first.get("loss", float("nan")) - LN2) < 1e-3
    reference_ok = rewards_zero and (loss_ln2 or config.loss_type != "sigmoid")
    last = log[-1] if log else {}
    return StageResult(
        stage=STAGE,
        role=init,
        outputs={"model": MODEL_DIR, "log": "train_log.jsonl", "effective_config": EFFECTIVE_CONFIG},
        metrics={
            "init_model": init_model,
            "train_pairs": fitted["train_pairs"],
            "steps": fitted["steps"],
            "step1_loss": first.get("loss"),
            "step1_rewards_chosen": first.get("rewards/chosen"),
            "step1_rewards_rejected": first.get("rewards/rejected"),
            "final_loss": last.get("loss"),
            "final_rewards_margins": last.get("rewards/margins"),
            "final_rewards_accuracies": last.get("rewards/accuracies"),
            "train_runtime_s": fitted["train_runtime_s"],
            "resumed_from": Path(resume).name if resume else None,
            "devices": config.devices,
        },
        checks={
            "reference_is_init": {
                "passed": reference_ok,
                "detail": f"step 1: loss {first.get('loss')} (ln 2 = {LN2:.4f}), rewards chosen "
                f"{first.get('rewards/chosen')} / rejected {first.get('rewards/rejected')} (both must be 0)",
            },
        },
        reports=[report.to_dict(), decontamination.to_dict()],
        previews={"effective_config": [read_json(out_dir / EFFECTIVE_CONFIG)]},  # its pairs: make_pairs' preview
        load_info=fitted["load_info"],
        seconds=progress.elapsed(),
    )
