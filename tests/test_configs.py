import json

import pytest

from pipeline.core.configs import (
    PRESETS,
    DPOConfig,
    EvalConfig,
    FormatConfig,
    GenerationConfig,
    ModelConfig,
    NegativesConfig,
    RunSpec,
    dump_spec,
    from_dict,
    load_spec,
    preset,
    to_dict,
)
from pipeline.core.errors import ConfigError


@pytest.mark.parametrize("name", sorted(PRESETS))
@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_presets_round_trip_unchanged(tmp_path, name, suffix):
    spec = preset(name)
    path = dump_spec(spec, tmp_path / f"spec{suffix}")
    again = load_spec(path)
    assert again == spec
    assert to_dict(again) == to_dict(spec)
    # a second write is byte-identical: nothing drifts through a save/load cycle
    assert dump_spec(again, tmp_path / f"again{suffix}").read_text() == path.read_text()


def test_every_field_has_help():
    from pipeline.core.configs import field_table

    fields = field_table()
    assert len(fields) > 80
    for dotted, schema in fields:
        assert schema.get("description"), f"{dotted} has no help"


def test_unknown_keys_are_named(tmp_path):
    data = to_dict(preset("tiny-cpu"))
    data["sft"]["learnig_rate"] = 0.1
    data["colour"] = "red"
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError) as err:
        load_spec(path)
    message = str(err.value)
    assert "RunSpec.colour" in message and str(path) in message
    del data["colour"]
    with pytest.raises(ConfigError, match=r"SFTConfig\.learnig_rate \(at sft\.learnig_rate\): unknown key"):
        from_dict(RunSpec, data)


@pytest.mark.parametrize(
    "build, field, fragment",
    [
        (lambda: GenerationConfig(sampling={"temperature": 0}), "SamplingConfig.temperature", "0.01 .. 5.0"),
        (lambda: EvalConfig(sampling={"top_p": 1.5}), "SamplingConfig.top_p", "0.01 .. 1.0"),
        (lambda: GenerationConfig(batch_size=0), "GenerationConfig.batch_size", "1 .. 1024"),
        (lambda: GenerationConfig(min_response_chars=50, max_response_chars=10), "min_response_chars", "below"),
        (lambda: DPOConfig(beta=0.0), "DPOConfig.beta", "0.0001 .. 10.0"),
        (lambda: DPOConfig(loss_type="magic"), "DPOConfig.loss_type", "sigmoid"),
        (lambda: DPOConfig(learning_rate="fast"), "DPOConfig.learning_rate", "expected a number"),
        (lambda: ModelConfig(dtype="int3"), "ModelConfig.dtype", "bfloat16"),
        (lambda: ModelConfig(load_in_8bit="sometimes"), "ModelConfig.load_in_8bit", "'auto', True or False"),
        (lambda: ModelConfig(name_or_path=" "), "ModelConfig.name_or_path", "model id"),
        (lambda: NegativesConfig(types=["bogus"]), "NegativesConfig.types", "model_sample"),
        (lambda: NegativesConfig(types=["truncated"], weights={"refusal": 1.0}), "weights.refusal", "not in types"),
        (lambda: FormatConfig(template="no placeholder"), "FormatConfig.template", "{instruction}"),
        (lambda: FormatConfig(template="Q: {instruction}\nA: "), "FormatConfig.template", "whitespace"),
        # the template bomb: a width that pads every prompt to gigabytes
        (lambda: FormatConfig(template="Q: {instruction:>999999999}\nA:"), "FormatConfig.template", "bare"),
        (lambda: FormatConfig(template="Q: {instruction!r}\nA:"), "FormatConfig.template", "conversion"),
        (lambda: FormatConfig(template="Q: {instruction.__class__}\nA:"), "FormatConfig.template", "found"),
        (lambda: FormatConfig(template="Q: {instruction[0]}\nA:"), "FormatConfig.template", "found"),
        (lambda: FormatConfig(template="{instruction} {instruction}"), "FormatConfig.template", "exactly once"),
        # the bypass of the old check (one literal "{instruction}" beside a padded one)
        (lambda: FormatConfig(template="{instruction}{instruction:>999999999}"), "FormatConfig.template", "once"),
        (lambda: FormatConfig(template="{0} {instruction}"), "FormatConfig.template", "{0}"),
        (lambda: FormatConfig(template="{{instruction}} x"), "FormatConfig.template", "found: none"),
        (lambda: FormatConfig(template="Q: {instruction"), "FormatConfig.template", "braces"),
        (lambda: FormatConfig(template="{instruction}" + "x" * 5000), "FormatConfig.template", "at most 4000"),
        (lambda: RunSpec(stages=["train_sft", "train_sft"]), "RunSpec.stages", "twice"),
        (lambda: RunSpec(stages=["fly"]), "RunSpec.stages", "generate_sft"),
    ],
)
def test_impossible_values_name_field_and_range(build, field, fragment):
    with pytest.raises(ConfigError) as err:
        build()
    assert field in str(err.value)
    assert fragment in str(err.value)


def test_a_template_renders_its_literal_text_around_the_instruction_and_nothing_else():
    from pipeline.formats import render_turns

    fmt = FormatConfig(template='{{"q": "{instruction}"}}\nA:')
    rendered = render_turns([{"role": "user", "content": "{0} {instruction:>9} }"}], fmt)
    assert rendered == '{"q": "{0} {instruction:>9} }"}\nA:'  # braces in the instruction are text, not fields


def test_values_are_coerced_and_stages_kept_in_dag_order():
    spec = from_dict(RunSpec, {"stages": ["compare", "generate_sft"], "dpo": {"beta": 1}})
    assert spec.stages == ["generate_sft", "compare"]
    assert isinstance(spec.dpo.beta, float)
    assert ModelConfig(load_in_8bit=True).load_in_8bit is True


def test_nested_type_errors_name_the_path():
    with pytest.raises(ConfigError, match=r"RunSpec\.dpo"):
        from_dict(RunSpec, {"dpo": "beta=0.2"})
    with pytest.raises(ConfigError, match=r"NaN"):
        from_dict(RunSpec, {"dpo": {"beta": float("nan")}})


def test_broken_config_files_name_the_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("sft: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml"):
        load_spec(path)
    with pytest.raises(ConfigError, match="not found"):
        load_spec(tmp_path / "missing.yaml")


def test_tiny_cpu_preset_uses_tiny_model_and_gpu_preset_a_real_id():
    assert preset("tiny-cpu").base_model.name_or_path == "alignlab-tiny"
    gpu = preset("qwen2.5-0.5b-runpod")
    assert gpu.base_model.name_or_path == "Qwen/Qwen2.5-0.5B-Instruct"
    assert gpu.base_model.trust_remote_code is False
    with pytest.raises(ConfigError, match="unknown preset"):
        preset("nope")
