"""Peak memory of each stage before anything runs, and the GPU class that fits it.

From the model's `config.json` alone (no weights read: the dashboard and the scheduler plan without torch), its
dtype, 8-bit, LoRA or full training, sequence length, batch size and the stage's workload, each stage's peak is
the sum of named terms (bytes), so a page can say what the memory goes to:

- `weights`: parameters × bytes per parameter (4 float32, 2 bfloat16/float16; 8-bit: the decoder blocks' linear
  layers at 1 byte, embeddings and norms at 2).
- `adapter and optimizer` (training): LoRA's trainable parameters (r × (in + out) per adapted linear layer) held in
  float32 with their gradient and AdamW's two moments: 16 bytes each. Full training: the gradient (bytes per
  parameter) and AdamW's two moments (float32) of every parameter.
- `reference model` (DPO, full training without precomputed reference log-probs): a second copy of the weights.
  With LoRA the reference is the policy with its adapter disabled: no copy.
- `activations` (training): what the backward pass keeps per token and decoder layer (the norms' inputs, q/k/v and
  their rotary copies, the attention output, the MLP's gate, up, activation and product, LoRA's dropout copies of
  each adapted layer's input): about 13 h + 3 kv + 5 i values (h hidden, kv key/value width, i MLP width), at the
  activation dtype; with activation checkpointing only each layer's input (h) is kept, plus one layer's worth.
  DPO runs chosen and rejected as one batch: twice the sequences.
- `logits` (training and scoring): tokens × vocabulary × 4 bytes (float32 logits), times 3 (logits, log-softmax,
  and their gradient when training, the gathered copy when scoring).
- `kv cache` (generation): 2 × layers × batch × (prompt + new tokens) × kv width × activation bytes; `activations`
  (generation): the prefill's logits over every prompt token (batch × prompt × vocabulary × 4) and one layer's MLP.
- `judge` (the judge stage, a local judge or reward model): one forward pass per batch of judge prompts (the
  instruction, both answers and the template: `PROMPT_TOKENS` + twice the evaluation's `max_new_tokens` + 128), with
  its `activations` (one layer's MLP over the batch) and the `logits` of the last position only.
- Several devices (`devices` N of a training section): every term is per device. Each device runs `batch_size` / N
  sequences; with `ddp` each holds the whole model, with `fsdp` or `deepspeed_zero3` 1/N of the weights, the
  adapter and optimizer term and the reference model, plus one decoder layer's weights gathered while it runs
  (`gathered layer`).
- `runtime`: what a process pays around the model once it runs it: on a GPU the CUDA context and cuBLAS workspace
  (~0.5 GiB, not in `max_memory_allocated` but taken from the card); on the CPU the allocator, the kernels and the
  thread pools, measured as the peak RSS delta that the terms above leave unexplained on the tiny model and on
  SmolLM2-135M (tiny-ci and smol-ci, forked workers, 2026-12-04).
- `autograd working set (CPU)` (training on the CPU): what a training process on the CPU holds beyond the terms
  above grows with the model, by about one more copy of its weights (measured on the same two models: 585 MiB of
  513 MiB weights for SmolLM2, 84 of 12 MiB for the tiny model, i.e. weights + 72 MiB); a GPU's
  `max_memory_allocated` has no such term, so the GPU formula leaves it out. Likewise `generation kept (CPU)`:
  evaluate generates, then scores, in one process; on the CPU the scoring's tensors come on top of what the
  generation's left with the allocator, on a GPU the caching allocator reuses it (the larger of the two phases).

The sequence length is the configured maximum (`max_length` for training; for generation a prompt of
`PROMPT_TOKENS` + `max_new_tokens`), so the estimate is the worst case a batch can reach; `lengths` (the longest
sequence a stage saw, in tokens, by config section: the prompt for generation, prompt + response for training and
scoring, `eval.prompt` for the evaluation's own generation) replaces it when checking the formula against a run.
Checked against measured peak RSS deltas in `bench memory_plan` and tests/test_memory_plan.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.core.configs import QUEUE_MEMORY_GIB, TINY_MODEL, ModelConfig, RunSpec, tiny_dir_name
from pipeline.core.errors import ConfigError
from pipeline.core.registry import STAGES, node_by_name, selected_nodes

MIB = 2**20
GIB = 2**30
WEIGHT_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# what a process pays around the model once it runs it (see the module docstring); CPU values measured as the peak
# RSS delta of each workload on the tiny model in a forked worker (tiny-ci, 2026-12-04), minus its other terms
RUNTIME_BYTES = {
    ("cpu", "generate"): 48 * MIB,
    ("cpu", "score"): 30 * MIB,
    ("cpu", "train"): 72 * MIB,
    ("cuda", "generate"): 512 * MIB,
    ("cuda", "score"): 512 * MIB,
    ("cuda", "train"): 768 * MIB,
}
LOGITS_COPIES = 3  # logits, log-softmax, and their gradient (training) or the gathered copy (scoring)
# the longest prompt alignlab expects before a response (instruction + template / chat turns) when no data is seen:
# the generation stages' prompts are the instructions, whose length the config does not bound
PROMPT_TOKENS = 256
JUDGE_TEMPLATE_TOKENS = 128  # the judge prompt's fixed words and chat turns around the instruction and two answers
BASE_MODEL = "base_model"
Shapes = dict[str, "ModelShape"]  # RunSpec path of a ModelConfig ("base_model", "judge.model") -> its shape


@dataclass(frozen=True)
class ModelShape:
    """What the planner needs of a decoder-only transformer, read from its config.json."""

    source: str
    parameters: int
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    block_linears: tuple[tuple[str, int, int], ...]  # (name, in, out) of each linear layer in one decoder block

    @property
    def kv_width(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def block_linear_parameters(self) -> int:
        return self.layers * sum(i * o for _, i, o in self.block_linears)

    def lora_parameters(self, rank: int, targets: str) -> int:
        """LoRA's trainable parameters: r × (in + out) for each adapted linear layer of every block."""
        wanted = None if targets == "all-linear" else {t.strip() for t in targets.split(",") if t.strip()}
        per_block = sum(rank * (i + o) for name, i, o in self.block_linears if wanted is None or name in wanted)
        return self.layers * per_block


