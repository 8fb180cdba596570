"""train_sft: TRL `SFTTrainer` on prompt/completion records, completion-only loss, verified before step one.

Records are tokenized here (`formats.tokenize_record`: the prompt/completion boundary, or every assistant turn of a
multi-turn conversation) and handed to TRL as `input_ids` and `labels`; before the first optimizer step this stage
runs `verify_masking` on batches from the trainer's own collator, so a template or tokenizer that shifts the
boundary fails the stage with the offending example instead of silently training on prompt tokens.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from pipeline.core.configs import RunSpec
from pipeline.core.errors import DataError, MaskingError
from pipeline.core.registry import stage, stage_of_module
from pipeline.distributed import fit_on_devices, is_main_process
from pipeline.formats import DropCounter, mask_example_view, tokenize_record, verify_batch
from pipeline.models import loaded
from pipeline.stages import Progress, ProgressFn, StageResult, write_json
from pipeline.stages.generate_sft import OUTPUT as SFT_RECORDS
from pipeline.stages.split import sft_decontamination
from pipeline.training import (
    MODEL_DIR,
    drop_console_printer,
    free_trainer,
    lora_config,
    note_topped_up_batch,
    raise_if_stopped,
    read_log,
    require_trainable,
    sft_trainer_config,
    start_from_checkpoint,
    training_callbacks,
    write_model_ref,
)
from pipeline.validation import load_and_validate_sft

STAGE = stage_of_module(__name__)
MASK_EXAMPLES = 3


def verify_trainer_masking(
    trainer: Any, completions: list[list[str]], tokenizer: Any, rows: int
) -> list[dict[str, Any]]:
    """Collate the first `rows` prepared examples with the trainer's collator and verify each mask against the texts
    its trained spans must be (the completion; every assistant turn of a multi-turn conversation).

    Returns mask-viewer examples. Raises `MaskingError` naming the example on the first mismatch.
    """
    dataset = trainer.train_dataset
    if len(dataset) != len(completions):
        raise MaskingError(
            f"the trainer prepared {len(dataset)} examples from {len(completions)} records: TRL dropped examples "
            "this stage did not expect (check max_length against the longest prompt)"
        )
    tensor_columns = [c for c in dataset.column_names if c not in ("prompt", "completion")]
    examples = []
    for start in range(0, min(rows, len(dataset)), trainer.args.per_device_train_batch_size):
        indices = list(range(start, min(start + trainer.args.per_device_train_batch_size, rows, len(dataset))))
        batch = trainer.data_collator([{c: dataset[i][c] for c in tensor_columns} for i in indices])
        verify_batch(tokenizer, batch, [completions[i] for i in indices], start_index=start)
        for row in range(min(len(indices), MASK_EXAMPLES - len(examples))):
            ids, labels = batch["input_ids"][row].tolist(), batch["labels"][row].tolist()
            if "attention_mask" in batch:  # right padding: keep the real tokens
                real = int(batch["attention_mask"][row].sum())
                ids, labels = ids[:real], labels[:real]
            examples.append({"index": indices[row], "tokens": mask_example_view(tokenizer, ids, labels)})
    return examples


def training_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The SFT records SFT trains on: the train prompts' (no held-out prompt)."""
    return [r for r in records if (r.get("meta") or {}).get("split") == "train"]


