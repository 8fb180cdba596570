"""What train_sft and train_dpo share: LoRA and precision settings, the JSON-lines step log, checkpoints and
the `model_ref.json` that tells later stages how to load a trained model."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from pipeline.core.configs import ModelConfig
from pipeline.core.errors import ConfigError, StopRequested
from pipeline.models import LoadInfo, current_rss_bytes
from pipeline.stages import Progress, read_json, write_json

LOG_FILE = "train_log.jsonl"
CHECKPOINTS = "checkpoints"
MODEL_DIR = "model"
MODEL_REF = "model_ref.json"


def lora_config(model_config: ModelConfig) -> Any:
    from peft import LoraConfig

    targets = model_config.lora_target_modules
    return LoraConfig(
        r=model_config.lora_r,
        lora_alpha=model_config.lora_alpha,
        lora_dropout=model_config.lora_dropout,
        target_modules=targets if targets == "all-linear" else [t.strip() for t in targets.split(",") if t.strip()],
        task_type="CAUSAL_LM",
    )


def sft_trainer_config(config: Any, out_dir: Path, info: LoadInfo) -> Any:
    """TRL's SFTConfig from our SFT section: the loss on completion tokens only (checked by the mask verifier)."""
    from trl import SFTConfig

    return SFTConfig(**trainer_args(config, out_dir, info), completion_only_loss=True, packing=False)


def dpo_trainer_config(config: Any, out_dir: Path, info: LoadInfo, precompute: bool | None = None) -> Any:
    """TRL's DPOConfig from our DPO section (`precompute` overrides precompute_ref_log_probs, for the benchmark)."""
    from trl import DPOConfig

    return DPOConfig(
        **trainer_args(config, out_dir, info),
        beta=config.beta,
        loss_type=[config.loss_type],
        precompute_ref_log_probs=config.precompute_ref_log_probs if precompute is None else precompute,
    )


def trainer_args(config: Any, out_dir: Path, info: LoadInfo) -> dict[str, Any]:
    """TRL config arguments train_sft and train_dpo share, from our SFTConfig / DPOConfig fields."""
    return {
        "output_dir": str(out_dir / CHECKPOINTS),
        "learning_rate": config.learning_rate,
        "num_train_epochs": config.num_epochs,
        "max_steps": config.max_steps,
        "per_device_train_batch_size": config.per_device_batch,  # the global batch, split over the ranks
        "gradient_accumulation_steps": config.grad_accumulation,
        "warmup_steps": config.warmup_ratio,  # a float < 1 is a ratio of total steps in transformers 5
        "lr_scheduler_type": "linear",
        "max_length": config.max_length,
        "logging_steps": 1,
        "save_strategy": "steps",
        "save_steps": config.checkpoint_every,
        "save_total_limit": 2,
        "seed": config.seed,
        "data_seed": config.seed,
        "report_to": "none",
        "disable_tqdm": True,
        "activation_checkpointing": config.activation_checkpointing,
        "dataloader_num_workers": 0,
        **precision_args(info),
    }


def precision_args(info: LoadInfo) -> dict[str, Any]:
    """Trainer precision flags that match how the model was loaded (TRL defaults to bf16, which fails on CPU)."""
    if info.device == "cpu":
        return {"use_cpu": True, "bf16": False, "fp16": False}
    return {"bf16": info.dtype == "bfloat16", "fp16": info.dtype == "float16"}


def require_trainable(info: LoadInfo, use_lora: bool, stage: str) -> None:
    if info.quantization == "8bit" and not use_lora:
        raise ConfigError(
            f"{stage}: full fine-tuning needs 16-bit weights but the model was loaded in 8-bit; "
            "set use_lora: true, or ModelConfig.load_in_8bit: false"
        )


def last_checkpoint(out_dir: Path) -> str | None:
    """The newest complete checkpoint in `out_dir`, or None.

    The Trainer writes `trainer_state.json` last; a checkpoint without it was cut off by a kill mid-save and
    would break the resume, so it is removed and the one before it is used.
    """
    folder = out_dir / CHECKPOINTS
    if not folder.is_dir():
        return None
    candidates = [p for p in folder.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]
    for candidate in sorted(candidates, key=lambda p: int(p.name.split("-")[-1]), reverse=True):
        try:
            json.loads((candidate / "trainer_state.json").read_text())
            return str(candidate)
        except (OSError, ValueError):
            shutil.rmtree(candidate, ignore_errors=True)
    return None


def start_from_checkpoint(out_dir: Path, progress: Progress) -> str | None:
    """Where this attempt starts: the newest complete checkpoint, or None for step 0. Either way the log keeps
    only the steps before it and a `resumed` event says so, so that every step an earlier attempt logged and this
    one redoes (after a kill before the first checkpoint too) is recorded once, not twice."""
    resume = last_checkpoint(out_dir)
    step = int(Path(resume).name.split("-")[-1]) if resume else 0
    trim_log_to(out_dir, step)
    if resume:
        progress.log(f"resuming from {Path(resume).name}")
    progress.emit("resumed", step=step)
    return resume


def trim_log_to(out_dir: Path, step: int) -> None:
    """Drop log lines after `step`: they are recomputed and logged again."""
    path = out_dir / LOG_FILE
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in kept))


