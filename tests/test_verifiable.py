"""The primary metric with headroom: verifiable tasks with gold answers, a checker per task, SFT data that does not
confound the comparison (gold references, or base-model samples verified by the checker)."""

import json
from pathlib import Path

import pytest

from pipeline.core.checkers import CHECKERS, check_answer, check_problem
from pipeline.sources import shipped_path

ROWS = [json.loads(line) for line in shipped_path("verifiable").read_text().splitlines()]


def test_the_verifiable_set_is_large_enough_to_plan_for_and_split_by_category():
    assert len(ROWS) >= 600
    heldout = [r for r in ROWS if r["split"] == "heldout"]
    assert len(heldout) >= 200
    categories = {r["category"] for r in ROWS}
    assert len(categories) >= 8
    assert categories == {r["category"] for r in heldout}  # every task family is held out too
    assert {r["check"]["type"] for r in ROWS} == set(CHECKERS)  # every checker is used
    assert len({r["instruction"] for r in ROWS}) == len(ROWS)


def test_every_gold_answer_passes_its_checker_and_wrong_answers_do_not():
    """Planted: the gold response is right by its checker (100%). Null: the gold answer to another row of the same
    task family passes only where the two rows' gold answers are the same (two sums of 40, two 'yes'); a refusal
    and an empty answer never pass."""
    by_category: dict[str, list[dict]] = {}
    for row in ROWS:
        by_category.setdefault(row["category"], []).append(row)
    failing = [
        r["instruction"] for r in ROWS if check_problem(r["check"]) or not check_answer(r["response"], r["check"])
    ]
    assert failing == []
    compared = 0
    for rows in by_category.values():
        for row, other in zip(rows, rows[1:] + rows[:1], strict=True):
            same_gold = {k: v for k, v in other["check"].items() if k != "accept"} == {
                k: v for k, v in row["check"].items() if k != "accept"
            }
            assert check_answer(other["response"], row["check"]) is same_gold, (row, other)
            assert not check_answer("I'm sorry, I cannot help with that.", row["check"])
            assert not check_answer("", row["check"])
            compared += 1
    assert compared == len(ROWS)


@pytest.mark.parametrize(
    "answer, check, correct",
    [
        ("28 minus 12 equals 12.", {"type": "number", "value": 16}, False),
        ("28 minus 12 equals 16.", {"type": "number", "value": 16}, True),
        ("The answer is sixteen.", {"type": "number", "value": 16}, True),
        ("The capital of Turkey is Istanbul.", {"type": "phrase", "value": "Ankara"}, False),
        ("Ankara is Turkey's capital.", {"type": "phrase", "value": "Ankara"}, True),
        ("The opposite of 'hot' is 'cold'.", {"type": "phrase", "value": "cold"}, True),
        ("No, 12 is less than 45.", {"type": "yes_no", "value": "no"}, True),
        ("Yes, 12 is less than 45.", {"type": "yes_no", "value": "no"}, False),
        ("River", {"type": "exact_case", "value": "RIVER"}, False),
        ("RIVER", {"type": "exact_case", "value": "RIVER"}, True),
        ("Green.", {"type": "single_word", "value": "green"}, True),
        ("It is green.", {"type": "single_word", "value": "green"}, False),
        ("Three fruits: apples, pears and plums.", {"type": "list_items", "n": 3}, True),
        ("Fruits: apples, pears, plums and figs.", {"type": "list_items", "n": 3}, False),
        ("- apples\n- pears\n- plums", {"type": "list_items", "n": 3}, True),
        ("I walked to school.", {"type": "sentence", "value": "I walked to school."}, True),
        ("I walk to school.", {"type": "sentence", "value": "I walked to school."}, False),
    ],
)
def test_a_checker_reads_the_answer_the_question_asked_for(answer, check, correct):
    assert check_answer(answer, check) is correct


def test_a_bad_check_is_named_with_its_row_and_field(tmp_path):
    from pipeline.validation import validate_file

    path = tmp_path / "tasks.jsonl"
    rows = [
        {"instruction": "What is 2 plus 2?", "check": {"type": "number", "value": 4}},
        {"instruction": "What is 3 plus 3?", "check": {"type": "numbr", "value": 6}},
        {"instruction": "What is 4 plus 4?", "check": {"type": "number"}},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = validate_file("instructions", path)
    issues = [(i.row, i.field, i.code) for i in report.issues]
    assert (2, "check", "bad_check") in issues and (3, "check", "bad_check") in issues
    assert report.rows_valid == 1


@pytest.mark.slow
@pytest.mark.parametrize("source", ["gold", "verified"])
def test_the_dag_on_verifiable_tasks_scores_correctness_against_gold_answers(
    source, tiny_model_dir, tiny_ci_spec, tmp_path
):
    """On the tiny model: gold SFT data is the data's answers; verified keeps only base samples its checker passes
    (the tiny model passes few: it says so, with the count); either way the held-out references are gold and every
    method is scored by the checkers."""
    from pipeline.core.errors import DataError
    from pipeline.dag import run_dag

    spec = tiny_ci_spec.model_copy(deep=True)
    spec.name = f"verifiable-{source}"
    spec.data.instructions = "verifiable"
    spec.data.max_instructions = 0
    spec.generation.sft_source = source
    spec.generation.max_rejected_fraction = 1.0
    spec.eval.max_prompts = 40
    try:
        result = run_dag(spec, tmp_path)
    except DataError as exc:  # the tiny model may get nothing right: then it must say so, by reason
        assert source == "verified" and "incorrect" in str(exc)
        return
    sft_dir = Path(result.results["generate_sft"].out_dir)
    sft = [json.loads(line) for line in (sft_dir / "sft.jsonl").read_text().splitlines()]
    heldout = [r for r in sft if r["meta"]["split"] == "heldout"]
    assert heldout and all(r["meta"]["source"] == "gold" for r in heldout)
    assert all(r["completion"].strip() == r["meta"]["reference"] for r in heldout)
    trained = [r for r in sft if r["meta"]["split"] == "train"]
    assert all(check_answer(r["completion"], r["meta"]["check"]) for r in trained)  # gold or verified: all right
    report = json.loads((Path(result.report_dir) / "report.json").read_text())
    for method, row in report["table"].items():
        assert row["correct"]["n_prompts"] == 40, method
        assert 0 <= row["correct"]["mean"] <= 1
    assert any(d["metric"] == "correct" for d in report["differences"])
