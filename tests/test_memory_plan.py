"""The memory planner (pipeline.core.memory_plan): shapes read from config.json agree with the models themselves,
each term moves with the setting it depends on, a stage its GPU class cannot hold is named with the class that
can, and Launch shows the plan. How close the plan comes to measured peaks is `python -m bench memory_plan`."""

import copy
import json

import pytest

from app.forms import GROUP_KEY
from app.text import shown
from pipeline.core.configs import preset
from pipeline.core.errors import ConfigError
from pipeline.core.memory_plan import (
    ModelShape,
    fit_warnings,
    planned_peaks,
    read_shape,
    shape_from_config,
    stage_peak,
)

SMOLLM2 = {  # SmolLM2-135M-Instruct's config.json (the catalog model), tied embeddings
    "model_type": "llama",
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "head_dim": 64,
    "vocab_size": 49152,
    "tie_word_embeddings": True,
}
QWEN2 = {  # Qwen2.5-0.5B's layout at a tenth of its width: biases on q/k/v, untied embeddings
    "model_type": "qwen2",
    "hidden_size": 96,
    "intermediate_size": 480,
    "num_hidden_layers": 3,
    "num_attention_heads": 6,
    "num_key_value_heads": 2,
    "vocab_size": 1000,
    "tie_word_embeddings": False,
}
LLAMA_7B = {
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "vocab_size": 32000,
}


