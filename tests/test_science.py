"""The comparison is right: held-out prompts are chosen first and never reach a training input, the answer is
stated with its primary metric apart from the pipeline's health, and what trains is what was verified."""

import copy
import json
from pathlib import Path

import pytest

from pipeline.core.configs import RunSpec, SplitConfig, from_dict
from pipeline.core.errors import DataError
from pipeline.core.text import normalize_text
from pipeline.stages import read_jsonl
from pipeline.validation import check_decontamination, validate_sft_data


def texts_of(rows, *fields):
    return {normalize_text(r[f]) for r in rows for f in fields if r.get(f)}


def test_held_out_prompts_and_answers_never_reach_a_training_input(dag_run):
    results = dag_run.results
    split = json.loads((Path(results["split"].out_dir) / "split.json").read_text())
    heldout_instructions = {normalize_text(t) for t in split["heldout_instructions"]}
    assert split["heldout"] > 0 and split["rule"] == "the data's field 'split'"
    sft = read_jsonl(Path(results["generate_sft"].out_dir) / "sft.jsonl")
    trained_on = [r for r in sft if r["meta"]["split"] == "train"]
    assert {normalize_text(r["meta"]["instruction"]) for r in trained_on}.isdisjoint(heldout_instructions)
    assert results["train_sft"].metrics["examples"] <= len(trained_on) < len(sft)
    pairs_dir = Path(results["pairs"].out_dir)
    train, heldout = read_jsonl(pairs_dir / "train.jsonl"), read_jsonl(pairs_dir / "heldout.jsonl")
    held_texts = texts_of(heldout, "prompt", "chosen") | {normalize_text(r["reference"]) for r in heldout}
    # no held-out prompt, answer or reference answer in any training pair: not even as another prompt's negative
    assert held_texts.isdisjoint(texts_of(train, "prompt", "chosen", "rejected"))
    assert {r["split"] for r in train} == {"train"} and {r["split"] for r in heldout} == {"heldout"}
    for node in ("train_sft", "dpo_sft", "dpo_base"):
        (report,) = [r for r in results[node].reports if r["kind"] == "decontamination"]
        assert report["passed"] and report["stats"]["contaminated"] == 0 and report["stats"]["heldout_texts"] > 0


def test_the_tiny_base_model_never_saw_a_held_out_prompt():
    from pipeline.tiny import demo_corpus, demo_records

    corpus = "\n".join(demo_corpus())
    heldout = [r for r in demo_records() if r["split"] == "heldout"]
    assert len(heldout) >= 40
    assert not [r["instruction"] for r in heldout if r["instruction"] in corpus]


def test_the_report_states_the_answer_with_its_primary_metric_apart_from_go(dag_run):
    report = json.loads((Path(dag_run.report_dir) / "report.json").read_text())
    answer = report["answer"]
    assert answer["metric"] == "preference_accuracy" and "SFT→DPO − DPO-only" in answer["text"]
    assert report["headline"]["role"] == "primary" and report["headline"]["metric"] == "preference_accuracy"
    assert {d["role"] for d in report["differences"]} == {"primary", "secondary", "descriptive"}
    assert "Holm" in report["correction"]
    leak_free = report["heldout"]["decontamination"]
    assert [c["stage"] for c in leak_free] == ["train_sft", "dpo_sft", "dpo_base"]
    assert all(c["passed"] and c["contaminated"] == 0 for c in leak_free) and report["heldout"]["split"]["heldout"] > 0
    assert {c["item"]: c["passed"] for c in report["checklist"]}["held-out data never in a training input"]
    markdown = (Path(dag_run.report_dir) / "report.md").read_text()
    assert "## Held-out data" in markdown and "leak-free" in markdown
    assert markdown.index("## The answer") < markdown.index("## Pipeline health")
    for d in report["differences"]:  # a verdict only where the pre-declared test rejects, its interval agreeing
        if d["verdict"] in ("better", "worse", "higher", "lower"):
            assert d["p_adjusted"] < 0.05 and d["p"] < 0.05 and (d["ci_low"] > 0 or d["ci_high"] < 0)
        if d["ci_low"] is not None:
            assert d["ci_low"] <= d["mean"] <= d["ci_high"]
    table = report["table"]
    for method in ("sft_dpo", "dpo_only"):
        assert table[method]["implicit_reward_accuracy"]["n"] > 0
    assert table["base"]["implicit_reward_accuracy"]["n"] == 0  # a base model has no implicit reward
    for method in table:
        assert 0 < table[method]["unique_output_share"]["mean"] <= 1
        assert table[method]["token_f1"]["n"] > 0  # the demo has reference answers