_REQUIRED = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")


def shape_from_config(config: dict[str, Any], source: str) -> ModelShape:
    """The shape of a Llama-style decoder (Llama, Mistral, Qwen2, SmolLM, ...) from its config.json's fields."""
    missing = [name for name in _REQUIRED if not isinstance(config.get(name), int)]
    if missing:
        raise ConfigError(
            f"{source}: field {missing[0]}: missing or not an integer; the memory planner reads decoder-only models "
            f"with {', '.join(_REQUIRED)}"
        )
    h, i, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    heads, vocab = config["num_attention_heads"], config["vocab_size"]
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or h // heads
    qkv_bias = bool(config.get("attention_bias", config.get("model_type") in ("qwen2", "qwen2_moe")))
    o_bias = bool(config.get("attention_bias", False)) and config.get("model_type") != "qwen2"
    mlp_bias = bool(config.get("mlp_bias", False))
    linears = (
        ("q_proj", h, heads * head_dim),
        ("k_proj", h, kv_heads * head_dim),
        ("v_proj", h, kv_heads * head_dim),
        ("o_proj", heads * head_dim, h),
        ("gate_proj", h, i),
        ("up_proj", h, i),
        ("down_proj", i, h),
    )
    biases = (heads + 2 * kv_heads) * head_dim * qkv_bias + h * o_bias + (2 * i + h) * mlp_bias
    per_block = sum(a * b for _, a, b in linears) + biases + 2 * h  # two RMSNorms
    embeddings = vocab * h * (1 if config.get("tie_word_embeddings", False) else 2)
    return ModelShape(
        source=source,
        parameters=embeddings + layers * per_block + h,  # + the final norm
        layers=layers,
        hidden=h,
        intermediate=i,
        heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        vocab=vocab,
        block_linears=linears,
    )


def model_config_file(name_or_path: str, home: Path, revision: str | None = None) -> Path | None:
    """Where this host has the model's config.json without downloading anything: the built tiny model, a fetched
    catalog model, a local directory, or a hub id already in the Hugging Face cache. None when it has not."""
    from pipeline.core.catalog import packaged

    if name_or_path == TINY_MODEL:
        candidate = home / "models" / tiny_dir_name() / "config.json"
    elif packaged(name_or_path) is not None:
        candidate = home / "models" / name_or_path / "config.json"
    elif Path(name_or_path).expanduser().is_dir():
        candidate = Path(name_or_path).expanduser() / "config.json"
    else:
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(name_or_path, "config.json", revision=revision)
        except Exception:  # noqa: BLE001 - not a valid repo id: no cached config
            return None
        return Path(cached) if isinstance(cached, str) else None
    return candidate if candidate.is_file() else None