def meta_parameter_count(config: dict) -> int:
    """What the model class itself holds, built on the meta device (no memory): the planner's reference."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    fields = {k: v for k, v in config.items() if k != "model_type"}
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(config["model_type"], **fields))
    model.tie_weights()
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("config", [SMOLLM2, QWEN2, LLAMA_7B], ids=["smollm2", "qwen2", "llama-7b"])
def test_the_parameter_count_from_config_json_is_the_models_own(config):
    assert shape_from_config(config, "config.json").parameters == meta_parameter_count(config)


def test_the_tiny_models_shape_is_read_from_its_directory_and_lora_counts_as_peft_does(tiny_model_dir, alignlab_home):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    shape = read_shape("alignlab-tiny", alignlab_home)
    assert shape.source == str(tiny_model_dir / "config.json")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert shape.parameters == sum(p.numel() for p in model.parameters())
    for rank, targets in ((8, "all-linear"), (4, "q_proj,v_proj")):
        modules = targets if targets == "all-linear" else targets.split(",")
        adapted = get_peft_model(copy.deepcopy(model), LoraConfig(r=rank, target_modules=modules))
        trainable = sum(p.numel() for p in adapted.parameters() if p.requires_grad)
        assert shape.lora_parameters(rank, targets) == trainable, targets


def test_a_model_this_host_does_not_have_is_unknown_not_guessed(tmp_path):
    assert read_shape("someone/never-downloaded-model", tmp_path) is None
    assert read_shape(str(tmp_path / "no-such-dir"), tmp_path) is None


def test_a_config_without_a_decoder_field_names_the_file_and_the_field(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 64}))
    with pytest.raises(ConfigError, match=r"model/config.json: field intermediate_size: missing"):
        read_shape(str(model), tmp_path)


def shape_of(config: dict) -> ModelShape:
    return shape_from_config(config, "config.json")


def test_each_term_moves_with_the_setting_it_depends_on():
    shape, spec = shape_of(SMOLLM2), preset("smol-cpu")
    base = stage_peak(shape, spec, "train_sft", "cuda")

    doubled = copy.deepcopy(spec)
    doubled.sft.batch_size *= 2
    twice = stage_peak(shape, doubled, "train_sft", "cuda")
    assert twice["activations"] == 2 * base["activations"] and twice["logits"] == 2 * base["logits"]
    assert twice["weights"] == base["weights"]

    checkpointed = copy.deepcopy(spec)
    checkpointed.sft.activation_checkpointing = True
    assert stage_peak(shape, checkpointed, "train_sft", "cuda")["activations"] < base["activations"] / 3

    weights = {}
    for dtype, eight_bit in (("float32", False), ("bfloat16", False), ("bfloat16", True)):
        variant = copy.deepcopy(spec)
        variant.base_model.dtype, variant.base_model.load_in_8bit = dtype, eight_bit
        weights[(dtype, eight_bit)] = stage_peak(shape, variant, "evaluate", "cuda")["weights"]
    assert weights[("float32", False)] == 2 * weights[("bfloat16", False)] > 2 * weights[("bfloat16", True)] // 1.5
    assert weights[("bfloat16", True)] < weights[("bfloat16", False)]

    full = copy.deepcopy(spec)
    full.dpo.use_lora, full.dpo.precompute_ref_log_probs = False, False
    lora_dpo, full_dpo = stage_peak(shape, spec, "train_dpo", "cuda"), stage_peak(shape, full, "train_dpo", "cuda")
    assert "reference model" not in lora_dpo and full_dpo["reference model"] == full_dpo["weights"]
    assert full_dpo["adapter and optimizer"] > 10 * lora_dpo["adapter and optimizer"]
    full.dpo.precompute_ref_log_probs = True  # the reference's log-probs come first: no second model at the peak
    assert "reference model" not in stage_peak(shape, full, "train_dpo", "cuda")

    dpo, sft = stage_peak(shape, spec, "train_dpo", "cuda"), stage_peak(shape, spec, "train_sft", "cuda")
    assert dpo["logits"] == 2 * sft["logits"] * spec.dpo.batch_size * spec.dpo.max_length // (
        spec.sft.batch_size * spec.sft.max_length
    )  # chosen and rejected in one batch


def test_measured_lengths_replace_the_configured_maximum():
    shape, spec = shape_of(SMOLLM2), preset("smol-cpu")
    worst = stage_peak(shape, spec, "train_sft", "cpu")
    seen = stage_peak(shape, spec, "train_sft", "cpu", {"sft": spec.sft.max_length // 4})
    assert seen["activations"] * 4 == worst["activations"]
    beyond = stage_peak(shape, spec, "train_sft", "cpu", {"sft": spec.sft.max_length * 4})
    assert beyond == worst  # a batch never holds more than max_length tokens per sequence


def test_stages_without_a_model_are_not_planned_and_negatives_only_with_model_samples():
    shape, spec = shape_of(SMOLLM2), preset("smol-cpu")
    planned = [p.node for p in planned_peaks({"base_model": shape}, spec)]
    assert planned == ["generate_sft", "train_sft", "negatives", "dpo_sft", "dpo_base"] + [
        f"eval_{m}" for m in ("base", "sft", "sft_dpo", "dpo_only")
    ]
    without = copy.deepcopy(spec)
    without.negatives.types = [t for t in spec.negatives.types if t != "model_sample"]
    assert "negatives" not in [p.node for p in planned_peaks({"base_model": shape}, without)]


def test_the_judge_is_planned_on_its_own_model_and_an_unknown_one_is_said_not_dropped():
    from pipeline.core.configs import JudgeConfig
    from pipeline.core.memory_plan import plan_rows

    smol, llama = shape_of(SMOLLM2), shape_of(LLAMA_7B)
    spec = preset("smol-cpu")
    spec.stages = [*spec.stages, "judge"]
    spec.judge.model.dtype, spec.judge.model.load_in_8bit = "bfloat16", False
    peaks = {p.node: p for p in planned_peaks({"base_model": smol, "judge.model": llama}, spec)}
    judge = peaks["judge"]
    assert judge.terms["weights"] == llama.parameters * 2 and judge.device == "cuda"  # the judge's model, its dtype
    assert peaks["eval_base"].terms["weights"] == smol.parameters * 4 and peaks["eval_base"].device == "cpu"
    assert judge.terms["logits"] == spec.judge.batch_size * llama.vocab * 4  # the last position only
    spec.judge.model.load_in_8bit = True
    eight_bit = planned_peaks({"base_model": smol, "judge.model": llama}, spec)[-1]
    assert eight_bit.terms["weights"] < judge.terms["weights"] * 0.6
    rows = {r["stage"]: r for r in plan_rows({"base_model": smol}, spec)}  # this host lacks the judge's config
    assert rows["judge"]["planned peak"] == "unknown" and spec.judge.model.name_or_path in rows["judge"]["made of"]
    spec.judge = JudgeConfig(kind="endpoint", endpoint_url="http://127.0.0.1:8000/v1", endpoint_model="m")
    assert "judge" not in {r["stage"] for r in plan_rows({"base_model": smol}, spec)}  # an endpoint holds no model


def test_a_stage_its_gpu_class_cannot_hold_is_named_with_the_class_that_can():
    shape, spec = shape_of(LLAMA_7B), preset("qwen2.5-0.5b-runpod")  # the pod preset's settings on a 7B Llama
    spec.base_model.load_in_8bit = False
    warned = dict(w.split(": ", 1) for w in fit_warnings({"base_model": shape}, spec))
    # 64 prompts x 512 tokens of KV cache (16 GiB) and the prefill's logits beside 12.6 GiB of bf16 weights
    assert warned["eval_base"].startswith("needs ~32.3 GiB, more than gpu's 24 GiB; queue it on gpu-80gb")
    assert warned["eval_base"].endswith("(execution.queues.evaluate)")
    # 16 sequences x 1024 tokens without activation checkpointing: no card holds it
    assert "no GPU class holds it" in warned["train_sft"] and "no GPU class holds it" in warned["dpo_base"]

    spec.generation.batch_size = spec.eval.batch_size = 16
    spec.sft.activation_checkpointing = spec.dpo.activation_checkpointing = True
    spec.sft.batch_size, spec.dpo.batch_size = 4, 2
    assert fit_warnings({"base_model": shape}, spec) == []  # LoRA on a 24 GB card, as people do it

    spec.dpo.use_lora, spec.dpo.precompute_ref_log_probs = False, True  # full DPO: gradients and AdamW per weight
    warned = fit_warnings({"base_model": shape}, spec)
    assert [w.split(":")[0] for w in warned] == ["dpo_sft", "dpo_base"]
    assert all("queue it on gpu-80gb (execution.queues.train_dpo)" in w for w in warned)
    spec.dpo.precompute_ref_log_probs = False  # and a second copy of the weights as the reference
    assert all("no GPU class holds it" in w for w in fit_warnings({"base_model": shape}, spec))
    spec.dpo.precompute_ref_log_probs = True
    spec.execution.queues["train_dpo"] = "gpu-80gb"
    assert fit_warnings({"base_model": shape}, spec) == []


def shown_plan(at):
    """Launch's memory plan table (AppTest finds a dataframe by position, not by key)."""
    (plan,) = [frame.value for frame in at.dataframe if "planned peak" in frame.value.columns]
    return plan