def read_log(out_dir: Path) -> list[dict[str, Any]]:
    path = out_dir / LOG_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def note_topped_up_batch(config: Any, examples: int, progress: Progress) -> None:
    """On several devices the last batch of an epoch that cannot give every device a share is topped up with the
    epoch's first examples (accelerate's `even_batches`, so no rank waits on another): say so where it happens."""
    if config.devices > 1 and examples % config.batch_size:
        progress.log(
            f"{examples} examples do not fill the last batch of {config.batch_size} over {config.devices} devices: "
            "each epoch's last step is topped up with examples from its start (one device would take a smaller batch)"
        )


def training_callbacks(out_dir: Path, progress: Progress, device: str) -> list[Any]:
    """The step log (the process that writes: the only one, or rank 0) and, on several ranks, the agreed stop."""
    from pipeline import distributed

    rank = distributed.current()
    # one process: the stop is checked after every micro-batch; several ranks agree on a stop at a step instead
    log = make_log_callback(out_dir, progress, device, check_every_micro_batch=rank is None)
    callbacks = [log] if distributed.is_main_process() else []
    if rank is not None:
        callbacks.append(distributed.stop_callback(rank))
    return callbacks


def make_log_callback(out_dir: Path, progress: Progress, device: str, check_every_micro_batch: bool = True) -> Any:
    """A TrainerCallback writing one JSON line per logged step (loss, lr, grad norm, tokens/s, memory), which also
    stops training when the job is told to (preemption): after the micro-batch it is in, not at the end of the
    optimizer step (with 16 accumulation steps that was 20 s on CPU, past RunPod's 5 s). The Trainer leaves its loop
    after that micro-batch and saves a checkpoint of the last completed step (the weights the optimizer last wrote;
    the partial step's gradients are dropped and the step is done again on resume, logged once)."""
    from transformers import TrainerCallback

    class JsonlLog(TrainerCallback):
        def __init__(self) -> None:
            self.stop_requested = False
            self.last_time = time.perf_counter()
            self.last_tokens: float | None = None

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> None:
            logs = logs or {}
            if "loss" not in logs:
                return  # the end-of-training summary line
            now = time.perf_counter()
            tokens = logs.get("num_tokens")
            tokens_per_s = None
            if tokens is not None and self.last_tokens is not None and now > self.last_time:
                tokens_per_s = round((tokens - self.last_tokens) / (now - self.last_time), 2)
            self.last_time, self.last_tokens = now, tokens
            row = {
                "step": state.global_step,
                "epoch": round(state.epoch or 0.0, 4),
                "loss": logs["loss"],
                "lr": logs.get("learning_rate"),
                "grad_norm": logs.get("grad_norm"),
                "tokens_per_s": tokens_per_s,
                "memory_bytes": _memory_now(device),
                "time": time.time(),
            }
            row.update({k: v for k, v in logs.items() if k.startswith(("rewards/", "logps/")) or k == "num_tokens"})
            with open(out_dir / LOG_FILE, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(row) + "\n")
            try:
                progress.metric(state.global_step, row)
                if state.max_steps:
                    progress.progress(state.global_step, state.max_steps, f"step {state.global_step}/{state.max_steps}")
            except StopRequested:
                self._stop(control)

        def on_substep_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self._check(control)

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self._check(control)

        def _check(self, control: Any) -> None:
            if not check_every_micro_batch or self.stop_requested:
                return
            try:
                progress.check_stop()
            except StopRequested:
                self._stop(control)

        def _stop(self, control: Any) -> None:
            # save a checkpoint at the last completed step and leave the training loop; the stage then raises
            control.should_save = True
            control.should_training_stop = True
            self.stop_requested = True

    return JsonlLog()


def _memory_now(device: str) -> int:
    if device == "cuda":
        import torch

        return int(torch.cuda.memory_allocated())
    return current_rss_bytes()


def raise_if_stopped(callbacks: list[Any], trainer: Any) -> None:
    """After `train()` returned because a stop was requested: the checkpoint is saved, the stage is not done."""
    if any(callback.stop_requested for callback in callbacks):
        raise StopRequested(f"stopped at step {trainer.state.global_step}; checkpoint saved, resume continues there")


def drop_console_printer(trainer: Any) -> None:
    """Our JSON-lines log and events replace the Trainer's printed log dicts."""
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)


def free_trainer(trainer: Any) -> None:
    """Drop what a Trainer holds (model, optimizer, accelerator caches) so `loaded(...)` can free the model."""
    trainer.accelerator.free_memory()
    for name in ("model", "model_wrapped", "optimizer", "lr_scheduler", "ref_model"):
        if hasattr(trainer, name):
            setattr(trainer, name, None)
    handler = trainer.callback_handler
    for name in ("model", "optimizer", "lr_scheduler", "train_dataloader"):
        if hasattr(handler, name):
            setattr(handler, name, None)


def write_model_ref(out_dir: Path, name_or_path: str, adapter: str | None) -> None:
    """How a later stage loads this model: a base (path or id) and an optional adapter, relative when inside."""
    write_json(out_dir / MODEL_REF, {"name_or_path": name_or_path, "adapter": adapter})


def model_config_from_ref(artifact_dir: Path, base: ModelConfig) -> ModelConfig:
    """A ModelConfig for a trained model: the base's settings with the artifact's weights and adapter."""

    ref = read_json(artifact_dir / MODEL_REF)

    def resolve(value: str | None) -> str | None:
        if value is None:
            return None
        return str(artifact_dir / value) if (artifact_dir / value).exists() else value

    return base.model_copy(update=dict(name_or_path=resolve(ref["name_or_path"]), adapter=resolve(ref["adapter"])))


def step_one(log: list[dict[str, Any]]) -> dict[str, Any] | None:
    return next((row for row in log if row["step"] == 1), None)