def read_shape(name_or_path: str, home: Path, revision: str | None = None) -> ModelShape | None:
    """The model's shape from its config.json on this host, None when this host has no copy of it."""
    path = model_config_file(name_or_path, home, revision)
    if path is None:
        return None
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not a readable config.json ({exc})") from exc
    return shape_from_config(config.get("text_config", config), str(path))


@dataclass
class Peak:
    """A stage's planned peak memory on one device kind, as named terms."""

    node: str
    stage: str
    queue: str
    device: str
    terms: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.terms.values())

    @property
    def limit_gib(self) -> int | None:
        """The memory of its GPU class's card; None on the CPU (no planned limit)."""
        return QUEUE_MEMORY_GIB.get(self.queue) if self.device == "cuda" else None

    @property
    def fits(self) -> bool:
        return self.limit_gib is None or self.total <= self.limit_gib * GIB


def model_of(spec: RunSpec, stage: str) -> ModelConfig:
    """The ModelConfig a stage loads (its declared `Stage.model` path in the spec)."""
    value: Any = spec
    for part in STAGES[stage].model.split("."):
        value = getattr(value, part)
    return value


def read_shapes(spec: RunSpec, home: Path) -> Shapes:
    """The shape of every model the spec's selected stages load, where this host has its config.json."""
    shapes: Shapes = {}
    for node in selected_nodes(spec.stages):
        path = STAGES[node.stage].model
        if STAGES[node.stage].memory is not None and path not in shapes:
            model = model_of(spec, node.stage)
            shape = read_shape(model.name_or_path, home, model.revision)
            if shape is not None:
                shapes[path] = shape
    return shapes


def _weight_bytes(shape: ModelShape, model: ModelConfig, device: str) -> tuple[int, int]:
    """(weights in bytes, activation bytes per value) on `device` for the model's dtype and 8-bit choice."""
    dtype = model.dtype
    if dtype == "auto":
        dtype = "bfloat16" if device == "cuda" else "float32"
    per = WEIGHT_BYTES[dtype]
    if model.load_in_8bit is True and device == "cuda":
        rest = shape.parameters - shape.block_linear_parameters
        return shape.block_linear_parameters + rest * 2, 2
    return shape.parameters * per, per


