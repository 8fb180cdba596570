"""Stage effects on the tiny model: training changes what it should, checks catch what they should."""

import copy
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from pipeline.artifacts import write_jsonl
from pipeline.core.errors import DataError, MaskingError
from pipeline.core.negative_types import REGISTRY, NegativeContext
from pipeline.core.registry import node_by_name
from pipeline.dag import artifact_keys, default_store, run_node
from pipeline.models import load_model
from pipeline.stages import compare, evaluate, pairs, read_jsonl, train_sft
from pipeline.stages.generate_sft import clean_response
from pipeline.training import model_config_from_ref


def mean_sft_loss(model_config, records):
    """Mean completion NLL per token under a model, computed independently of the stages."""
    from pipeline.core.configs import FormatConfig
    from pipeline.generation import HFGenerator

    model, tok, _ = load_model(model_config)
    scores = HFGenerator(SimpleNamespace(model=model, tokenizer=tok), FormatConfig()).completion_logprobs(
        [r["prompt"] for r in records], [r["completion"] for r in records]
    )
    return -sum(s for s, _ in scores) / sum(n for _, n in scores)


def test_sft_lowers_training_loss_and_changes_parameters(dag_run, tiny_ci_spec):
    all_records = read_jsonl(Path(dag_run.results["generate_sft"].out_dir) / "sft.jsonl")
    records = [r for r in all_records if r["meta"]["split"] == "train"]  # what SFT trained on
    sft_dir = Path(dag_run.results["train_sft"].out_dir)
    before = mean_sft_loss(tiny_ci_spec.base_model, records)
    after = mean_sft_loss(model_config_from_ref(sft_dir, tiny_ci_spec.base_model), records)
    assert after < before - 0.05, (before, after)
    from safetensors.torch import load_file

    adapter = load_file(sft_dir / "model" / "adapter_model.safetensors")
    lora_b = [t for name, t in adapter.items() if "lora_B" in name]
    assert lora_b and all(t.abs().sum() > 0 for t in lora_b)  # LoRA B starts at zero: nonzero means trained
    result = dag_run.results["train_sft"]
    assert result.checks["masking_verified"]["passed"] and result.metrics["parameters_changed"] > 0
    log = [json.loads(line) for line in (sft_dir / "train_log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in log] == list(range(1, len(log) + 1))
    assert all(k in log[0] for k in ("loss", "lr", "grad_norm", "tokens_per_s", "memory_bytes"))
    assert result.previews["mask_examples"] and any(t["trained"] for t in result.previews["mask_examples"][0]["tokens"])


@pytest.mark.parametrize("node, init_model", [("dpo_sft", "sft"), ("dpo_base", "base")])
def test_dpo_raises_the_reward_margin_relative_to_its_init(dag_run, tiny_ci_spec, node, init_model):
    from pipeline.core.configs import FormatConfig
    from pipeline.generation import HFGenerator

    train = read_jsonl(Path(dag_run.results["pairs"].out_dir) / "train.jsonl")
    dpo_dir = Path(dag_run.results[node].out_dir)
    if init_model == "sft":
        init_config = tiny_ci_spec.base_model.model_copy(update=dict(name_or_path=str(dpo_dir / "init_model")))
    else:
        init_config = tiny_ci_spec.base_model

    def margins(config):
        model, tok, _ = load_model(config)
        prompts = [p["prompt"] for p in train] * 2
        scores = HFGenerator(SimpleNamespace(model=model, tokenizer=tok), FormatConfig()).completion_logprobs(
            prompts, [p["chosen"] for p in train] + [p["rejected"] for p in train]
        )
        return [scores[i][0] - scores[len(train) + i][0] for i in range(len(train))]

    init = margins(init_config)
    trained = margins(model_config_from_ref(dpo_dir, tiny_ci_spec.base_model))
    implicit_reward_margin = sum(t - i for t, i in zip(trained, init, strict=True)) / len(train)
    assert implicit_reward_margin > 0.1, implicit_reward_margin


def test_sft_dpo_starts_from_the_sft_model_not_the_base(dag_run, tiny_ci_spec):
    """The merged init of SFT→DPO scores like the SFT model (adapter on base), and unlike the base."""
    records = read_jsonl(Path(dag_run.results["generate_sft"].out_dir) / "sft.jsonl")[:8]
    merged = tiny_ci_spec.base_model.model_copy(
        update=dict(name_or_path=str(Path(dag_run.results["dpo_sft"].out_dir) / "init_model"))
    )
    sft = model_config_from_ref(Path(dag_run.results["train_sft"].out_dir), tiny_ci_spec.base_model)
    assert abs(mean_sft_loss(merged, records) - mean_sft_loss(sft, records)) < 1e-4
    assert abs(mean_sft_loss(merged, records) - mean_sft_loss(tiny_ci_spec.base_model, records)) > 1e-3


def test_evaluation_logprobs_equal_an_independent_forward_pass(dag_run, tiny_ci_spec):
    rows = read_jsonl(Path(dag_run.results["eval_base"].out_dir) / "pairs_eval.jsonl")
    heldout = read_jsonl(Path(dag_run.results["pairs"].out_dir) / "heldout.jsonl")
    by_id = {evaluate.prompt_id(p["prompt"]): p for p in heldout}
    row = rows[0]
    pair = next(
        p
        for p in heldout
        if evaluate.prompt_id(p["prompt"]) == row["prompt_id"] and p.get("negative_type") == row["negative_type"]
    )
    assert row["prompt_id"] in by_id
    model, tok, _ = load_model(tiny_ci_spec.base_model)
    prompt_ids = [tok.bos_token_id] + tok(pair["prompt"], add_special_tokens=False)["input_ids"]
    chosen_ids = tok(pair["chosen"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    ids = torch.tensor([prompt_ids + chosen_ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0].float(), -1)
    expected = sum(logp[len(prompt_ids) - 1 + k, t].item() for k, t in enumerate(chosen_ids))
    assert abs(row["chosen_logp"] - expected) < 1e-3


def test_every_heldout_prompt_is_evaluated_even_one_without_a_pair():
    """The generation metrics need no pair: a held-out prompt for which no negative (so no pair) was made is still
    generated on, with its SFT completion as the reference; train prompts never are."""

    def record(prompt, split, completion):
        return {"prompt": prompt, "completion": completion, "meta": {"split": split, "reference": None}}

    records = [
        record("Name a colour.", "heldout", " Blue."),
        record("Name a fruit.", "heldout", " An apple."),
        record("Name a tree.", "train", " An oak."),
    ]
    paired = {"prompt": "Name a colour.", "chosen": " Blue.", "rejected": " Blue blue blue.", "split": "heldout"}
    prompts, pairs = evaluate.heldout_prompts(records, [paired], max_prompts=0)
    assert sorted(p["prompt"] for p in prompts.values()) == ["Name a colour.", "Name a fruit."]
    assert prompts[evaluate.prompt_id("Name a fruit.")]["reference"] == " An apple."
    assert pairs == [paired]


def test_the_evaluation_generates_on_the_heldout_prompts_of_the_sft_records(dag_run, tiny_ci_spec):
    records = read_jsonl(Path(dag_run.results["generate_sft"].out_dir) / "sft.jsonl")
    heldout = sorted(evaluate.prompt_id(r["prompt"]) for r in records if r["meta"]["split"] == "heldout")
    samples = read_jsonl(Path(dag_run.results["eval_sft"].out_dir) / "samples.jsonl")
    expected = heldout[: tiny_ci_spec.eval.max_prompts] if tiny_ci_spec.eval.max_prompts else heldout
    assert [s["prompt_id"] for s in samples] == expected


def test_parity_check_fails_when_beta_differs(dag_run, tiny_ci_spec, alignlab_home, tmp_path):
    changed = copy.deepcopy(tiny_ci_spec)
    changed.dpo.beta = 0.3
    store = default_store(alignlab_home)
    other = run_node(changed, store, node_by_name("dpo_base"), artifact_keys(changed))
    inputs = {name: Path(r.out_dir) for name, r in dag_run.results.items() if name != "compare"}
    inputs["dpo_base"] = Path(other.out_dir)
    result = compare.run(tiny_ci_spec, inputs, tmp_path)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["parity"]["fair"] is False
    assert "trainer.beta" in [d["field"] for d in report["parity"]["differences"]]
    assert "NOT a fair comparison" in (tmp_path / "report.md").read_text()
    assert result.metrics["go"] is False


def test_a_collator_that_shifts_the_mask_is_caught_before_the_first_step(dag_run, tiny_ci_spec, tmp_path, monkeypatch):
    """The check verifies the batches as the trainer's own collator builds them: labels shifted by one token (a
    prompt token trained, the EOS not) fail the stage with the example before any optimizer step."""
    from trl.trainer import sft_trainer

    collate = sft_trainer.DataCollatorForLanguageModeling.torch_call

    def shifted(self, examples):
        batch = collate(self, examples)
        labels = batch["labels"].clone()
        batch["labels"][:, 1:], batch["labels"][:, 0] = labels[:, :-1], -100
        return batch

    monkeypatch.setattr(sft_trainer.DataCollatorForLanguageModeling, "torch_call", shifted)
    (tmp_path / "out").mkdir()
    with pytest.raises(MaskingError) as err:
        train_sft.run(tiny_ci_spec, {"sft": Path(dag_run.results["generate_sft"].out_dir)}, tmp_path / "out")
    assert "example 0" in str(err.value) and "expected completion" in str(err.value)
    assert not list((tmp_path / "out").glob("checkpoints/checkpoint-*"))  # stopped before the first step


def test_a_prompt_ending_in_a_space_keeps_its_exact_boundary(tiny_model_dir):
    """Prompt and completion are tokenized apart and joined (as generation encodes the prompt), so the completion's
    first token can never merge with a prompt's trailing space, as a joint tokenization of prompt + completion would."""
    from transformers import AutoTokenizer

    from pipeline.formats import encode_prompt, tokenize_pair, verify_masking

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompt, completion = "Instruction: Name a colour.\nResponse: ", "The sky is blue."
    example = tokenize_pair(tokenizer, prompt, completion, 128)
    verify_masking(tokenizer, example.input_ids, example.labels, completion)
    assert example.input_ids[: example.prompt_tokens] == encode_prompt(tokenizer, prompt)


class Interrupt(Exception):
    pass


def test_training_interrupted_after_k_steps_resumes_at_step_k(dag_run, tiny_ci_spec, alignlab_home):
    spec = copy.deepcopy(tiny_ci_spec)
    spec.sft.checkpoint_every = 3  # a new key: this SFT run is not the session's
    store = default_store(alignlab_home)
    keys = artifact_keys(spec)
    node = node_by_name("train_sft")

    def crash_after_step_4(event):
        if event["kind"] == "metric" and event["step"] == 4:
            raise Interrupt("worker killed")

    with pytest.raises(Interrupt):
        run_node(spec, store, node, keys, crash_after_step_4)
    assert not store.is_complete(keys["train_sft"])
    assert (store.partial_path(keys["train_sft"]) / "checkpoints" / "checkpoint-3").is_dir()
    steps = []
    result = run_node(spec, store, node, keys, lambda e: steps.append(e["step"]) if e["kind"] == "metric" else None)
    assert result.metrics["resumed_from"] == "checkpoint-3"
    assert steps[0] == 4  # resumed at step k + 1: steps 1..3 were not redone
    log = [json.loads(x)["step"] for x in (Path(result.out_dir) / "train_log.jsonl").read_text().splitlines()]
    assert log == list(range(1, result.metrics["steps"] + 1))  # no duplicate or missing step


def test_clean_response_cuts_strips_and_rejects(tiny_ci_spec):
    fmt, config = tiny_ci_spec.format, tiny_ci_spec.generation
    assert clean_response(" Paris is the capital.\nInstruction: next", "Q?", fmt, config) == (
        "Paris is the capital.",
        "ok",
    )
    assert clean_response("Response: Paris is nice.", "Q?", fmt, config) == ("Paris is nice.", "ok")
    assert clean_response("   ", "Q?", fmt, config) == (None, "empty")
    assert clean_response(" ok", "Q?", fmt, config)[1] == "too_short"
    assert clean_response(" the cat the cat the cat the cat the cat", "Q?", fmt, config)[1] == "repetitive"
    assert clean_response(" x" * 3000, "Q?", fmt, config)[1] == "too_long"


def test_negative_registry_types_are_documented_and_typed(tiny_ci_spec):
    import random

    assert set(REGISTRY) == {
        "model_sample",
        "truncated",
        "off_topic",
        "repetitive",
        "refusal",
        "constraint_violation",
        "padded",  # opt-in: the positive controls' planted preferences
        "first_sentence",
    }
    assert all(fn.__doc__ for fn in REGISTRY.values())
    records = [
        {
            "prompt": "P1",
            "completion": " The capital of France is Paris.",
            "meta": {"instruction": "Capital of France?", "split": "train"},
        },
        {
            "prompt": "P2",
            "completion": " Green.",
            "meta": {"instruction": "Answer with a single word: what color is grass?", "split": "train"},
        },
        {
            "prompt": "P3",
            "completion": " Vast, salty water.",
            "meta": {"instruction": "Describe the sea in at most five words.", "split": "train"},
        },
    ]
    ctx = lambda i: NegativeContext(random.Random(0), records, i)  # noqa: E731
    assert REGISTRY["constraint_violation"](records[0], ctx(0)) is None  # asks for no constraint
    assert len(REGISTRY["constraint_violation"](records[1], ctx(1)).split()) > 1
    assert len(REGISTRY["constraint_violation"](records[2], ctx(2)).split()) > 5
    assert REGISTRY["off_topic"](records[0], ctx(0)) in {"Green.", "Vast, salty water."}
    truncated = REGISTRY["truncated"](records[0], ctx(0))
    assert records[0]["completion"].strip().startswith(truncated) and len(truncated) < len(records[0]["completion"])
    assert REGISTRY["model_sample"](records[0], ctx(0)) is None  # no sample generated for it


def test_every_stage_that_loads_a_model_reports_its_peak_and_its_release(dag_run, tiny_ci_spec):
    """The load facts are read once the model's block has ended: read inside it, the peak and the memory after the
    release are still empty (generate_negatives once reported its load so)."""
    assert "model_sample" in tiny_ci_spec.negatives.types
    loads = {node: r.load_info for node, r in dag_run.results.items() if r.load_info}
    assert {"generate_sft", "negatives", "train_sft", "dpo_sft", "dpo_base", "eval_base"} <= set(loads)
    for node, info in loads.items():
        assert info["peak_memory_bytes"] >= info["memory_before_bytes"] > 0, node
        assert info["memory_after_release_bytes"] > 0, node


def test_pairs_split_by_prompt_never_leaks(dag_run, tiny_ci_spec):
    out = Path(dag_run.results["pairs"].out_dir)
    train = {r["prompt"] for r in read_jsonl(out / "train.jsonl")}
    heldout = {r["prompt"] for r in read_jsonl(out / "heldout.jsonl")}
    assert train and heldout and not train & heldout
    # without a split field in the data: a seeded share of distinct prompts, repeats (up to case) kept together
    from pipeline.stages.split import assign

    instructions = [(i + 1, f"Prompt {i % 10}" if i % 2 else f"prompt {i % 10}") for i in range(50)]
    spec = copy.deepcopy(tiny_ci_spec)
    spec.split.heldout_fraction, spec.split.split_field = 0.3, ""
    split, rule = assign(instructions, {}, spec, "rows")
    held = {text.casefold() for row, text in instructions if split[row] == "heldout"}
    trained = {text.casefold() for row, text in instructions if split[row] == "train"}
    assert len(held) == 3 and held.isdisjoint(trained) and "seeded shuffle" in rule
    assert assign(instructions, {}, spec, "rows")[0] == split  # the same split every time


# ----------------------------------------------------------------------------------------------- bad input


def stage_fails_and_nothing_completes(spec, node_name, alignlab_home, match):
    store = default_store(alignlab_home)
    keys = artifact_keys(spec)
    with pytest.raises(DataError, match=match) as err:
        run_node(spec, store, node_by_name(node_name), keys)
    assert not store.is_complete(keys[node_name])
    return err.value


def test_missing_instructions_file_names_it(tiny_model_dir, tiny_ci_spec, alignlab_home, tmp_path):
    spec = copy.deepcopy(tiny_ci_spec)
    spec.data.instructions = str(tmp_path / "nope.jsonl")
    stage_fails_and_nothing_completes(spec, "split", alignlab_home, "nope.jsonl does not exist")


def test_malformed_instruction_rows_name_file_row_and_field(tiny_model_dir, tiny_ci_spec, alignlab_home, tmp_path):
    path = tmp_path / "instructions.jsonl"
    path.write_text('{"instruction": "What is 2 plus 2?"}\n{"instruction": \n{"text": "no field"}\n')
    spec = copy.deepcopy(tiny_ci_spec)
    spec.data.instructions = str(path)
    error = stage_fails_and_nothing_completes(spec, "split", alignlab_home, "instructions.jsonl:2")
    assert "instructions.jsonl:3 field instruction: missing_field" in str(error)


def test_all_generations_rejected_stops_generate_sft(tiny_model_dir, tiny_ci_spec, alignlab_home):
    spec = copy.deepcopy(tiny_ci_spec)
    spec.data.max_instructions = 6
    spec.generation.min_response_chars = 1900
    spec.generation.retries = 1
    run_node(spec, default_store(alignlab_home), node_by_name("split"))  # its prompts' split comes first
    error = stage_fails_and_nothing_completes(spec, "generate_sft", alignlab_home, "all 6 generations were rejected")
    assert error.report.stats["generation"]["dropped_by_reason"] == {"too_short": 6}


def test_unknown_negative_type_stops_make_pairs(dag_run, tiny_ci_spec, tmp_path):
    rows = read_jsonl(Path(dag_run.results["negatives"].out_dir) / "negatives.jsonl")
    rows[2]["negative_type"] = "sarcasm"
    (tmp_path / "neg").mkdir()
    write_jsonl(tmp_path / "neg" / "negatives.jsonl", rows)
    (tmp_path / "out").mkdir()
    with pytest.raises(DataError) as err:
        pairs.run(tiny_ci_spec, {"negatives": tmp_path / "neg"}, tmp_path / "out")
    assert "negatives.jsonl:3 field negative_type: unknown_negative_type" in str(err.value)
    assert not (tmp_path / "out" / "train.jsonl").exists()


def test_corrupt_sft_records_stop_train_sft(tiny_ci_spec, tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "sft.jsonl").write_text('{"prompt": "Instruction: a\\nResponse:", "completion": 3}\n')
    with pytest.raises(DataError, match=r"sft.jsonl:1 field completion: wrong_type"):
        train_sft.run(tiny_ci_spec, {"sft": tmp_path / "in"}, tmp_path)


def test_full_fine_tuning_route_keeps_the_sft_model_as_dpo_reference(dag_run, tiny_ci_spec, alignlab_home):
    spec = copy.deepcopy(tiny_ci_spec)
    spec.sft.use_lora = spec.dpo.use_lora = False
    spec.sft.max_steps, spec.dpo.max_steps = 3, 2
    store, keys = default_store(alignlab_home), artifact_keys(spec)
    sft = run_node(spec, store, node_by_name("train_sft"), keys)
    sft_dir = Path(sft.out_dir)
    assert json.loads((sft_dir / "model_ref.json").read_text()) == {"name_or_path": "model", "adapter": None}
    assert (sft_dir / "model" / "model.safetensors").exists() and sft.metrics["parameters_changed"] > 0
    dpo = run_node(spec, store, node_by_name("dpo_sft"), keys)
    assert dpo.metrics["init_model"] == str(sft_dir / "model")
    assert dpo.checks["reference_is_init"]["passed"], dpo.checks


def test_a_checkpoint_cut_off_mid_save_is_skipped_on_resume(tmp_path):
    from pipeline.training import last_checkpoint

    complete = tmp_path / "checkpoints" / "checkpoint-5"
    complete.mkdir(parents=True)
    (complete / "trainer_state.json").write_text('{"global_step": 5}')
    cut_off = tmp_path / "checkpoints" / "checkpoint-10"
    cut_off.mkdir()
    (cut_off / "optimizer.pt").write_bytes(b"partial")  # killed before trainer_state.json was written
    assert last_checkpoint(tmp_path) == str(complete)
    assert not cut_off.exists()
    assert last_checkpoint(tmp_path / "nothing") is None
