"""Config dataclasses: the single source for the dashboard's forms, the CLI flags and saved run configs.

Every field carries `metadata={"help": ...}` (plus optional `choices`, `min`, `max`); `__post_init__` checks
them and raises `ConfigError` naming the field and the allowed range. A `RunSpec` round-trips through
YAML and JSON unchanged (`to_dict` / `from_dict`); unknown keys are an error that names them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigError

# The negative types alignlab knows; `pipeline.stages.negatives` registers one function for each.
NEGATIVE_TYPES: tuple[str, ...] = (
    "model_sample",
    "truncated",
    "off_topic",
    "repetitive",
    "refusal",
    "constraint_violation",
)

# Stage names in DAG order. `train_dpo` runs twice (init = sft model, init = base model);
# `evaluate` runs once per method.
STAGES: tuple[str, ...] = (
    "split_prompts",
    "generate_sft",
    "train_sft",
    "generate_negatives",
    "make_pairs",
    "train_dpo",
    "evaluate",
    "compare",
)
METHODS: tuple[str, ...] = ("base", "sft", "sft_dpo", "dpo_only")
# the per-item metrics compare pairs methods on (pipeline.stages.compare reads each one)
COMPARE_METRICS: tuple[str, ...] = (
    "preference_accuracy",
    "preference_accuracy_per_token",
    "implicit_reward_accuracy",
    "margin",
    "reference_nll",
    "exact_match",
    "token_f1",
    "eos_rate",
    "distinct_2",
    "repetition",
    "template_leak_rate",
    "refusal_rate",
    "new_tokens",
)

TINY_MODEL = "alignlab-tiny"  # resolved by pipeline.models to the offline tiny model built under ALIGNLAB_HOME


def opt(default: Any = dataclasses.MISSING, help: str = "", *, factory: Any = None, **checks: Any) -> Any:
    """A dataclass field with help text and optional `choices`, `min`, `max` checks in its metadata."""
    metadata = {"help": help, **checks}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against the annotation `tp`; widen int to float; turn lists into the declared container."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        names = " or ".join(_type_name(a) for a in args)
        raise ConfigError(f"{where}: expected {names}, got {value!r}")
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        key_tp, val_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return {_coerce(k, key_tp, where): _coerce(v, val_tp, f"{where}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{where}: {value} is not a finite number (NaN and infinity are not valid values)")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return from_dict(tp, value, where)
    return value


def check_fields(obj: Any) -> None:
    """Type-check every field of a config dataclass and enforce its `choices` / `min` / `max` metadata."""
    hints = typing.get_type_hints(type(obj))
    name = type(obj).__name__
    for f in dataclasses.fields(obj):
        where = f"{name}.{f.name}"
        value = _coerce(getattr(obj, f.name), hints[f.name], where)
        object.__setattr__(obj, f.name, value)
        if value is None:
            continue
        choices = f.metadata.get("choices")
        items = value if isinstance(value, list) else [value]
        if choices is not None:
            for item in items:
                if item not in choices:
                    raise ConfigError(f"{where}: {item!r} is not allowed; choose one of {', '.join(map(str, choices))}")
        low, high = f.metadata.get("min"), f.metadata.get("max")
        if isinstance(value, int | float) and not isinstance(value, bool):
            if (low is not None and value < low) or (high is not None and value > high):
                lo = "-inf" if low is None else low
                hi = "inf" if high is None else high
                raise ConfigError(f"{where}: {value!r} is out of range; allowed {lo} .. {hi}")


def _require(condition: bool, where: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{where}: {message}")


@dataclass
class ModelConfig:
    name_or_path: str = opt(TINY_MODEL, "Hugging Face model id or local directory of the model.")
    revision: str | None = opt(None, "Hub revision (branch, tag or commit) to pin; ignored for local paths.")
    dtype: str = opt(
        "auto",
        "Weights dtype. auto = bfloat16 on a GPU that supports it, else float16 on GPU, float32 on CPU.",
        choices=("auto", "bfloat16", "float16", "float32"),
    )
    load_in_8bit: str | bool = opt(
        "auto",
        "8-bit weights via bitsandbytes. auto = only when the model would not fit in 16-bit on the device.",
    )
    device: str = opt("auto", "Where to load: auto = cuda when available, else cpu.", choices=("auto", "cpu", "cuda"))
    trust_remote_code: bool = opt(False, "Run model code shipped with the checkpoint. Off unless you trust it.")
    adapter: str | None = opt(None, "LoRA adapter directory to load on top of the base model (PEFT).")
    lora_r: int = opt(16, "LoRA rank.", min=1, max=1024)
    lora_alpha: int = opt(32, "LoRA alpha (scaling = alpha / r).", min=1, max=4096)
    lora_dropout: float = opt(0.05, "LoRA dropout.", min=0.0, max=0.9)
    lora_target_modules: str = opt(
        "all-linear", "Modules LoRA adapts: all-linear, or a comma-separated list such as q_proj,v_proj."
    )

    def __post_init__(self) -> None:
        check_fields(self)
        _require(self.name_or_path.strip() != "", "ModelConfig.name_or_path", "must name a model id or a directory")
        _require(
            self.load_in_8bit in ("auto", True, False),
            "ModelConfig.load_in_8bit",
            f"{self.load_in_8bit!r} is not allowed; use auto, true or false",
        )


@dataclass
class FormatConfig:
    template: str = opt(
        "Instruction: {instruction}\nResponse:",
        "Prompt template with one {instruction} placeholder; completions follow it directly.",
    )
    chat_template: str = opt(
        "auto",
        "Use the tokenizer's chat template: auto = when the tokenizer has one, always, or never.",
        choices=("auto", "always", "never"),
    )

    def __post_init__(self) -> None:
        check_fields(self)
        where = "FormatConfig.template"
        _require(self.template.count("{instruction}") == 1, where, "must contain {instruction} exactly once")
        _require(
            self.template == self.template.rstrip(),
            where,
            "must not end with whitespace (the completion carries its own leading space; a trailing space merges "
            "with the first completion token and shifts the loss mask)",
        )
        try:
            self.template.format(instruction="x")
        except (KeyError, IndexError, ValueError) as exc:
            raise ConfigError(f"{where}: only {{instruction}} may appear in braces ({exc})") from exc


@dataclass
class DataConfig:
    instructions: str = opt(
        "demo",
        "Instructions: 'demo' (shipped demo set), a JSONL file with an 'instruction' field, or a Hugging Face "
        "dataset id.",
    )
    split: str = opt("train", "Dataset split when `instructions` is a Hugging Face dataset.")
    instruction_field: str = opt("instruction", "Field that holds the instruction text.")
    max_instructions: int = opt(0, "Use at most this many instructions (0 = all).", min=0)

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass
class GenerationConfig:
    batch_size: int = opt(8, "Prompts generated together in one batch.", min=1, max=1024)
    max_new_tokens: int = opt(64, "Maximum new tokens per response.", min=1, max=8192)
    do_sample: bool = opt(True, "Sample (true) or greedy decoding (false).")
    temperature: float = opt(0.7, "Sampling temperature.", min=0.01, max=5.0)
    top_p: float = opt(0.9, "Nucleus sampling probability mass.", min=0.01, max=1.0)
    retries: int = opt(2, "Extra attempts, each with another seed, for a rejected response.", min=0, max=20)
    min_response_chars: int = opt(8, "Responses shorter than this (after cleaning) are rejected.", min=1)
    max_response_chars: int = opt(2000, "Responses longer than this (after cleaning) are rejected.", min=1)
    max_repeated_ngram_fraction: float = opt(
        0.5, "Reject a response when more than this fraction of its word 3-grams are repeats.", min=0.0, max=1.0
    )
    max_rejected_fraction: float = opt(
        0.5, "Fail the stage when more than this share of instructions is dropped after all retries.", min=0, max=1
    )
    seed: int = opt(0, "Random seed for sampling; retry k uses seed + 1000 k.", min=0)

    def __post_init__(self) -> None:
        check_fields(self)
        _require(
            self.min_response_chars < self.max_response_chars,
            "GenerationConfig.min_response_chars",
            f"must be below max_response_chars ({self.max_response_chars})",
        )


@dataclass
class NegativesConfig:
    types: list[str] = opt(
        help="Negative types to generate.", factory=lambda: list(NEGATIVE_TYPES), choices=NEGATIVE_TYPES
    )
    weights: dict[str, float] = opt(
        help="Target share of each type among the pairs (normalized; missing types weigh 1).", factory=dict
    )
    per_prompt: int = opt(2, "Negatives generated per prompt (types drawn by weight).", min=1, max=len(NEGATIVE_TYPES))
    sample_temperature: float = opt(1.5, "Temperature of the `model_sample` negatives.", min=0.01, max=5.0)
    max_new_tokens: int = opt(48, "Maximum new tokens of a `model_sample` negative.", min=1, max=8192)
    seed: int = opt(0, "Random seed for type choice and corruptions.", min=0)

    def __post_init__(self) -> None:
        check_fields(self)
        _require(len(self.types) > 0, "NegativesConfig.types", "name at least one negative type")
        _require(len(set(self.types)) == len(self.types), "NegativesConfig.types", "lists a type twice")
        for name, weight in self.weights.items():
            _require(
                name in self.types,
                f"NegativesConfig.weights.{name}",
                f"weights a type that is not in types ({', '.join(self.types)})",
            )
            _require(weight >= 0, f"NegativesConfig.weights.{name}", "must be >= 0")
        _require(
            sum(self.weight_of(t) for t in self.types) > 0, "NegativesConfig.weights", "at least one weight must be > 0"
        )

    def weight_of(self, negative_type: str) -> float:
        return self.weights.get(negative_type, 1.0)

    def normalized_weights(self) -> dict[str, float]:
        total = sum(self.weight_of(t) for t in self.types)
        return {t: self.weight_of(t) / total for t in self.types}


@dataclass
class SplitConfig:
    heldout_fraction: float = opt(
        0.2, "Share of prompts held out for evaluation, chosen before any stage trains.", min=0.01, max=0.9
    )
    seed: int = opt(0, "Random seed of the split.", min=0)
    split_field: str = opt(
        "split",
        "A field of the instructions that fixes each row's split (train / heldout), as many datasets ship; when "
        "the rows have it, it wins over heldout_fraction. Empty = always split by heldout_fraction.",
    )
    reference_field: str = opt(
        "response",
        "A field with the reference answer, when the data has one: evaluation scores correctness against it "
        "(exact match, token F1). Empty or absent = no correctness metric.",
    )
    ngram: int = opt(8, "Word n-gram length of the decontamination check.", min=3, max=50)
    max_ngram_overlap: float = opt(
        0.8,
        "A held-out text counts as contaminated when this share of its n-grams (or the whole text) occurs in a "
        "training input.",
        min=0.0,
        max=1.0,
    )
    max_contaminated_fraction: float = opt(
        0.0, "Fail a training stage when more than this share of held-out texts is contaminated.", min=0.0, max=1.0
    )

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass
class PairsConfig:
    balance_types: bool = opt(True, "Subsample so the negative-type mix follows NegativesConfig.weights.")
    max_pairs_per_prompt: int = opt(4, "Keep at most this many pairs per prompt.", min=1)
    seed: int = opt(0, "Random seed of the balancing.", min=0)

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass
class SFTConfig:
    learning_rate: float = opt(2e-4, "Peak learning rate.", min=1e-8, max=1.0)
    num_epochs: float = opt(1.0, "Training epochs.", min=0.01, max=100.0)
    max_steps: int = opt(-1, "Stop after this many optimizer steps (-1 = run all epochs).", min=-1)
    batch_size: int = opt(4, "Per-device batch size.", min=1, max=4096)
    grad_accumulation: int = opt(1, "Gradient accumulation steps.", min=1, max=4096)
    max_length: int = opt(512, "Maximum tokens of prompt + completion.", min=8, max=131072)
    min_completion_tokens: int = opt(
        4, "An example whose truncation would keep fewer completion tokens is dropped and counted.", min=1
    )
    use_lora: bool = opt(True, "Train a LoRA adapter (true) or all weights (false).")
    warmup_ratio: float = opt(0.0, "Share of steps for linear warm-up.", min=0.0, max=0.5)
    checkpoint_every: int = opt(50, "Save a resumable checkpoint every N steps.", min=1)
    mask_check_fraction: float = opt(
        1.0,
        "Share of training examples whose loss mask is verified, as the trainer collates them, before the first "
        "step (1.0 = every example; the count is shown).",
        min=0.01,
        max=1.0,
    )
    activation_checkpointing: bool = opt(False, "Recompute activations in backward to save memory (slower).")
    seed: int = opt(0, "Random seed.", min=0)

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass
class DPOConfig:
    learning_rate: float = opt(5e-5, "Peak learning rate.", min=1e-9, max=1.0)
    num_epochs: float = opt(1.0, "Training epochs.", min=0.01, max=100.0)
    max_steps: int = opt(-1, "Stop after this many optimizer steps (-1 = run all epochs).", min=-1)
    batch_size: int = opt(4, "Per-device batch size (pairs).", min=1, max=4096)
    grad_accumulation: int = opt(1, "Gradient accumulation steps.", min=1, max=4096)
    max_length: int = opt(512, "Maximum tokens of prompt + response.", min=8, max=131072)
    use_lora: bool = opt(True, "Train a LoRA adapter (true) or all weights (false).")
    beta: float = opt(0.1, "DPO beta: strength of the pull towards the reference model.", min=1e-4, max=10.0)
    loss_type: str = opt(
        "sigmoid",
        "DPO loss.",
        choices=("sigmoid", "hinge", "ipo", "robust", "bco_pair", "sppo_hard", "aot", "apo_zero", "apo_down"),
    )
    precompute_ref_log_probs: bool = opt(
        False, "Compute reference log-probs once before training instead of a reference forward every step."
    )
    warmup_ratio: float = opt(0.0, "Share of steps for linear warm-up.", min=0.0, max=0.5)
    checkpoint_every: int = opt(50, "Save a resumable checkpoint every N steps.", min=1)
    activation_checkpointing: bool = opt(False, "Recompute activations in backward to save memory (slower).")
    seed: int = opt(0, "Random seed.", min=0)

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass
class EvalConfig:
    max_prompts: int = opt(0, "Evaluate at most this many held-out prompts (0 = all).", min=0)
    batch_size: int = opt(8, "Prompts generated together in one batch.", min=1, max=1024)
    max_new_tokens: int = opt(64, "Maximum new tokens per generation.", min=1, max=8192)
    do_sample: bool = opt(False, "Sample (true) or greedy decoding (false, the default for comparable outputs).")
    temperature: float = opt(1.0, "Sampling temperature (only when do_sample).", min=0.01, max=5.0)
    top_p: float = opt(1.0, "Nucleus sampling mass (only when do_sample).", min=0.01, max=1.0)
    seed: int = opt(0, "Random seed of the generations.", min=0)

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass
class ValidationConfig:
    max_error_rate: float = opt(
        0.0, "Share of rows that may have errors before a file fails validation (0 = any error fails).", min=0, max=1
    )
    max_text_chars: int = opt(20000, "Longest prompt or response accepted, in characters.", min=1)
    max_tokens: int = opt(4096, "Longest prompt + response accepted, in tokens (checked when a tokenizer is given).")
    type_mix_tolerance: float = opt(
        0.15, "Warn when a negative type's share differs from its configured weight by more than this.", min=0, max=1
    )

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass
class CompareConfig:
    confidence: float = opt(0.95, "Confidence level of the bootstrap intervals.", min=0.5, max=0.999)
    n_bootstrap: int = opt(2000, "Bootstrap resamples.", min=100, max=100000)
    seed: int = opt(0, "Random seed of the bootstrap.", min=0)
    primary_metric: str = opt(
        "preference_accuracy",
        "The metric that answers 'did SFT before DPO help?', named before the run (SFT→DPO − DPO-only); every "
        "other difference is exploratory.",
        choices=COMPARE_METRICS,
    )
    correction: str = opt(
        "holm",
        "Family correction of the exploratory verdicts: holm (family-wise error) or bh (false discovery rate).",
        choices=("holm", "bh"),
    )
    min_discordant_prompts: int = opt(
        10, "Below this many prompts on which two methods differ at all, no verdict is given.", min=1
    )

    def __post_init__(self) -> None:
        check_fields(self)


QUEUE_NAMES: tuple[str, ...] = ("gpu", "gpu-80gb", "cpu")
DEFAULT_TIMEOUTS = {
    "split_prompts": 1800,
    "generate_sft": 4 * 3600,
    "train_sft": 12 * 3600,
    "generate_negatives": 4 * 3600,
    "make_pairs": 1800,
    "train_dpo": 12 * 3600,
    "evaluate": 4 * 3600,
    "compare": 1800,
}


@dataclass
class ExecutionConfig:
    queues: dict[str, str] = opt(
        help="Queue (resource class) per stage; stages not listed use `default_queue`; compare defaults to cpu.",
        factory=lambda: {"compare": "cpu", "make_pairs": "cpu"},
    )
    default_queue: str = opt("gpu", "Queue for stages not listed in `queues`.", choices=QUEUE_NAMES)
    timeouts: dict[str, int] = opt(
        help="Job timeout per stage in seconds (RQ's default of 180 s would kill any training).",
        factory=lambda: dict(DEFAULT_TIMEOUTS),
    )
    retries: int = opt(1, "RQ retries of a job after a transient failure (e.g. a worker lost mid-job).", min=0, max=10)

    def __post_init__(self) -> None:
        check_fields(self)
        for stage, queue in self.queues.items():
            _require(stage in STAGES, f"ExecutionConfig.queues.{stage}", f"unknown stage; stages: {', '.join(STAGES)}")
            _require(queue in QUEUE_NAMES, f"ExecutionConfig.queues.{stage}", f"{queue!r}; queues: {QUEUE_NAMES}")
        for stage, seconds in self.timeouts.items():
            _require(
                stage in STAGES, f"ExecutionConfig.timeouts.{stage}", f"unknown stage; stages: {', '.join(STAGES)}"
            )
            _require(seconds >= 10, f"ExecutionConfig.timeouts.{stage}", "must be at least 10 seconds")

    def queue_for(self, stage: str) -> str:
        return self.queues.get(stage, self.default_queue)

    def timeout_for(self, stage: str) -> int:
        return self.timeouts.get(stage, DEFAULT_TIMEOUTS[stage])


@dataclass
class RunSpec:
    name: str = opt("run", "Name of the run.")
    preset: str = opt("custom", "Preset the values started from (informational once saved).")
    base_model: ModelConfig = opt(help="The base model.", factory=ModelConfig)
    data: DataConfig = opt(help="Where the instructions come from.", factory=DataConfig)
    split: SplitConfig = opt(help="Held-out prompts, chosen first, and the decontamination check.", factory=SplitConfig)
    stages: list[str] = opt(help="Stages to run, in DAG order.", factory=lambda: list(STAGES), choices=STAGES)
    format: FormatConfig = opt(help="Prompt format shared by every stage.", factory=FormatConfig)
    generation: GenerationConfig = opt(help="generate_sft settings.", factory=GenerationConfig)
    sft: SFTConfig = opt(help="train_sft settings.", factory=SFTConfig)
    negatives: NegativesConfig = opt(help="generate_negatives settings.", factory=NegativesConfig)
    pairs: PairsConfig = opt(help="make_pairs settings.", factory=PairsConfig)
    dpo: DPOConfig = opt(help="train_dpo settings, shared by SFT→DPO and DPO-only.", factory=DPOConfig)
    eval: EvalConfig = opt(help="evaluate settings.", factory=EvalConfig)
    validation: ValidationConfig = opt(help="Validation thresholds at every hand-off.", factory=ValidationConfig)
    compare: CompareConfig = opt(help="compare settings.", factory=CompareConfig)
    execution: ExecutionConfig = opt(help="Queues, timeouts and retries of the queued jobs.", factory=ExecutionConfig)

    def __post_init__(self) -> None:
        check_fields(self)
        _require(self.name.strip() != "", "RunSpec.name", "must not be empty")
        _require(
            not any(c in self.name for c in "/\\:") and self.name.isprintable() and len(self.name) <= 150,
            "RunSpec.name",
            f"{self.name!r}: use at most 150 printable characters without '/', '\\' or ':'",
        )
        _require(len(set(self.stages)) == len(self.stages), "RunSpec.stages", "lists a stage twice")
        _require(len(self.stages) > 0, "RunSpec.stages", "name at least one stage")
        self.stages = [s for s in STAGES if s in self.stages]  # canonical DAG order


# ----------------------------------------------------------------------------------------------- serialization


def to_dict(config: Any) -> dict[str, Any]:
    """A plain dict (JSON/YAML-ready) of a config dataclass, nested configs included."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def migrate_spec(data: dict[str, Any]) -> dict[str, Any]:
    """A stored or older RunSpec dict in today's layout, explicitly: the held-out share moved from `pairs` to
    `split` when the split began to happen first (its value is kept, not replaced by today's default)."""
    sft = data.get("sft")
    if isinstance(sft, dict) and "mask_check_batches" in sft:  # became mask_check_fraction: now every example
        data = {**data, "sft": {k: v for k, v in sft.items() if k != "mask_check_batches"}}
    pairs = data.get("pairs")
    if isinstance(pairs, dict) and "heldout_fraction" in pairs:
        pairs = dict(pairs)
        fraction = pairs.pop("heldout_fraction")
        split = dict(data.get("split") or {})
        split.setdefault("heldout_fraction", fraction)
        data = {**data, "pairs": pairs, "split": split}
    return data