def test_launch_shows_the_plan_and_warns_when_a_stage_will_not_fit(filled, alignlab_home):
    from tests.test_launch import launch_page, previewed

    at = launch_page()  # tiny-cpu: the tiny model, configured for the CPU
    plan = shown_plan(at)
    spec = preset("tiny-cpu")
    assert list(plan["stage"]) == [
        p.node for p in planned_peaks({"base_model": read_shape("alignlab-tiny", alignlab_home)}, spec)
    ]
    assert set(plan["fits its class"]) == {"on the CPU: no planned limit"}

    at.selectbox(key=GROUP_KEY).set_value("base_model").run()
    at.selectbox(key="form.base_model.device").set_value("auto").run()  # now on a GPU of the gpu class (24 GiB)
    plan = shown_plan(at)
    assert set(plan["fits its class"]) == {"yes"} and set(plan["queue"]) == {"gpu"}
    assert not [w for w in at.warning if shown(w.value).startswith("Will not fit")]

    at.number_input(key="form.sft.learning_rate").set_value(1e-4).run()  # a key setting: drawn with every group
    at.selectbox(key=GROUP_KEY).set_value("sft").run()
    at.number_input(key="form.sft.batch_size").set_value(128).run()
    at.number_input(key="form.sft.max_length").set_value(2560).run()  # 327,680 tokens a batch: ~40 GiB
    warned = [shown(w.value) for w in at.warning if shown(w.value).startswith("Will not fit")]
    assert len(warned) == 1 and warned[0].startswith("Will not fit: train_sft: needs ~")
    assert "more than gpu's 24 GiB; queue it on gpu-80gb (execution.queues.train_sft)" in warned[0]
    plan = shown_plan(at)
    assert plan.set_index("stage").loc["train_sft", "fits its class"] == "no: gpu has 24 GiB"

    at.button(key="launch_fit_queues").click().run()  # the plan's advice, taken: shown in the preview first
    assert previewed(at)["execution"]["queues"]["train_sft"] == "gpu-80gb"
    assert not [w for w in at.warning if shown(w.value).startswith("Will not fit")]
    plan = shown_plan(at).set_index("stage")
    assert plan.loc["train_sft", "queue"] == "gpu-80gb" and plan.loc["train_sft", "fits its class"] == "yes"
    assert not [b for b in at.button if b.key == "launch_fit_queues"]

    at.text_input(key="form.base_model.name_or_path").set_value("someone/not-on-this-host").run()
    assert not at.exception
    assert any(t.value.startswith("Memory: unknown: someone/not-on-this-host's config.json is not on") for t in at.text)
    assert not [frame for frame in at.dataframe if "planned peak" in frame.value.columns]
    assert not [b for b in at.button if b.key == "launch_fit_queues"]
    assert not [w for w in at.warning if shown(w.value).startswith("Will not fit")]