def test_a_planted_overlap_between_held_out_and_sft_data_fails_the_run(tiny_model_dir, tiny_ci_spec, tmp_path):
    from pipeline.dag import run_dag

    shared = "Describe in one long sentence how a small river slowly carves a deep valley over many years"
    rows = [{"instruction": f"What is {a} plus {b}?", "split": "train"} for a in range(4) for b in range(3)]
    rows += [{"instruction": shared + ".", "split": "train"}, {"instruction": shared + ", please.", "split": "heldout"}]
    rows += [{"instruction": f"Name the colour number {i}.", "split": "heldout"} for i in range(3)]
    data = tmp_path / "planted.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = copy.deepcopy(tiny_ci_spec)
    spec.data.instructions, spec.data.max_instructions = str(data), 0
    spec.generation.max_rejected_fraction = 0.9
    spec.stages = ["split_prompts", "generate_sft", "train_sft"]
    with pytest.raises(DataError) as caught:
        run_dag(spec, tmp_path / "home")
    message = str(caught.value)
    assert "heldout_in_training" in message and "shares" in message and "instruction" in message


def test_decontamination_counts_exact_copies_and_near_copies_not_shared_templates():
    config = SplitConfig()
    training = [
        ("t:1", "instruction", "Answer with a single word: what color is milk?"),
        ("t:2", "completion", "The capital of France is Paris."),
        ("t:3", "completion", "White."),
    ]
    heldout = [
        ("h:1", "instruction", "Answer with a single word: what color is grass?"),  # a shared template
        ("h:2", "chosen", "the capital of  France is Paris."),  # an exact copy
        ("h:3", "chosen", "White."),
    ]  # a one-word answer: not evidence of a leak
    report = check_decontamination(heldout, training, config, "held")
    assert [(i.row, i.code) for i in report.errors] == [(2, "heldout_in_training")]
    assert not report.passed and report.stats["contaminated"] == 1


def test_a_split_field_wins_and_an_old_spec_keeps_its_held_out_share():
    migrated = from_dict(RunSpec, {"name": "old", "pairs": {"heldout_fraction": 0.3, "seed": 4}})
    assert migrated.split.heldout_fraction == 0.3 and migrated.pairs.seed == 4
    from pipeline.core.registry import selected_nodes

    chosen = selected_nodes(from_dict(RunSpec, {"stages": ["generate_sft", "train_sft"]}).stages)
    assert [n.name for n in chosen] == ["split", "generate_sft", "train_sft"]  # the split always comes first


def test_a_completion_with_a_literal_special_token_is_refused(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = [
        (1, {"prompt": "Instruction: hi\nResponse:", "completion": " Hello.</s> And more."}),
        (2, {"prompt": "Instruction: bye\nResponse:", "completion": " Goodbye."}),
    ]
    valid, report = validate_sft_data(rows, tokenizer=tokenizer, source="mine.jsonl")
    assert [r["completion"] for r in valid] == [" Goodbye."]
    (issue,) = [i for i in report.errors if i.row is not None]  # besides the file-level error-rate line
    assert (issue.row, issue.field, issue.code) == (1, "completion", "special_token_in_text")
    assert "</s>" in issue.message


def test_train_and_eval_token_ids_agree(dag_run, tiny_ci_spec, tmp_path):
    """The ids TRL trains on (its own tokenization of prompt + completion) are the ids evaluation scores."""
    from datasets import Dataset
    from trl import SFTConfig as TRLSFTConfig
    from trl import SFTTrainer

    from pipeline.formats import tokenize_pair
    from pipeline.models import loaded
    from pipeline.training import trainer_args

    records = [r for r in read_jsonl(Path(dag_run.results["generate_sft"].out_dir) / "sft.jsonl")][:12]
    with loaded(tiny_ci_spec.base_model) as m:
        args = TRLSFTConfig(
            **trainer_args(tiny_ci_spec.sft, tmp_path, m.info), completion_only_loss=True, packing=False
        )
        dataset = Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in records])
        trainer = SFTTrainer(model=m.model, args=args, train_dataset=dataset, processing_class=m.tokenizer)
        for index, record in enumerate(records):
            ours = tokenize_pair(m.tokenizer, record["prompt"], record["completion"], tiny_ci_spec.sft.max_length)
            trained = trainer.train_dataset[index]
            assert trained["input_ids"] == ours.input_ids, index
            assert trained["labels"] == ours.labels, index  # the same tokens trained, the same prompt masked


def test_eos_padding_is_not_taken_for_a_generated_eos(tiny_model_dir):
    from transformers import AutoTokenizer

    from pipeline.generation import generated_part

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    eos = tokenizer.eos_token_id
    stopped = tokenizer("Paris.\nInstruction:", add_special_tokens=False)["input_ids"]
    ended = tokenizer("Paris.", add_special_tokens=False)["input_ids"]
    # stopped by the stop string, then filled with pad == EOS: no EOS was generated
    assert generated_part([*stopped, eos, eos], eos, eos, tokenizer, ["\nInstruction:"]) == (stopped, False)
    assert generated_part([*ended, eos, eos], eos, eos, tokenizer, ["\nInstruction:"]) == ([*ended, eos], True)
    assert generated_part(ended, eos, eos, tokenizer, ["\nInstruction:"]) == (ended, False)