def from_dict(cls: type, data: dict[str, Any], where: str | None = None) -> Any:
    """Build config `cls` from a dict; unknown keys raise `ConfigError` naming each of them."""
    where = where or cls.__name__
    if cls is RunSpec and isinstance(data, dict):
        data = migrate_spec(data)
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    not_names = [k for k in data if not isinstance(k, str)]
    if not_names:
        keys = ", ".join(repr(k) for k in not_names)
        raise ConfigError(f"{where}: key(s) {keys} are not field names; keys are the names of {cls.__name__} fields")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        keys = ", ".join(f"{where}.{k}" for k in unknown)
        raise ConfigError(f"unknown key(s) {keys}; known keys of {cls.__name__}: {', '.join(sorted(known))}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        tp = hints[key]
        inner = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)] or (
            [tp] if dataclasses.is_dataclass(tp) else []
        )
        kwargs[key] = from_dict(inner[0], value, f"{where}.{key}") if inner and isinstance(value, dict) else value
    return cls(**kwargs)


def dump_spec(spec: RunSpec, path: str | Path) -> Path:
    """Write a RunSpec as YAML (.yaml/.yml) or JSON (anything else)."""
    path = Path(path)
    data = to_dict(spec)
    if path.suffix in (".yaml", ".yml"):
        import yaml

        path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
    else:
        path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def load_spec(path: str | Path) -> RunSpec:
    """Read a RunSpec from YAML or JSON; errors name the file and the offending key."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory, not a config file (give the YAML or JSON file inside it)")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: config file not found") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc})") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror})") from exc
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # yaml.YAMLError / json.JSONDecodeError: both carry the line
        raise ConfigError(f"{path}: not valid {'YAML' if path.suffix in ('.yaml', '.yml') else 'JSON'}: {exc}") from exc
    if not isinstance(data, dict):
        what = "is empty" if data is None else f"holds a {type(data).__name__} ({data!r:.40}), not a mapping"
        raise ConfigError(f"{path}: {what}; a config file maps RunSpec sections (name, sft, dpo, ...) to values")
    try:
        return from_dict(RunSpec, data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


# ----------------------------------------------------------------------------------------------- presets


def _tiny_cpu() -> RunSpec:
    return RunSpec(
        name="tiny-cpu",
        preset="tiny-cpu",
        base_model=ModelConfig(name_or_path=TINY_MODEL, dtype="float32", load_in_8bit=False, device="cpu", lora_r=8),
        data=DataConfig(instructions="demo", max_instructions=120),
        generation=GenerationConfig(batch_size=16, max_new_tokens=40, min_response_chars=4, retries=2),
        sft=SFTConfig(learning_rate=1e-3, num_epochs=2, batch_size=8, max_length=128, checkpoint_every=20),
        negatives=NegativesConfig(per_prompt=2, max_new_tokens=32),
        split=SplitConfig(heldout_fraction=0.25),
        dpo=DPOConfig(learning_rate=5e-4, num_epochs=1, batch_size=8, max_length=128, beta=0.1, checkpoint_every=20),
        eval=EvalConfig(max_prompts=30, batch_size=16, max_new_tokens=40),
        compare=CompareConfig(n_bootstrap=1000),
    )


def _tiny_ci() -> RunSpec:
    spec = _tiny_cpu()
    spec.name = spec.preset = "tiny-ci"
    spec.data.max_instructions = 40
    spec.sft.num_epochs = 1.0
    spec.eval.max_prompts = 12
    spec.eval.max_new_tokens = 24
    spec.generation.max_new_tokens = 32
    return spec


def _qwen05b_runpod() -> RunSpec:
    return RunSpec(
        name="qwen2.5-0.5b-runpod",
        preset="qwen2.5-0.5b-runpod",
        base_model=ModelConfig(name_or_path="Qwen/Qwen2.5-0.5B-Instruct", dtype="bfloat16", load_in_8bit="auto"),
        data=DataConfig(instructions="demo"),
        generation=GenerationConfig(batch_size=64, max_new_tokens=256, max_response_chars=4000),
        sft=SFTConfig(learning_rate=2e-4, num_epochs=2, batch_size=16, max_length=1024, checkpoint_every=100),
        negatives=NegativesConfig(per_prompt=3, max_new_tokens=256),
        split=SplitConfig(heldout_fraction=0.2),
        dpo=DPOConfig(learning_rate=5e-6, num_epochs=1, batch_size=8, grad_accumulation=2, max_length=1024),
        eval=EvalConfig(batch_size=64, max_new_tokens=256),
    )


PRESETS: dict[str, Any] = {
    "tiny-cpu": _tiny_cpu,
    "tiny-ci": _tiny_ci,
    "qwen2.5-0.5b-runpod": _qwen05b_runpod,
}


def preset(name: str) -> RunSpec:
    """A fresh RunSpec for a named preset."""
    if name not in PRESETS:
        raise ConfigError(f"RunSpec.preset: unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]()


# ----------------------------------------------------------------------------------------------- derived specs

SEED_SCOPES = {
    "training": ("sft", "dpo", "eval"),  # the data stages stay cached: seeds measure training noise only
    "everything": ("generation", "negatives", "pairs", "sft", "dpo", "eval", "compare"),
}
DPO_STAGES = ["train_dpo", "evaluate", "compare"]


def with_seed(spec: RunSpec, seed: int, scope: str = "training") -> RunSpec:
    """A copy of `spec` whose seeds in `scope` (see SEED_SCOPES) are `seed`, named `<name>-seed<seed>`."""
    if scope not in SEED_SCOPES:
        raise ConfigError(f"seed scope {scope!r}: choose one of {', '.join(SEED_SCOPES)}")
    data = to_dict(spec)
    for section in SEED_SCOPES[scope]:
        data[section]["seed"] = seed
    data["name"] = f"{spec.name}-seed{seed}"
    return from_dict(RunSpec, data)


def preflight_spec(spec: RunSpec) -> RunSpec:
    """The same model, format and settings at tiny scale: every stage runs on a few prompts for a few steps, so a
    broken model path, template, memory budget or data hand-off shows in minutes instead of hours."""
    data = to_dict(spec)
    data["name"] = f"{spec.name}-preflight"
    data["stages"] = list(STAGES)
    data["data"]["max_instructions"] = 24
    data["generation"]["max_new_tokens"] = min(spec.generation.max_new_tokens, 32)
    data["negatives"]["max_new_tokens"] = min(spec.negatives.max_new_tokens, 32)
    for section in ("sft", "dpo"):
        data[section]["max_steps"] = 2
        data[section]["checkpoint_every"] = 1
    data["eval"]["max_prompts"] = 6
    data["eval"]["max_new_tokens"] = min(spec.eval.max_new_tokens, 32)
    data["compare"]["n_bootstrap"] = 200
    return from_dict(RunSpec, data)
