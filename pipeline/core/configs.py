"""Run configuration as pydantic models: the single source for the dashboard's form, the CLI flags and saved runs.

Every section forbids unknown keys, checks ranges and choices, and refuses NaN/infinity; a failure raises
`ConfigError` naming the section and field ("GenerationConfig.temperature: 0 is out of range; allowed 0.01 .. 5.0").
`RunSpec.model_json_schema()` is what the Launch form and the CLI flags are generated from (`field_table`).

A stored spec carries `spec_version`; `migrate_spec` brings an older one to today's layout, step by declared step,
keeping its recorded values. A stored spec (`load_stored_spec`) must then be complete: a key it lacks is an error,
never today's default in disguise.
"""

from __future__ import annotations

import contextvars
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import annotated_types
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.core import negative_types, registry
from pipeline.core.catalog import SMOLLM2_135M_INSTRUCT
from pipeline.core.documents import (
    MAX_CONFIG_BYTES,
    DocumentError,
    check_strings,
    excerpt,
    parse_document,
    read_config_text,
)
from pipeline.core.errors import ConfigError
from pipeline.core.text import template_parts

METHOD_LABELS: dict[str, str] = {"base": "base", "sft": "SFT", "sft_dpo": "SFT→DPO", "dpo_only": "DPO-only"}
METHODS: tuple[str, ...] = tuple(METHOD_LABELS)  # in the order tables and columns show them
PRIMARY_PAIR = ("sft_dpo", "dpo_only")  # the comparison that answers "did SFT before DPO help?"
UNTRAINED = "base"  # the one method no training seed touches
# the queues (resource classes) and the memory of one device of each in GiB, what the memory planner fits stages
# into (pipeline.core.memory_plan): `gpu` is a 24 GB card (RTX 4090 / A5000 / L4 class), `gpu-80gb` an A100/H100;
# `cpu` has no planned limit
QUEUE_MEMORY_GIB: dict[str, int | None] = {"gpu": 24, "gpu-80gb": 80, "cpu": None}
QUEUE_NAMES: tuple[str, ...] = tuple(QUEUE_MEMORY_GIB)
QueueName = Literal["gpu", "gpu-80gb", "cpu"]
TINY_MODEL = "alignlab-tiny"  # resolved by pipeline.models to the offline tiny model built under ALIGNLAB_HOME
TINY_VERSION = "v2"  # v2: pretrained without the demo's held-out rows (a v1 model under ALIGNLAB_HOME is not reused)


def tiny_dir_name(seed: int = 0) -> str:
    """The tiny model's directory under ALIGNLAB_HOME/models."""
    return f"{TINY_MODEL}-{TINY_VERSION}-seed{seed}"


SPEC_VERSION = 6  # bump with a new entry in MIGRATIONS whenever the stored layout changes


_BUILDING: contextvars.ContextVar[bool] = contextvars.ContextVar("alignlab_config_building", default=False)


def opt(
    default: Any = ...,
    help: str = "",
    *,
    factory: Callable[[], Any] | None = None,
    label: str | None = None,
    multiline: bool = False,
    **checks: Any,
) -> Any:
    """A field with help text, optional ge / le / gt / lt bounds, and how forms show it: a `label` written for people
    where the field's name is not one ("LoRA rank" for lora_r), `multiline` for text whose line breaks matter."""
    extra = {k: v for k, v in (("label", label), ("multiline", multiline)) if v}
    if factory is not None:
        return Field(default_factory=factory, description=help, json_schema_extra=extra or None, **checks)
    return Field(default, description=help, json_schema_extra=extra or None, **checks)


def field_label(dotted: str, schema: dict[str, Any]) -> str:
    """A field's label for people: its declared one, else its name in words ("max_new_tokens" -> "Max new tokens")."""
    words = dotted.rsplit(".", 1)[-1].replace("_", " ")
    return schema.get("label") or words[:1].upper() + words[1:]


# what a researcher sets first and looks for first: Launch shows these at the top, a run's page names them
KEY_SETTINGS: dict[str, str] = {
    "base_model.name_or_path": "Base model",
    "data.instructions": "Instructions",
    "sft.learning_rate": "SFT learning rate",
    "sft.num_epochs": "SFT epochs",
    "dpo.learning_rate": "DPO learning rate",
    "dpo.num_epochs": "DPO epochs",
    "dpo.beta": "DPO β",
}