def test_correctness_against_a_reference_answer():
    from pipeline.core.text import correctness

    assert correctness("The capital of France is Paris.", "the capital of france is paris") == {
        "exact_match": 1.0,
        "token_f1": 1.0,
    }
    partial = correctness("Paris is the capital.", "The capital of France is Paris.")
    # articles dropped: {paris, is, capital} against {capital, of, france, is, paris}: P = 1, R = 3/5
    assert partial["exact_match"] == 0.0 and partial["token_f1"] == pytest.approx(0.75)


def _sft(instruction: str, completion: str, split: str) -> dict:
    return {
        "prompt": f"Instruction: {instruction}\nResponse:",
        "completion": f" {completion}",
        "meta": {"instruction": instruction, "split": split},
    }


def test_a_held_out_answer_the_base_model_also_wrote_for_a_training_prompt_is_not_held_out():
    """The base model may write one answer for a training and a held-out prompt (the tiny-cpu preset does): that
    held-out prompt is dropped where the SFT data is made, so train_sft's decontamination check passes."""
    from pipeline.stages.split import contaminated_heldout, sft_decontamination

    spec = RunSpec()
    records = [
        _sft("Name the colour of a clear sky.", "The sky is blue on a clear and sunny day.", "train"),
        _sft("What colour is the sky at noon?", "The sky is blue on a clear and sunny day.", "heldout"),
        _sft("Name a fruit that grows on trees.", "An apple is a fruit that grows on trees.", "heldout"),
    ]
    assert not sft_decontamination(records, spec, "sft.jsonl").passed
    assert list(contaminated_heldout(records, spec, "sft.jsonl")) == [1]
    assert sft_decontamination([records[0], records[2]], spec, "sft.jsonl").passed


def test_make_pairs_drops_a_held_out_pair_whose_negative_is_a_training_negative(tmp_path):
    """A fixed reply (constraint_violation's 'It depends ...') rejected for a training and a held-out prompt alike: the
    held-out pair is dropped and reported, and the pairs pass train_dpo's decontamination check."""
    from pipeline.artifacts import write_jsonl
    from pipeline.stages import pairs
    from pipeline.stages.split import pairs_decontamination

    spec = from_dict(RunSpec, {"pairs": {"balance_types": False}})
    fixed = " It depends on many things, and it is hard to say in general."
    rows = [
        ("Is water wet? Answer yes or no.", " Yes, water is wet to the touch.", fixed, "constraint_violation", "train"),
        ("Is fire hot? Answer yes or no.", " Yes, fire is hot to the touch.", fixed, "constraint_violation", "heldout"),
        ("Is ice cold? Answer yes or no.", " Yes, ice is cold to the touch.", " Yes, ice", "truncated", "heldout"),
    ]
    negatives = tmp_path / "negatives"
    negatives.mkdir()
    write_jsonl(
        negatives / "negatives.jsonl",
        [
            {"prompt": f"Instruction: {p}\nResponse:", "chosen": c, "rejected": r, "negative_type": t, "split": s}
            for p, c, r, t, s in rows
        ],
    )
    out = tmp_path / "out"
    out.mkdir()
    result = pairs.run(spec, {"negatives": negatives}, out)
    heldout = read_jsonl(out / "heldout.jsonl")
    assert [r["negative_type"] for r in heldout] == ["truncated"]
    assert result.metrics["heldout_dropped_as_contaminated"] == 1
    (report,) = [r for r in result.reports if r["kind"] == "pairs"]
    assert [i["code"] for i in report["issues"]].count("heldout_same_as_training") == 1
    assert pairs_decontamination(read_jsonl(out / "train.jsonl"), heldout, spec, str(out)).passed


def test_decontamination_sees_short_texts_inside_training_inputs():
    """Texts under 8 words had no 8-gram and escaped the check: now a held-out text of 3 to 7 words that occurs
    word for word inside a training input is a leak (n = its length); one- and two-word answers still need an exact
    match, and a short text that merely shares words is not a leak."""
    config = SplitConfig()
    training = [
        ("t:1", "completion", "Well, 28 minus 12 equals 16, as everyone knows."),
        ("t:2", "instruction", "What is the capital of Kenya?"),
    ]
    heldout = [
        ("h:1", "chosen", "28 minus 12 equals 16."),  # 5 words, inside t:1: a leak 8-grams cannot see
        ("h:2", "instruction", "What is the capital of Peru?"),  # shares the frame, not the question
        ("h:3", "chosen", "16."),  # a number alone: not evidence
    ]
    report = check_decontamination(heldout, training, config, "held")
    assert [(i.row, i.code) for i in report.errors] == [(1, "heldout_in_training")]
    assert "shares 100% of its 5-grams" in report.errors[0].message