def _training_terms(shape: ModelShape, spec: RunSpec, section: str, device: str, length: int | None) -> dict:
    config = getattr(spec, section)
    weights, act = _weight_bytes(shape, spec.base_model, device)
    sequences = config.per_device_batch * (2 if section == "dpo" else 1)  # DPO: chosen and rejected in one batch
    n = sequences * min(length or config.max_length, config.max_length)
    h, i, kv = shape.hidden, shape.intermediate, shape.kv_width
    per_token_layer = h if config.activation_checkpointing else 13 * h + 3 * kv + 5 * i
    activations = n * shape.layers * per_token_layer * act
    if config.activation_checkpointing:
        activations += n * (13 * h + 3 * kv + 5 * i) * act  # the one layer being recomputed
    terms = {"weights": weights, "activations": activations, "logits": n * shape.vocab * 4 * LOGITS_COPIES}
    if config.use_lora:
        terms["adapter and optimizer"] = 16 * shape.lora_parameters(
            spec.base_model.lora_r, spec.base_model.lora_target_modules
        )
    else:
        terms["adapter and optimizer"] = shape.parameters * (weights // shape.parameters + 8)
        if section == "dpo" and not spec.dpo.precompute_ref_log_probs:
            terms["reference model"] = weights
    shards = config.devices if config.distributed != "ddp" else 1
    if shards > 1:  # FSDP / ZeRO-3: each device holds its share, and gathers one decoder layer's weights at a time
        for name in ("weights", "adapter and optimizer", "reference model"):
            if name in terms:
                terms[name] = -(-terms[name] // shards)
        terms["gathered layer"] = weights // max(1, shape.layers)
    terms["runtime"] = RUNTIME_BYTES[(device, "train")]
    if device == "cpu":
        terms["autograd working set (CPU)"] = weights
    return terms


def _generation_terms(shape: ModelShape, spec: RunSpec, batch: int, new_tokens: int, device: str, prompt: int) -> dict:
    weights, act = _weight_bytes(shape, spec.base_model, device)
    length = prompt + new_tokens
    return {
        "weights": weights,
        "kv cache": 2 * shape.layers * batch * length * shape.kv_width * act,
        # the prefill's widest moment: its logits over every prompt token, and one layer's MLP over them
        "activations": batch * prompt * (shape.vocab * 4 + (2 * shape.hidden + 3 * shape.intermediate) * act),
        "runtime": RUNTIME_BYTES[(device, "generate")],
    }


def _scoring_terms(shape: ModelShape, spec: RunSpec, batch: int, length: int, device: str) -> dict:
    """evaluate: generation on the held-out prompts, then teacher-forced scoring of the pairs (the larger peak)."""
    weights, act = _weight_bytes(shape, spec.base_model, device)
    n = batch * length
    return {
        "weights": weights,
        "activations": n * (2 * shape.hidden + 3 * shape.intermediate) * act,
        "logits": n * shape.vocab * 4 * LOGITS_COPIES,
        "runtime": RUNTIME_BYTES[(device, "score")],
    }


def _judging_terms(shape: ModelShape, spec: RunSpec, device: str, length: int | None) -> dict:
    """judge: forward passes over batches of judge prompts, the last position's logits only (a reward model: one
    score per row)."""
    weights, act = _weight_bytes(shape, spec.judge.model, device)
    length = length or PROMPT_TOKENS + 2 * spec.eval.sampling.max_new_tokens + JUDGE_TEMPLATE_TOKENS
    n = spec.judge.batch_size * length
    return {
        "weights": weights,
        "activations": n * (2 * shape.hidden + 3 * shape.intermediate) * act,
        "logits": 0 if spec.judge.kind == "reward_model" else spec.judge.batch_size * shape.vocab * 4,
        "runtime": RUNTIME_BYTES[(device, "score")],
    }


def stage_peak(
    shape: ModelShape, spec: RunSpec, stage: str, device: str, lengths: dict[str, int] | None = None
) -> dict[str, int] | None:
    """The named terms of one stage's peak on `device` ("cpu" or "cuda"), None for a stage that loads no model;
    `shape` is the shape of the model the stage loads (`Stage.model`). `lengths` replaces the configured worst-case
    lengths with measured ones (see the module docstring)."""
    use = STAGES[stage].memory
    loads_model = STAGES[stage].loads_model
    if use is None or (loads_model is not None and not loads_model(spec)):
        return None
    lengths = lengths or {}
    workload, section = use
    if workload == "train":
        return _training_terms(shape, spec, section, device, lengths.get(section))
    if workload == "judge":
        return _judging_terms(shape, spec, device, lengths.get(section))
    if workload == "generate":
        sampling = getattr(spec, section).sampling
        prompt = lengths.get(section, PROMPT_TOKENS)
        return _generation_terms(shape, spec, spec.generation.batch_size, sampling.max_new_tokens, device, prompt)
    config = getattr(spec, section)  # score: the evaluation's generation, then the pairs scored in batches
    prompt = lengths.get(f"{section}.prompt", PROMPT_TOKENS)
    generation = _generation_terms(shape, spec, config.batch_size, config.sampling.max_new_tokens, device, prompt)
    length = lengths.get(section, PROMPT_TOKENS + config.sampling.max_new_tokens)
    scoring = _scoring_terms(shape, spec, config.batch_size, length, device)
    if device == "cpu":  # the allocator keeps the generation's working memory: the scoring comes on top of it
        scoring["generation kept (CPU)"] = generation["kv cache"] + generation["activations"]
        return scoring
    return max(generation, scoring, key=lambda terms: sum(terms.values()))  # CUDA's caching allocator reuses it


def _loads_model(spec: RunSpec, stage: str) -> bool:
    declared = STAGES[stage]
    return declared.memory is not None and (declared.loads_model is None or declared.loads_model(spec))


def planned_peaks(
    shapes: Shapes, spec: RunSpec, device: str | None = None, lengths: dict[str, int] | None = None
) -> list[Peak]:
    """Each selected node that loads a model whose shape is known (`shapes`), with its peak on `device` when given,
    else where it will run: the CPU for a model configured there (`device: cpu`) or a node on the `cpu` queue, a
    GPU otherwise."""
    peaks = []
    for node in selected_nodes(spec.stages):
        shape = shapes.get(STAGES[node.stage].model)
        if shape is None or not _loads_model(spec, node.stage):
            continue
        queue = spec.execution.queue_for(node.stage)
        on = device or ("cpu" if model_of(spec, node.stage).device == "cpu" or queue == "cpu" else "cuda")
        terms = stage_peak(shape, spec, node.stage, on, lengths)
        if terms is not None:
            peaks.append(Peak(node.name, node.stage, queue, on, terms))
    return peaks


def unplanned_nodes(shapes: Shapes, spec: RunSpec) -> list[tuple[str, str]]:
    """(node, model) of each selected node that loads a model this host has no config.json of: not planned."""
    return [
        (node.name, model_of(spec, node.stage).name_or_path)
        for node in selected_nodes(spec.stages)
        if _loads_model(spec, node.stage) and STAGES[node.stage].model not in shapes
    ]


def fitting_queue(peak: int) -> str | None:
    """The smallest GPU class whose memory holds `peak`, None when none does."""
    sized = sorted((gib, queue) for queue, gib in QUEUE_MEMORY_GIB.items() if gib is not None)
    return next((queue for gib, queue in sized if peak <= gib * GIB), None)


def fitting_queues(shapes: Shapes, spec: RunSpec) -> dict[str, str]:
    """Stage -> the smallest GPU class that holds it, for each GPU stage its own class cannot hold but another can."""
    needs: dict[str, int] = {}
    for peak in planned_peaks(shapes, spec):
        if not peak.fits:
            needs[peak.stage] = max(needs.get(peak.stage, 0), peak.total)
    return {stage: queue for stage, peak in needs.items() if (queue := fitting_queue(peak)) is not None}


def fit_warnings(shapes: Shapes, spec: RunSpec) -> list[str]:
    """One line per node whose planned peak does not fit the memory of the GPU class it is queued on."""
    warnings = []
    for peak in planned_peaks(shapes, spec):
        if peak.fits:
            continue
        better = fitting_queue(peak.total)
        advice = (
            f"queue it on {better}"
            if better
            else "no GPU class holds it: use 8-bit, LoRA, shorter sequences or a smaller batch"
        )
        warnings.append(
            f"{peak.node}: needs ~{peak.total / GIB:.1f} GiB, more than {peak.queue}'s {peak.limit_gib} GiB; {advice} "
            f"(execution.queues.{peak.stage})"
        )
    return warnings


def terms_text(terms: dict[str, int]) -> str:
    """'weights 513 MiB + activations 96 MiB + …' for a page or a log line."""
    return " + ".join(f"{name} {value / MIB:,.0f} MiB" for name, value in terms.items() if value)


def size_text(size: int) -> str:
    """Bytes as people read them: '512 MiB', '3.4 GiB'."""
    return f"{size / GIB:,.1f} GiB" if size >= GIB else f"{size / MIB:,.0f} MiB"


def plan_rows(shapes: Shapes, spec: RunSpec) -> list[dict[str, str]]:
    """One row per node that loads a model: its queue, planned peak, whether its class holds it, what it is made of;
    a node whose model this host has no config.json of says so instead of being left out."""
    rows = []
    for peak in planned_peaks(shapes, spec):
        if peak.limit_gib is None:
            fits = "on the CPU: no planned limit"
        else:
            fits = "yes" if peak.fits else f"no: {peak.queue} has {peak.limit_gib} GiB"
        rows.append(
            {
                "stage": peak.node,
                "queue": peak.queue,
                "planned peak": size_text(peak.total),
                "fits its class": fits,
                "made of": terms_text(peak.terms),
            }
        )
    for node, model in unplanned_nodes(shapes, spec):
        rows.append(
            {
                "stage": node,
                "queue": spec.execution.queue_for(node_by_name(node).stage),
                "planned peak": "unknown",
                "fits its class": "unknown",
                "made of": f"{model}: its config.json is not on this host; the worker's preflight plans it",
            }
        )
    return rows