class Section(BaseModel):
    """A config section: unknown keys, wrong types, NaN and out-of-range values are errors; assignments are checked."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, validate_assignment=True)

    def __init__(self, **data: Any) -> None:
        # pydantic builds nested sections through __init__ too: only the outermost turns the errors (all of them,
        # nested ones with their path) into one ConfigError
        token = _BUILDING.set(True)
        try:
            super().__init__(**data)
        except ValidationError as exc:
            if token.old_value is True:
                raise
            raise config_error(exc, type(self)) from None
        finally:
            _BUILDING.reset(token)

    def __setattr__(self, name: str, value: Any) -> None:
        try:
            super().__setattr__(name, value)
        except ValidationError as exc:
            raise config_error(exc, type(self)) from None


class ModelConfig(Section):
    name_or_path: str = opt(
        TINY_MODEL, "Hugging Face model id or local directory of the model.", label="Model (hub id or directory)"
    )
    revision: str | None = opt(
        None, "Hub revision (branch, tag or commit) to pin; ignored for local paths.", label="Hub revision"
    )
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = opt(
        "auto",
        "Weights dtype. auto = bfloat16 on a GPU that supports it, else float16 on GPU, float32 on CPU.",
        label="Weights dtype",
    )
    load_in_8bit: Literal["auto", True, False] = opt(
        "auto",
        "8-bit weights via bitsandbytes. auto = only when the model would not fit in 16-bit on the device.",
        label="8-bit weights",
    )
    device: Literal["auto", "cpu", "cuda"] = opt("auto", "Where to load: auto = cuda when available, else cpu.")
    trust_remote_code: bool = opt(False, "Run model code shipped with the checkpoint. Off unless you trust it.")
    adapter: str | None = opt(
        None, "LoRA adapter directory to load on top of the base model (PEFT).", label="LoRA adapter to start from"
    )
    lora_r: int = opt(16, "LoRA rank.", label="LoRA rank", ge=1, le=1024)
    lora_alpha: int = opt(32, "LoRA alpha (scaling = alpha / r).", label="LoRA alpha", ge=1, le=4096)
    lora_dropout: float = opt(0.05, "LoRA dropout.", label="LoRA dropout", ge=0.0, le=0.9)
    lora_target_modules: str = opt(
        "all-linear",
        "Modules LoRA adapts: all-linear, or a comma-separated list such as q_proj,v_proj.",
        label="LoRA target modules",
    )

    @field_validator("name_or_path")
    @classmethod
    def _names_a_model(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must name a model id or a directory")
        return value


class FormatConfig(Section):
    template: str = opt(
        "Instruction: {instruction}\nResponse:",
        "Prompt template with one {instruction} placeholder; completions follow it directly.",
        label="Prompt template",
        multiline=True,
    )
    chat_template: Literal["auto", "always", "never"] = opt(
        "auto", "Use the tokenizer's chat template: auto = when the tokenizer has one, always, or never."
    )

    @field_validator("template")
    @classmethod
    def _one_placeholder(cls, value: str) -> str:
        template_parts(value)  # exactly one bare {instruction}, bounded length: raises ValueError saying why
        if value != value.rstrip():
            raise ValueError(
                "must not end with whitespace (the completion carries its own leading space; a trailing space "
                "merges with the first completion token and shifts the loss mask)"
            )
        return value


class DataConfig(Section):
    instructions: str = opt(
        "demo",
        "Instructions: 'demo' (shipped demo set), 'verifiable' (shipped tasks with gold answers and checkers), a "
        "JSONL file with an 'instruction' field (and optionally a 'check' for its checker), or a Hugging Face "
        "dataset id.",
    )
    split: str = opt("train", "Dataset split when `instructions` is a Hugging Face dataset.", label="Dataset split")
    instruction_field: str = opt("instruction", "Field that holds the instruction text.")
    max_instructions: int = opt(0, "Use at most this many instructions (0 = all).", ge=0)


class SamplingConfig(Section):
    """How a model generates: shared by SFT data generation, model-sampled negatives and evaluation."""

    max_new_tokens: int = opt(64, "Maximum new tokens per response.", ge=1, le=8192)
    do_sample: bool = opt(True, "Sample (true) or greedy decoding (false).", label="Sample (off = greedy)")
    temperature: float = opt(0.7, "Sampling temperature (only when sampling).", ge=0.01, le=5.0)
    top_p: float = opt(0.9, "Nucleus sampling probability mass (only when sampling).", ge=0.01, le=1.0, label="Top-p")


SFT_SOURCES = ("base_samples", "gold", "verified")


class GenerationConfig(Section):
    sft_source: Literal["base_samples", "gold", "verified"] = opt(
        "base_samples",
        "Where the SFT completions (and so the DPO chosen answers) come from: base_samples = the base model's own "
        "samples (self-distillation: SFT then pre-trains on what margin and reference NLL reward); gold = the data's "
        "reference answers (its `split.reference_field`); verified = the base model's samples that pass the row's "
        "checker, resampled up to `retries` times (rejection sampling; rows without a checker are left out).",
        label="SFT data source",
    )
    batch_size: int = opt(8, "Prompts generated together in one batch.", ge=1, le=1024)
    sampling: SamplingConfig = opt(help="How the base model writes the SFT responses.", factory=SamplingConfig)
    retries: int = opt(2, "Extra attempts, each with another seed, for a rejected response.", ge=0, le=20)
    min_response_chars: int = opt(8, "Responses shorter than this (after cleaning) are rejected.", ge=1)
    max_response_chars: int = opt(2000, "Responses longer than this (after cleaning) are rejected.", ge=1)
    max_repeated_ngram_fraction: float = opt(
        0.5, "Reject a response when more than this fraction of its word 3-grams are repeats.", ge=0.0, le=1.0
    )
    max_rejected_fraction: float = opt(
        0.5, "Fail the stage when more than this share of instructions is dropped after all retries.", ge=0, le=1
    )
    seed: int = opt(0, "Random seed for sampling; retry k uses seed + 1000 k.", ge=0)

    @model_validator(mode="after")
    def _bounds_in_order(self) -> GenerationConfig:
        if self.min_response_chars >= self.max_response_chars:
            raise ValueError(f"min_response_chars: must be below max_response_chars ({self.max_response_chars})")
        return self


class NegativesConfig(Section):
    types: list[str] = Field(
        default_factory=lambda: list(negative_types.default_names()),
        description="Negative types to generate (pipeline.core.negative_types; `padded` and `first_sentence` only "
        "when named: the planted effects of the positive controls).",
        json_schema_extra=lambda schema: schema["items"].update(enum=list(negative_types.names())),
    )
    weights: dict[str, float] = opt(
        help="Target share of each type among the pairs (normalized; missing types weigh 1).", factory=dict
    )
    per_prompt: int = opt(2, "Negatives generated per prompt (types drawn by weight, at most one of each).", ge=1)
    sampling: SamplingConfig = opt(
        help="How the model writes the `model_sample` negatives.",
        factory=lambda: SamplingConfig(max_new_tokens=48, temperature=1.5, top_p=1.0),
    )
    seed: int = opt(0, "Random seed for type choice and corruptions.", ge=0)

    @model_validator(mode="after")
    def _types_and_weights_agree(self) -> NegativesConfig:
        if not self.types:
            raise ValueError("types: name at least one negative type")
        unknown = [t for t in self.types if t not in negative_types.REGISTRY]
        if unknown:
            raise ValueError(
                f"types: {', '.join(map(repr, unknown))} not known; choose from {', '.join(negative_types.names())}"
            )
        if self.per_prompt > len(negative_types.REGISTRY):
            known = len(negative_types.REGISTRY)
            raise ValueError(f"per_prompt: {self.per_prompt} is more than the {known} negative types there are")
        if len(set(self.types)) != len(self.types):
            raise ValueError("types: lists a type twice")
        for name, weight in self.weights.items():
            if name not in self.types:
                raise ValueError(f"weights.{name}: weights a type that is not in types ({', '.join(self.types)})")
            if weight < 0:
                raise ValueError(f"weights.{name}: must be >= 0")
        if sum(self.weight_of(t) for t in self.types) <= 0:
            raise ValueError("weights: at least one weight must be > 0")
        return self

    def weight_of(self, negative_type: str) -> float:
        return self.weights.get(negative_type, 1.0)

    def normalized_weights(self) -> dict[str, float]:
        total = sum(self.weight_of(t) for t in self.types)
        return {t: self.weight_of(t) / total for t in self.types}


class SplitConfig(Section):
    heldout_fraction: float = opt(
        0.2,
        "Share of prompts held out for evaluation, chosen before any stage trains.",
        ge=0.01,
        le=0.9,
        label="Held-out share of prompts",
    )
    seed: int = opt(0, "Random seed of the split.", ge=0)
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
    ngram: int = opt(8, "Word n-gram length of the decontamination check.", ge=3, le=50, label="N-gram length")
    max_ngram_overlap: float = opt(
        0.8,
        "A held-out text counts as contaminated when this share of its n-grams (or the whole text) occurs in a "
        "training input.",
        ge=0.0,
        le=1.0,
        label="Max n-gram overlap",
    )
    max_contaminated_fraction: float = opt(
        0.0, "Fail a training stage when more than this share of held-out texts is contaminated.", ge=0.0, le=1.0
    )


class PairsConfig(Section):
    balance_types: bool = opt(True, "Subsample so the negative-type mix follows NegativesConfig.weights.")
    max_pairs_per_prompt: int = opt(4, "Keep at most this many pairs per prompt.", ge=1)
    seed: int = opt(0, "Random seed of the balancing.", ge=0)


class TrainingConfig(Section):
    """What SFT and DPO training share; each adds its own fields and its learning-rate default."""

    learning_rate: float = opt(2e-4, "Peak learning rate.", ge=1e-9, le=1.0)
    num_epochs: float = opt(1.0, "Training epochs.", label="Epochs", ge=0.01, le=100.0)
    max_steps: int = opt(
        -1, "Stop after this many optimizer steps (-1 = run all epochs).", label="Max optimizer steps", ge=-1
    )
    batch_size: int = opt(
        4,
        "Examples per optimizer micro-step over all devices (pairs for DPO); each of `devices` takes an equal share, "
        "so the optimizer sees the same global batch and steps on any number of devices.",
        ge=1,
        le=4096,
    )
    grad_accumulation: int = opt(1, "Gradient accumulation steps.", label="Gradient accumulation steps", ge=1, le=4096)
    max_length: int = opt(
        512, "Maximum tokens of prompt + response.", label="Max tokens (prompt + response)", ge=8, le=131072
    )
    use_lora: bool = opt(True, "Train a LoRA adapter (true) or all weights (false).", label="Train a LoRA adapter")
    warmup_ratio: float = opt(0.0, "Share of steps for linear warm-up.", label="Warm-up share of steps", ge=0.0, le=0.5)
    checkpoint_every: int = opt(50, "Save a resumable checkpoint every N steps.", ge=1)
    activation_checkpointing: bool = opt(False, "Recompute activations in backward to save memory (slower).")
    seed: int = opt(0, "Random seed.", ge=0)
    devices: int = opt(
        1,
        "Processes the training runs on, one per GPU (on a CPU worker: CPU processes on the gloo backend); above 1 "
        "the stage runs under `accelerate launch` inside its job.",
        ge=1,
        le=64,
    )
    distributed: Literal["ddp", "fsdp", "deepspeed_zero3"] = opt(
        "ddp",
        "How several devices share the work: ddp keeps a whole copy of the model on each; fsdp and deepspeed_zero3 "
        "shard weights, gradients and optimizer states over them, for a model one GPU cannot hold (GPU workers "
        "only; deepspeed_zero3 needs the deepspeed package on the worker).",
        label="Multi-device strategy",
    )

    @model_validator(mode="after")
    def _batch_splits_over_devices(self) -> TrainingConfig:
        if self.batch_size % self.devices:
            raise ValueError(
                f"batch_size: {self.batch_size} does not split evenly over devices ({self.devices}); make it a "
                "multiple of devices"
            )
        return self

    @property
    def per_device_batch(self) -> int:
        return self.batch_size // self.devices


class SFTConfig(TrainingConfig):
    min_completion_tokens: int = opt(
        4, "An example whose truncation would keep fewer completion tokens is dropped and counted.", ge=1
    )
    mask_check_fraction: float = opt(
        1.0,
        "Share of training examples whose loss mask is verified, as the trainer collates them, before the first "
        "step (1.0 = every example; the count is shown).",
        ge=0.01,
        le=1.0,
    )


class DPOConfig(TrainingConfig):
    learning_rate: float = opt(5e-5, "Peak learning rate.", ge=1e-9, le=1.0)
    beta: float = opt(
        0.1, "DPO beta: strength of the pull towards the reference model.", label="β (beta)", ge=1e-4, le=10.0
    )
    loss_type: Literal["sigmoid", "hinge", "ipo", "robust", "bco_pair", "sppo_hard", "aot", "apo_zero", "apo_down"] = (
        opt("sigmoid", "DPO loss.")
    )
    precompute_ref_log_probs: bool = opt(
        False, "Compute reference log-probs once before training instead of a reference forward every step."
    )


class EvalConfig(Section):
    max_prompts: int = opt(0, "Evaluate at most this many held-out prompts (0 = all).", ge=0)
    batch_size: int = opt(8, "Prompts generated together in one batch.", ge=1, le=1024)
    sampling: SamplingConfig = opt(
        help="How each model answers the held-out prompts (greedy by default, for comparable outputs).",
        factory=lambda: SamplingConfig(do_sample=False, temperature=1.0, top_p=1.0),
    )
    seed: int = opt(0, "Random seed of the generations.", ge=0)


class ValidationConfig(Section):
    max_error_rate: float = opt(
        0.0, "Share of rows that may have errors before a file fails validation (0 = any error fails).", ge=0, le=1
    )
    max_text_chars: int = opt(20000, "Longest prompt or response accepted, in characters.", ge=1)
    max_tokens: int = opt(4096, "Longest prompt + response accepted, in tokens (checked when a tokenizer is given).")
    type_mix_tolerance: float = opt(
        0.15, "Warn when a negative type's share differs from its configured weight by more than this.", ge=0, le=1
    )


def _compared_metrics() -> tuple[str, ...]:
    from pipeline.core.metrics import compared_metrics  # the metric registry reads nothing of the configs

    return compared_metrics()


MethodName = Literal["base", "sft", "sft_dpo", "dpo_only"]


class ControlConfig(Section):
    """An experiment whose answer is known before the run (a planted effect): the difference a − b on `metric` must
    come out in the `expect`ed direction with a CI that excludes 0, or the instrument cannot be trusted to see one."""

    name: str = opt("positive control", "What the control is called in the report.")
    metric: str = Field(
        "new_tokens",
        description="The metric the planted effect moves (a compared metric).",
        json_schema_extra=lambda schema: schema.update(enum=list(_compared_metrics())),
    )
    a: MethodName = opt("sft_dpo", "The method trained on the planted preference.")
    b: MethodName = opt("sft", "The method it is measured against (e.g. its own init).")
    expect: Literal["higher", "lower"] = opt("lower", "Which way a − b must go when the effect is there.")

    @field_validator("metric")
    @classmethod
    def _a_compared_metric(cls, value: str) -> str:
        if value not in _compared_metrics():
            raise ValueError(f"{value!r} is not a compared metric; choose one of {', '.join(_compared_metrics())}")
        return value

    @model_validator(mode="after")
    def _two_methods(self) -> ControlConfig:
        if self.a == self.b:
            raise ValueError(f"b: must differ from a ({self.a})")
        return self


class CompareConfig(Section):
    confidence: float = opt(0.95, "Confidence level of the bootstrap intervals.", ge=0.5, le=0.999)
    n_bootstrap: int = opt(2000, "Bootstrap resamples.", ge=100, le=100000)
    seed: int = opt(0, "Random seed of the bootstrap.", ge=0)
    primary_metric: str = Field(
        "preference_accuracy",
        description="The metric that answers 'did SFT before DPO help?', named before the run (SFT→DPO − "
        "DPO-only); its other metrics are the question's secondary family, other comparisons descriptive.",
        json_schema_extra=lambda schema: schema.update(enum=list(_compared_metrics())),
    )
    correction: Literal["holm", "bh"] = opt(
        "holm",
        "Family correction of the secondary and the descriptive verdicts (each family apart): holm (family-wise error) "
        "or bh (false discovery rate).",
    )
    min_discordant_prompts: int = opt(
        1,
        "An optional floor declared before the run: below this many prompts on which two methods differ at all, no "
        "verdict is given (1: none; the sign-flip test needs enough of them by itself: with k it cannot go below "
        "p = 2^(1−k)).",
        ge=1,
    )
    target_difference: float = opt(
        0.05,
        "The smallest SFT→DPO − DPO-only difference on the primary metric worth knowing about, declared before the "
        "run: `alignlab plan` says how many held-out prompts detecting it needs at 80% power.",
        gt=0,
        le=1000,
    )
    underpowered: Literal["warn", "refuse"] = opt(
        "warn",
        "When the planned run cannot detect target_difference at 80% power: warn (say so, queue anyway) or refuse "
        "(queue nothing).",
    )
    controls: list[ControlConfig] = opt(
        help="Experiments with a known answer, checked in the report (the control presets plant one).", factory=list
    )

    @field_validator("primary_metric")
    @classmethod
    def _a_compared_metric(cls, value: str) -> str:
        known = _compared_metrics()
        if value not in known:
            raise ValueError(f"{value!r} is not a compared metric; choose one of {', '.join(known)}")
        return value


_ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]*")


class JudgeConfig(Section):
    """The `judge` stage: every held-out prompt's answers compared pairwise by a judge model, in both orders (SFT→DPO
    vs DPO-only first, then each DPO variant vs SFT and vs base), or scored one by one by a reward model."""

    kind: Literal["model", "endpoint", "reward_model"] = opt(
        "model",
        "model = a local causal LM judges (verdict from its next-token probabilities of A and B); endpoint = an "
        "OpenAI-compatible server judges (vLLM on the pod or a hosted API); reward_model = a sequence-classification "
        "reward model scores each answer.",
    )
    model: ModelConfig = opt(
        help="The judge model (kind model) or the reward model (kind reward_model), loaded like any model: 8-bit "
        "when 16-bit would not fit.",
        factory=lambda: ModelConfig(name_or_path=SMOLLM2_135M_INSTRUCT.name),
    )
    endpoint_url: str = opt(
        "", "Base URL of the OpenAI-compatible API (kind endpoint), e.g. http://127.0.0.1:8000/v1 for vLLM on the pod."
    )
    endpoint_model: str = opt("", "The model name the endpoint serves (kind endpoint).")
    api_key_env: str = opt(
        "OPENAI_API_KEY",
        "Name of the environment variable on the worker that holds the endpoint's key. The key itself never goes "
        "into a config, a job, the database or a log.",
        label="API key variable (its name, not the key)",
    )
    max_retries: int = opt(
        4, "Retries of a failed request, with exponential backoff (the openai client's).", ge=0, le=20
    )
    request_timeout_s: float = opt(60.0, "Seconds one request may take.", ge=1.0, le=3600.0)
    concurrency: int = opt(4, "Requests in flight at once (kind endpoint).", ge=1, le=64)
    max_answer_tokens: int = opt(4, "Tokens an endpoint may answer with (the verdict is one letter).", ge=1, le=64)
    max_prompts: int = opt(0, "Judge at most this many held-out prompts (0 = every evaluated prompt).", ge=0)
    batch_size: int = opt(8, "Judge prompts (or reward-model inputs) per forward pass.", ge=1, le=1024)
    max_response_chars: int = opt(
        2000, "Each response is cut at this many characters in the judge's prompt (bounded requests).", ge=50, le=100000
    )
    confidence: float = opt(0.95, "Confidence level of the win-rate intervals.", ge=0.5, le=0.999)
    n_bootstrap: int = opt(1000, "Bootstrap resamples of the win-rate intervals.", ge=100, le=100000)
    seed: int = opt(0, "Random seed of the bootstrap.", ge=0)

    @field_validator("api_key_env")
    @classmethod
    def _a_variable_name(cls, value: str) -> str:
        if not _ENV_NAME.fullmatch(value):  # never echo the value: a pasted key would land in the error
            raise ValueError("must be an environment variable's name (capitals, digits, _), not the key itself")
        return value

    @field_validator("endpoint_url")
    @classmethod
    def _a_plain_http_url(cls, value: str) -> str:
        if value and not re.fullmatch(r"https?://[^\s/@]+(/\S*)?", value):
            raise ValueError("must be an http(s) URL without credentials in it (the key comes from api_key_env)")
        return value

    @model_validator(mode="after")
    def _endpoint_named(self) -> JudgeConfig:
        if self.kind == "endpoint" and not (self.endpoint_url and self.endpoint_model):
            raise ValueError("endpoint_url: kind endpoint needs endpoint_url and endpoint_model")
        return self


def _default_queues() -> dict[str, str]:
    return {s.name: s.queue for s in registry.STAGES.values() if s.queue}


def _default_timeouts() -> dict[str, int]:
    return {s.name: s.timeout_s for s in registry.STAGES.values()}


class ExecutionConfig(Section):
    queues: dict[str, QueueName] = opt(
        help="Queue (resource class) per stage; a stage not listed uses the queue it declares, else `default_queue`.",
        factory=_default_queues,
    )
    default_queue: QueueName = opt("gpu", "Queue for stages not listed in `queues`.")
    timeouts: dict[str, int] = opt(
        help="Job timeout per stage in seconds (RQ's default of 180 s would kill any training).",
        factory=_default_timeouts,
    )
    retries: int = opt(1, "RQ retries of a job after a transient failure (e.g. a worker lost mid-job).", ge=0, le=10)

    @model_validator(mode="after")
    def _known_stages(self) -> ExecutionConfig:
        for what, table in (("queues", self.queues), ("timeouts", self.timeouts)):
            for name in table:
                if name not in registry.STAGES:
                    raise ValueError(f"{what}.{name}: unknown stage; stages: {', '.join(registry.STAGES)}")
        for name, seconds in self.timeouts.items():
            if seconds < 10:
                raise ValueError(f"timeouts.{name}: must be at least 10 seconds")
        return self

    def queue_for(self, stage: str) -> str:
        """The queue listed here, else the one the stage declares (compare: cpu), else `default_queue`."""
        return self.queues.get(stage) or registry.stage(stage).queue or self.default_queue

    def timeout_for(self, stage: str) -> int:
        return self.timeouts.get(stage, registry.stage(stage).timeout_s)


class RunSpec(Section):
    spec_version: int = opt(SPEC_VERSION, "Layout version of this spec (older stored specs are migrated).")
    name: str = opt("run", "Name of the run.")
    preset: str = opt("custom", "Preset the values started from (informational once saved).")
    base_model: ModelConfig = opt(help="The base model.", factory=ModelConfig)
    data: DataConfig = opt(help="Where the instructions come from.", factory=DataConfig)
    split: SplitConfig = opt(help="Held-out prompts, chosen first, and the decontamination check.", factory=SplitConfig)
    stages: list[str] = Field(
        default_factory=lambda: [name for name, s in registry.STAGES.items() if not s.optional],
        description="Stages to run, in DAG order.",
        json_schema_extra=lambda schema: schema["items"].update(enum=list(registry.STAGES)),
    )
    format: FormatConfig = opt(help="Prompt format shared by every stage.", factory=FormatConfig)
    generation: GenerationConfig = opt(help="generate_sft settings.", factory=GenerationConfig)
    sft: SFTConfig = opt(help="train_sft settings.", factory=SFTConfig)
    negatives: NegativesConfig = opt(help="generate_negatives settings.", factory=NegativesConfig)
    pairs: PairsConfig = opt(help="make_pairs settings.", factory=PairsConfig)
    dpo: DPOConfig = opt(help="train_dpo settings, shared by SFT→DPO and DPO-only.", factory=DPOConfig)
    eval: EvalConfig = opt(help="evaluate settings.", factory=EvalConfig)
    validation: ValidationConfig = opt(help="Validation thresholds at every hand-off.", factory=ValidationConfig)
    compare: CompareConfig = opt(help="compare settings.", factory=CompareConfig)
    judge: JudgeConfig = opt(help="judge settings (an optional stage: select it in `stages`).", factory=JudgeConfig)
    execution: ExecutionConfig = opt(help="Queues, timeouts and retries of the queued jobs.", factory=ExecutionConfig)

    @field_validator("spec_version")
    @classmethod
    def _current_layout(cls, value: int) -> int:
        if value != SPEC_VERSION:
            raise ValueError(f"{value} is not today's layout ({SPEC_VERSION}); load stored specs with from_dict")
        return value

    @field_validator("name")
    @classmethod
    def _a_usable_name(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        if any(c in value for c in "/\\:") or not value.isprintable() or len(value) > 150:
            raise ValueError(f"{value!r}: use at most 150 printable characters without '/', '\\' or ':'")
        return value

    @field_validator("stages")
    @classmethod
    def _known_stages_in_dag_order(cls, value: list[str]) -> list[str]:
        unknown = [s for s in value if s not in registry.STAGES]
        if unknown:
            raise ValueError(f"unknown stage(s) {', '.join(map(repr, unknown))}; stages: {', '.join(registry.STAGES)}")
        if len(set(value)) != len(value):
            raise ValueError("lists a stage twice")
        if not value:
            raise ValueError("name at least one stage")
        return [s for s in registry.STAGES if s in value]  # canonical DAG order

    def section_dict(self, section: str) -> dict[str, Any]:
        return getattr(self, section).model_dump(mode="json")


# ----------------------------------------------------------------------------------------------- errors


def _bounds(field_info: Any) -> tuple[Any, Any]:
    low = high = None
    for item in field_info.metadata:
        if isinstance(item, annotated_types.Ge | annotated_types.Gt):
            low = getattr(item, "ge", getattr(item, "gt", None))
        if isinstance(item, annotated_types.Le | annotated_types.Lt):
            high = getattr(item, "le", getattr(item, "lt", None))
    return low, high


MESSAGES = {
    "float_type": "expected a number, got {input}",
    "float_parsing": "expected a number, got {input}",
    "int_type": "expected an integer, got {input}",
    "int_parsing": "expected an integer, got {input}",
    "int_from_float": "expected an integer, got {input}",
    "bool_type": "expected true or false, got {input}",
    "bool_parsing": "expected true or false, got {input}",
    "string_type": "expected a string, got {input}",
    "finite_number": "{input} is not a finite number (NaN and infinity are not valid values)",
    "list_type": "expected a list, got {input}",
    "dict_type": "expected a mapping, got {input}",
    "model_type": "expected a mapping of fields, got {input}",
    "invalid_key": "keys must be field names, got {input}",
    "literal_error": "{input} is not allowed; choose one of {expected}",
}


def _describe(model: type[BaseModel], error: dict[str, Any]) -> tuple[str, str]:
    """(where, what) of one pydantic error: `where` names the innermost section and field, and, inside a RunSpec,
    its dotted path ("SamplingConfig.temperature (at eval.sampling.temperature)")."""
    cls, field_info, where_field, rest, sections = model, None, "", [], []
    loc = list(error["loc"])
    for index, part in enumerate(loc):
        if rest or not isinstance(part, str) or part not in cls.model_fields:
            rest.append(part)
            continue
        info = cls.model_fields[part]
        section = isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel)
        if section and (index < len(loc) - 1 or error["type"] == "value_error"):  # a section's own check
            cls = info.annotation
            sections.append(part)
            continue
        field_info, where_field = info, part
    where, what = _where_what(cls, field_info, where_field, rest, error)
    if sections and "." in where:
        where += f" (at {'.'.join(sections)}.{where.split('.', 1)[1]})"
    return where, what


def _where_what(
    cls: type[BaseModel], field_info: Any, where_field: str, rest: list[Any], error: dict[str, Any]
) -> tuple[str, str]:
    if field_info is None and error["type"] == "extra_forbidden":
        key = rest.pop(0)
        return f"{cls.__name__}.{key}", f"unknown key; known keys of {cls.__name__}: {', '.join(cls.model_fields)}"
    where = cls.__name__ + (f".{where_field}" if field_info is not None else "")
    where += "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in rest if not _union_tag(p))
    kind = error["type"]
    if kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than") and field_info is not None:
        low, high = _bounds(field_info)
        lo, hi = ("-inf" if low is None else low), ("inf" if high is None else high)
        return where, f"{excerpt(error['input'])} is out of range; allowed {lo} .. {hi}"
    if kind == "value_error":
        text = str(error["ctx"]["error"]) if "ctx" in error else error["msg"]
        head, sep, tail = text.partition(": ")
        if field_info is None and sep and head.split(".")[0].split("[")[0] in cls.model_fields:
            return f"{cls.__name__}.{head}", tail
        return where, text
    template = MESSAGES.get(kind)
    if template:
        shown = excerpt(error.get("input"))
        return where, template.format(input=shown, expected=(error.get("ctx") or {}).get("expected"))
    return where, error["msg"]


def _union_tag(part: Any) -> bool:
    return isinstance(part, str) and (part in ("bool", "int", "float", "str", "none") or part.startswith("literal["))


def config_error(exc: ValidationError, model: type[BaseModel], prefix: str = "") -> ConfigError:
    """One ConfigError naming every offending field (the alternatives of a union are folded into one line)."""
    lines: dict[str, list[str]] = {}
    for error in exc.errors():
        where, what = _describe(model, error)
        lines.setdefault(where, []).append(what)
    text = "; ".join(f"{prefix}{where}: {' or '.join(dict.fromkeys(what))}" for where, what in lines.items())
    return ConfigError(text)


# ----------------------------------------------------------------------------------------------- serialization


def to_dict(config: BaseModel) -> dict[str, Any]:
    """A plain dict (JSON/YAML-ready) of a config, nested sections included."""
    return config.model_dump(mode="json")


def canonical_json(value: Any) -> str:
    """The one canonical JSON text of a value (sorted keys, no spaces): what hashes and signatures are taken of."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def _v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    """Version 1 (no `spec_version`): sampling settings sat flat in generation/negatives/eval; the held-out share
    once sat in `pairs`; SFT once had `mask_check_batches`. Every recorded value is kept where it now lives."""
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    sft = data.get("sft")
    if isinstance(sft, dict) and "mask_check_batches" in sft:  # older still: some batches were checked
        sft.pop("mask_check_batches")
        sft.setdefault("mask_check_fraction", 1.0)  # became a share of examples: every one is checked now
    pairs = data.get("pairs")
    if isinstance(pairs, dict) and "heldout_fraction" in pairs:  # older still: pairs were split, by fraction only
        split = dict(data.get("split") or {})
        split.setdefault("heldout_fraction", pairs.pop("heldout_fraction"))
        split.setdefault("seed", pairs.get("seed", 0))
        # what that code did: no split or reference field read, no decontamination (now reported, never fatal)
        then = {"split_field": "", "reference_field": "", "ngram": 8, "max_ngram_overlap": 0.8}
        for key, value in {**then, "max_contaminated_fraction": 1.0}.items():
            split.setdefault(key, value)
        data["split"] = split
        compare = data.get("compare")
        if isinstance(compare, dict):  # headline: preference accuracy, no minimum of discordant prompts; it made
            # no family correction, of which Holm's (family-wise) is the nearest: it never adds a verdict
            then = {"primary_metric": "preference_accuracy", "min_discordant_prompts": 1, "correction": "holm"}
            for key, value in then.items():
                compare.setdefault(key, value)
    moves = {
        "generation": {
            "max_new_tokens": "max_new_tokens",
            "do_sample": "do_sample",
            "temperature": "temperature",
            "top_p": "top_p",
        },
        "eval": {
            "max_new_tokens": "max_new_tokens",
            "do_sample": "do_sample",
            "temperature": "temperature",
            "top_p": "top_p",
        },
        "negatives": {"max_new_tokens": "max_new_tokens", "sample_temperature": "temperature"},
    }
    for section, fields in moves.items():
        old = data.get(section)
        if not isinstance(old, dict):
            continue
        sampling = dict(old.get("sampling") or {})
        for before, after in fields.items():
            if before in old:
                sampling[after] = old.pop(before)
        if section == "negatives" and sampling:  # v1 sampled negatives with top_p 1.0 always
            sampling.setdefault("do_sample", True)
            sampling.setdefault("top_p", 1.0)
        if sampling:
            old["sampling"] = sampling
    data["spec_version"] = 2
    return data


def _v2_to_v3(data: dict[str, Any]) -> dict[str, Any]:
    """Version 2 had no known-answer controls: such a run checked none."""
    data = dict(data)
    compare = dict(data.get("compare") or {})
    compare.setdefault("controls", [])
    data["compare"] = compare
    data["spec_version"] = 3
    return data


def _v3_to_v4(data: dict[str, Any]) -> dict[str, Any]:
    """Version 3 had no judge stage: such a run judged nothing, so its judge section is the default, unselected."""
    data = dict(data)
    data.setdefault("judge", JudgeConfig().model_dump(mode="json"))
    data["spec_version"] = 4
    return data


def _v4_to_v5(data: dict[str, Any]) -> dict[str, Any]:
    """Version 4 trained on one device: its batch_size was the whole micro-batch, as it is on one device now."""
    data = dict(data)
    for section in ("sft", "dpo"):
        training = data.get(section)
        if isinstance(training, dict):  # anything else is left for validation to name
            data[section] = {**training, "devices": training.get("devices", 1)}
            data[section].setdefault("distributed", "ddp")
    data["spec_version"] = 5
    return data


def _v5_to_v6(data: dict[str, Any]) -> dict[str, Any]:
    """Version 5 had one SFT data source (the base model's own samples) and planned no power: it queued whatever
    the plan, which is `underpowered: warn` at the default target."""
    data = dict(data)
    generation = data.get("generation")
    if isinstance(generation, dict):  # anything else is left for validation to name
        data["generation"] = {**generation, "sft_source": generation.get("sft_source", "base_samples")}
    compare = data.get("compare")
    if isinstance(compare, dict):
        data["compare"] = {"target_difference": 0.05, "underpowered": "warn", **compare}
    data["spec_version"] = 6
    return data


# from-version -> the step that brings a stored spec to the next version
MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {
    1: _v1_to_v2,
    2: _v2_to_v3,
    3: _v3_to_v4,
    4: _v4_to_v5,
    5: _v5_to_v6,
}


def migrate_spec(data: dict[str, Any]) -> dict[str, Any]:
    """A stored or older RunSpec dict in today's layout, one declared step at a time."""
    version = data.get("spec_version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= SPEC_VERSION:
        raise ConfigError(f"RunSpec.spec_version: {version!r} is not a known layout (1 .. {SPEC_VERSION})")
    while version < SPEC_VERSION:
        data = MIGRATIONS[version](data)
        version = data["spec_version"]
    return data


def _non_string_keys(data: Any, where: str) -> list[str]:
    if not isinstance(data, dict):
        return []
    bad = [f"{where}[{key!r}]" for key in data if not isinstance(key, str)]
    for key, value in data.items():
        bad += _non_string_keys(value, f"{where}.{key}")
    return bad


def from_dict(cls: type[BaseModel], data: Any, where: str | None = None) -> Any:
    """Build config `cls` from a dict (a RunSpec is migrated first); errors name each offending field."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping, got {type(data).__name__}")
    bad = _non_string_keys(data, where or cls.__name__)
    if bad:
        raise ConfigError(f"key(s) {', '.join(bad)} are not field names; keys are the names of {cls.__name__} fields")
    try:
        check_strings(data, where or cls.__name__)  # a lone surrogate would pass validation and crash the run
    except DocumentError as exc:
        raise ConfigError(str(exc)) from None
    if cls is RunSpec:
        data = migrate_spec(data)
    try:
        return cls.model_validate(data)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}" if where else str(exc)) from None


def missing_keys(model: type[BaseModel], data: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted names of the fields `data` lacks, nested sections included."""
    missing = []
    for name, info in model.model_fields.items():
        if name not in data:
            missing.append(prefix + name)
        elif (
            isinstance(info.annotation, type)
            and issubclass(info.annotation, BaseModel)
            and isinstance(data[name], dict)
        ):
            missing += missing_keys(info.annotation, data[name], f"{prefix}{name}.")
    return missing


def load_stored_spec(data: dict[str, Any]) -> RunSpec:
    """A spec stored with a run, for resume and relaunch: migrated to today's layout, then complete or refused, so
    nothing it recorded is replaced by today's default."""
    migrated = migrate_spec(data)
    missing = missing_keys(RunSpec, migrated)
    if missing:
        raise ConfigError(
            f"stored spec (version {data.get('spec_version', 1)}) has no value for {', '.join(missing)}; a migration "
            "in pipeline.core.configs.MIGRATIONS must say what it meant"
        )
    return from_dict(RunSpec, migrated)


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
    """Read a RunSpec from YAML or JSON, strictly (`pipeline.core.documents`: bounded size and nesting, no aliases,
    no key given twice); errors name the file and the offending key."""
    path = Path(path)
    yaml_syntax = path.suffix in (".yaml", ".yml")
    try:
        data = parse_document(read_config_text(path), yaml_syntax)
    except DocumentError as exc:
        message = str(exc)
        raise ConfigError(message if message.startswith(str(path)) else f"{path}: {message}") from None
    return spec_from_document(data, str(path))


def config_from_upload(name: str, data: bytes) -> RunSpec:
    """A RunSpec from an uploaded config file's bytes (JSON by its name, else YAML), read as strictly as a file."""
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{name}: is {len(data):,} bytes; a config file may be at most {MAX_CONFIG_BYTES:,}")
    try:
        document = parse_document(data.decode("utf-8-sig"), yaml_syntax=not name.lower().endswith(".json"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{name}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except DocumentError as exc:
        raise ConfigError(f"{name}: {exc}") from None
    return spec_from_document(document, name)


def spec_from_document(data: Any, source: str) -> RunSpec:
    """A RunSpec from a parsed config document (a file, an upload); errors name `source`."""
    if not isinstance(data, dict):
        what = "is empty" if data is None else f"holds a {type(data).__name__} ({excerpt(data)}), not a mapping"
        raise ConfigError(f"{source}: {what}; a config file maps RunSpec sections (name, sft, dpo, ...) to values")
    try:
        return from_dict(RunSpec, data)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from exc


# ----------------------------------------------------------------------------------------------- schema


def _resolve(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in schema:
        return defs[schema["$ref"].rsplit("/", 1)[1]]
    if "allOf" in schema and len(schema["allOf"]) == 1:
        return {**_resolve(schema["allOf"][0], defs), **{k: v for k, v in schema.items() if k != "allOf"}}
    return schema


def field_table() -> list[tuple[str, dict[str, Any]]]:
    """(dotted name, JSON Schema) of every leaf field of a RunSpec, in declaration order, from
    `RunSpec.model_json_schema()`: the Launch form and the CLI flags are generated from this."""
    root = RunSpec.model_json_schema()
    defs = root.get("$defs", {})

    def walk(schema: dict[str, Any], prefix: str) -> list[tuple[str, dict[str, Any]]]:
        out = []
        for name, prop in schema["properties"].items():
            resolved = _resolve(prop, defs)
            if resolved.get("type") == "object" and "properties" in resolved:
                out += walk(resolved, f"{prefix}{name}.")
            else:
                out.append((prefix + name, {**resolved, "description": prop.get("description", "")}))
        return out

    return walk(root, "")


def section_help() -> dict[str, str]:
    """Help text of each section (and sub-section) by its dotted name."""
    out: dict[str, str] = {}

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, info in model.model_fields.items():
            if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
                out[prefix + name] = info.description or ""
                walk(info.annotation, f"{prefix}{name}.")

    walk(RunSpec, "")
    return out


# RunSpec fields that cannot change a result: labels, the stage selection, where and how long jobs run
RESULT_FREE_FIELDS: tuple[str, ...] = ("spec_version", "name", "preset", "stages", "execution")


def changes_result(dotted: str) -> bool:
    return dotted.split(".")[0] not in RESULT_FREE_FIELDS


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """{dotted name: value} of the leaves of nested mappings (lists and empty mappings are leaves)."""
    if isinstance(data, dict) and data:
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: data}


def get_path(data: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        data = data[part]
    return data


def set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for part in parents:
        data = data.setdefault(part, {})
    data[leaf] = value


# ----------------------------------------------------------------------------------------------- presets


def _tiny_cpu() -> RunSpec:
    return RunSpec(
        name="tiny-cpu",
        preset="tiny-cpu",
        base_model=ModelConfig(name_or_path=TINY_MODEL, dtype="float32", load_in_8bit=False, device="cpu", lora_r=8),
        data=DataConfig(instructions="demo", max_instructions=120),
        generation=GenerationConfig(
            batch_size=16, sampling=SamplingConfig(max_new_tokens=40), min_response_chars=4, retries=2
        ),
        sft=SFTConfig(learning_rate=1e-3, num_epochs=2, batch_size=8, max_length=128, checkpoint_every=20),
        negatives=NegativesConfig(per_prompt=2, sampling=SamplingConfig(max_new_tokens=32, temperature=1.5, top_p=1.0)),
        split=SplitConfig(heldout_fraction=0.25),
        dpo=DPOConfig(learning_rate=5e-4, num_epochs=1, batch_size=8, max_length=128, beta=0.1, checkpoint_every=20),
        eval=EvalConfig(
            max_prompts=30,
            batch_size=32,
            sampling=SamplingConfig(max_new_tokens=40, do_sample=False, temperature=1.0, top_p=1.0),
        ),
        compare=CompareConfig(n_bootstrap=1000),
    )


def _tiny_ci() -> RunSpec:
    spec = _tiny_cpu()
    spec.name = spec.preset = "tiny-ci"
    spec.data.max_instructions = 40
    spec.sft.num_epochs = 1.0
    spec.eval.max_prompts = 12
    spec.eval.sampling.max_new_tokens = 24
    spec.generation.sampling.max_new_tokens = 32
    return spec


def _qwen05b_runpod() -> RunSpec:
    return RunSpec(
        name="qwen2.5-0.5b-runpod",
        preset="qwen2.5-0.5b-runpod",
        base_model=ModelConfig(name_or_path="Qwen/Qwen2.5-0.5B-Instruct", dtype="bfloat16", load_in_8bit="auto"),
        data=DataConfig(instructions="demo"),
        generation=GenerationConfig(
            batch_size=64, sampling=SamplingConfig(max_new_tokens=256), max_response_chars=4000
        ),
        sft=SFTConfig(learning_rate=2e-4, num_epochs=2, batch_size=16, max_length=1024, checkpoint_every=100),
        negatives=NegativesConfig(
            per_prompt=3, sampling=SamplingConfig(max_new_tokens=256, temperature=1.5, top_p=1.0)
        ),
        split=SplitConfig(heldout_fraction=0.2),
        dpo=DPOConfig(learning_rate=5e-6, num_epochs=1, batch_size=8, grad_accumulation=2, max_length=1024),
        eval=EvalConfig(
            batch_size=64, sampling=SamplingConfig(max_new_tokens=256, do_sample=False, temperature=1.0, top_p=1.0)
        ),
    )


def _smol_cpu() -> RunSpec:
    """The whole DAG on a real pretrained instruct model (SmolLM2-135M-Instruct, a catalog model) on a 2-core CPU.

    Sized from what that model does there in float32: batched generation ~140 tokens/s, LoRA training ~220 tokens/s
    at 8 x 128; prompts go through its chat template (a ~30-token system turn comes with every prompt). Generation
    batches of 32: one decoding step reads all 540 MB of weights whatever the batch, so a step of 32 rows costs ~3x
    a step of one (measured: 307 vs 104 ms), and rows that finish leave the batch (`pipeline.generation`)."""
    return RunSpec(
        name="smol-cpu",
        preset="smol-cpu",
        base_model=ModelConfig(
            name_or_path=SMOLLM2_135M_INSTRUCT.name, dtype="float32", load_in_8bit=False, device="cpu", lora_r=8
        ),
        data=DataConfig(instructions="demo", max_instructions=96),
        generation=GenerationConfig(
            batch_size=32, sampling=SamplingConfig(max_new_tokens=48), min_response_chars=4, retries=1
        ),
        # batches of 4 x 2 accumulation steps: the same optimizer steps as 8, half the activations (a 49k vocabulary
        # makes the logits of 8 x 192 tokens alone 300 MB, twice over in DPO's chosen + rejected)
        sft=SFTConfig(
            learning_rate=2e-4, num_epochs=2, batch_size=4, grad_accumulation=2, max_length=192, checkpoint_every=20
        ),
        negatives=NegativesConfig(per_prompt=2, sampling=SamplingConfig(max_new_tokens=48, temperature=1.2, top_p=1.0)),
        split=SplitConfig(heldout_fraction=0.25),
        pairs=PairsConfig(max_pairs_per_prompt=2),
        dpo=DPOConfig(
            learning_rate=1e-4,
            num_epochs=1,
            batch_size=4,
            grad_accumulation=2,
            max_length=192,
            beta=0.1,
            checkpoint_every=20,
            precompute_ref_log_probs=True,
        ),
        eval=EvalConfig(
            max_prompts=30,
            batch_size=16,
            sampling=SamplingConfig(max_new_tokens=48, do_sample=False, temperature=1.0, top_p=1.0),
        ),
        compare=CompareConfig(n_bootstrap=1000),
    )


def _smol_answer() -> RunSpec:
    """smol-cpu on the verifiable tasks, built to answer the question: the primary metric is correctness against
    the data's gold answers by each task's checker (headroom: SmolLM2-135M gets a part of them right), SFT trains
    on the gold references (not the base model's own samples), every one of the 219 held-out prompts is evaluated,
    greedy. `alignlab plan --preset smol-answer` says what it can detect before it runs."""
    spec = _smol_cpu()
    spec.name = spec.preset = "smol-answer"
    spec.data = DataConfig(instructions="verifiable")
    spec.generation.sft_source = "gold"
    spec.eval.max_prompts = 0
    spec.compare.primary_metric = "correct"
    spec.compare.target_difference = 0.05
    return spec


def _smol_ci() -> RunSpec:
    """smol-cpu at micro scale for the test suite: a few instructions, a few optimizer steps per training stage."""
    spec = _smol_cpu()
    spec.name = spec.preset = "smol-ci"
    spec.data.max_instructions = 24
    spec.generation.batch_size = 8
    spec.generation.sampling.max_new_tokens = 24
    spec.negatives.sampling.max_new_tokens = 24
    spec.sft.max_steps = 3
    spec.sft.batch_size = 4
    spec.sft.max_length = 128
    spec.dpo.max_steps = 2
    spec.dpo.batch_size = 4
    spec.dpo.max_length = 128
    spec.eval.max_prompts = 6
    spec.eval.batch_size = 8
    spec.eval.sampling.max_new_tokens = 24
    spec.compare.n_bootstrap = 200
    return spec


def planted_length(spec: RunSpec, name: str, negative: str, expect: Literal["higher", "lower"]) -> RunSpec:
    """`spec` as the positive control: every negative is one opt-in negative type that plants a preference about
    answer length, so DPO from the SFT model must move its held-out answers' length the `expect`ed way."""
    spec.name = spec.preset = name
    spec.negatives.types = [negative]
    spec.negatives.per_prompt = 1
    control = ControlConfig(name="positive control", metric="new_tokens", a="sft_dpo", b="sft", expect=expect)
    spec.compare.controls = [control]
    return spec


def planted_concision(spec: RunSpec, name: str) -> RunSpec:
    """Concise over padded (the chosen answer plus filler): DPO must make the answers shorter."""
    return planted_length(spec, name, "padded", "lower")


def _tiny_control() -> RunSpec:
    spec = planted_concision(_tiny_cpu(), "tiny-control")
    spec.dpo.num_epochs = 2
    return spec


def _smol_control() -> RunSpec:
    # concise-over-padded was not detected on the real model, at 1 epoch and 1e-4 (-5% [-19%, +13%]) nor at 3 epochs
    # and 3e-4 (-8% [-5.2, +1.8] tokens, measured): its filler is text the model never writes, so avoiding it need not
    # change where the model stops. Full answers over their own first sentence ask it to stop later instead.
    spec = planted_length(_smol_cpu(), "smol-control", "first_sentence", "higher")
    spec.dpo.num_epochs = 3
    spec.dpo.learning_rate = 3e-4
    return spec


PRESETS: dict[str, Any] = {
    "tiny-cpu": _tiny_cpu,
    "tiny-control": _tiny_control,
    "tiny-ci": _tiny_ci,
    "smol-answer": _smol_answer,
    "smol-cpu": _smol_cpu,
    "smol-ci": _smol_ci,
    "smol-control": _smol_control,
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
    data["stages"] = [name for name, s in registry.STAGES.items() if not s.optional or name in spec.stages]
    data["data"]["max_instructions"] = 24
    for section in ("generation", "negatives", "eval"):
        sampling = data[section]["sampling"]
        sampling["max_new_tokens"] = min(sampling["max_new_tokens"], 32)
    for section in ("sft", "dpo"):
        data[section]["max_steps"] = 2
        data[section]["checkpoint_every"] = 1
    data["eval"]["max_prompts"] = 6
    data["compare"]["n_bootstrap"] = 200
    data["judge"]["max_prompts"] = 2
    return from_dict(RunSpec, data)