def fit(spec: RunSpec, inputs: dict[str, Path], out_dir: Path, progress: Progress, resume: str | None) -> dict:
    """Validate, tokenize, verify the masks and train, from `resume` (a checkpoint) or step 0; the same on every rank
    of a multi-device run, where rank 0 alone reports and writes (pipeline.distributed). Returns JSON values."""
    from datasets import Dataset
    from trl import SFTTrainer

    config = spec.sft
    with loaded(spec.base_model) as m:
        tokenizer, info = m.tokenizer, m.info
        # validated with the tokenizer that trains: a literal special token in a completion is refused here
        all_records, report = load_and_validate_sft(inputs["sft"] / SFT_RECORDS, spec.validation, tokenizer)
        progress.emit("validation", report=report.to_dict())
        decontamination = sft_decontamination(all_records, spec, str(inputs["sft"] / SFT_RECORDS))
        progress.emit("validation", report=decontamination.to_dict())
        decontamination.raise_if_failed()
        records = training_records(all_records)
        progress.log(f"{len(records)} training records ({len(all_records) - len(records)} held-out prompts left out)")
        require_trainable(info, config.use_lora, STAGE)
        drops = DropCounter()
        kept = []
        for row, record in enumerate(records, start=1):
            example = tokenize_record(tokenizer, record, config.max_length, config.min_completion_tokens)
            if isinstance(example, str):
                drops.add(row, example)
            else:
                kept.append(example)
        if not kept:
            raise DataError(
                f"train_sft: every record of {inputs['sft'] / SFT_RECORDS} was dropped by tokenization "
                f"({drops.dropped}); raise SFTConfig.max_length ({config.max_length})"
            )
        progress.log(f"{len(kept)} examples, {drops.total} dropped {drops.dropped}")
        # tokenized here, exactly as generation and evaluation encode prompts (one BOS, the boundary where the prompt
        # ends); TRL takes `input_ids` and `labels` as they are, and its collator is what the mask check verifies
        dataset = Dataset.from_list([{"input_ids": e.input_ids, "labels": e.labels} for e in kept])
        note_topped_up_batch(config, len(kept), progress)
        args = sft_trainer_config(config, out_dir, info)
        callbacks = training_callbacks(out_dir, progress, info.device)
        trainer = SFTTrainer(
            model=m.model,
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=lora_config(spec.base_model) if config.use_lora else None,
            callbacks=callbacks,
        )
        drop_console_printer(trainer)
        rows_to_check = max(1, math.ceil(config.mask_check_fraction * len(kept)))
        mask_examples = verify_trainer_masking(trainer, [e.targets for e in kept], tokenizer, rows_to_check)
        progress.log(f"masking verified on {rows_to_check} of {len(kept)} examples from the trainer's collator")
        before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
        output = trainer.train(resume_from_checkpoint=resume)
        raise_if_stopped(callbacks, trainer)
        changed = sum(int(not p.detach().equal(before[n])) for n, p in trainer.model.named_parameters() if n in before)
        trainer.save_model(str(out_dir / MODEL_DIR))  # every rank takes part (sharded weights); rank 0 writes
        if is_main_process():
            tokenizer.save_pretrained(str(out_dir / MODEL_DIR))
        free_trainer(trainer)
        del trainer, before
    return {
        "examples": len(kept),
        "dropped": drops.total,
        "dropped_by_reason": drops.dropped,
        "steps": output.global_step,
        "train_runtime_s": output.metrics.get("train_runtime"),
        "parameters_changed": changed,
        "rows_checked": rows_to_check,
        "mask_examples": mask_examples,
        "reports": [report.to_dict(), decontamination.to_dict()],
        "load_info": info.to_dict(),
    }


def run(spec: RunSpec, inputs: dict[str, Path], out_dir: Path, on_progress: ProgressFn | None = None) -> StageResult:
    progress = Progress(STAGE, on_progress)
    config = spec.sft
    resume = start_from_checkpoint(out_dir, progress)
    fitted = fit_on_devices(fit, "sft", spec, inputs, out_dir, progress, resume)
    if config.use_lora:
        write_model_ref(out_dir, spec.base_model.name_or_path, MODEL_DIR)
    else:
        write_model_ref(out_dir, MODEL_DIR, None)
    write_json(out_dir / "config.json", stage(STAGE).config_slice(spec))
    log = read_log(out_dir)
    losses = [row["loss"] for row in log]
    finite = all(math.isfinite(x) for x in losses)
    changed, kept, rows_checked = fitted["parameters_changed"], fitted["examples"], fitted["rows_checked"]
    return StageResult(
        stage=STAGE,
        outputs={"model": MODEL_DIR, "log": "train_log.jsonl"},
        metrics={
            "examples": kept,
            "dropped": fitted["dropped"],
            "dropped_by_reason": fitted["dropped_by_reason"],
            "steps": fitted["steps"],
            "initial_loss": losses[0] if losses else None,
            "final_loss": losses[-1] if losses else None,
            "train_runtime_s": fitted["train_runtime_s"],
            "resumed_from": Path(resume).name if resume else None,
            "parameters_changed": changed,
            "devices": config.devices,
        },
        checks={
            "masking_verified": {
                "passed": True,
                "detail": f"{rows_checked} of {kept} examples, as the trainer collated them",
            },
            "loss_finite": {"passed": finite, "detail": f"{len(losses)} logged steps"},
            "parameters_changed": {"passed": changed > 0, "detail": f"{changed} trainable tensors changed"},
        },
        reports=fitted["reports"],
        previews={"mask_examples": fitted["mask_examples"]},
        load_info=fitted["load_info"],
        seconds=progress.elapsed(),
    )
