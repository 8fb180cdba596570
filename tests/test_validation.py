import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.core.configs import ValidationConfig
from pipeline.core.errors import DataError
from pipeline.validation import (
    ISSUE_CODES,
    ValidationReport,
    load_and_validate_negatives,
    load_and_validate_pairs,
    load_and_validate_sft,
    validate_negative_examples,
)

BAD = Path(__file__).parent / "data" / "bad"

# file, kind, expected code, row (None = the whole file), field, severity, does the file fail?
EXPECTED = [
    ("sft_malformed_json.jsonl", "sft", "malformed_json", 3, None, "error", True),
    ("sft_not_utf8.jsonl", "sft", "not_utf8", 2, None, "error", True),
    ("sft_missing_completion.jsonl", "sft", "missing_field", 3, "completion", "error", True),
    ("sft_wrong_type.jsonl", "sft", "wrong_type", 2, "completion", "error", True),
    ("sft_whitespace_completion.jsonl", "sft", "empty_text", 4, "completion", "error", True),
    ("sft_null_prompt.jsonl", "sft", "null_value", 1, "prompt", "error", True),
    ("sft_nan_value.jsonl", "sft", "nan_value", 2, "completion", "error", True),
    ("sft_not_object.jsonl", "sft", "not_object", 2, None, "error", True),
    ("sft_too_long.jsonl", "sft", "too_long", 3, "completion", "error", True),
    ("sft_empty.jsonl", "sft", "empty_file", None, None, "error", True),
    ("sft_duplicates.jsonl", "sft", "duplicate_exact", 3, None, "warning", False),
    ("sft_duplicates.jsonl", "sft", "duplicate_normalized", 4, None, "warning", False),
    ("negatives_unknown_type.jsonl", "negatives", "unknown_negative_type", 2, "negative_type", "error", True),
    ("negatives_missing_type.jsonl", "negatives", "missing_field", 2, "negative_type", "error", True),
    ("negatives_chosen_equals_rejected.jsonl", "negatives", "chosen_equals_rejected", 2, "rejected", "error", True),
    ("pairs_chosen_equals_rejected.jsonl", "pairs", "chosen_equals_rejected", 2, "rejected", "error", True),
    ("pairs_missing_rejected.jsonl", "pairs", "missing_field", 2, "rejected", "error", True),
    ("pairs_prefix.jsonl", "pairs", "chosen_prefix_of_rejected", 1, "rejected", "warning", False),
    ("pairs_prefix.jsonl", "pairs", "rejected_prefix_of_chosen", 2, "rejected", "warning", False),
    ("pairs_empty_chosen.jsonl", "pairs", "empty_text", 2, "chosen", "error", True),
    ("pairs_wrong_type_negative.jsonl", "pairs", "unknown_negative_type", 1, "negative_type", "error", True),
    ("missing_file.jsonl", "sft", "file_not_found", None, None, "error", True),
    ("instructions_empty.jsonl", "instructions", "empty_file", None, None, "error", True),
    ("instructions_huge_line.jsonl", "instructions", "too_long", 1, "instruction", "error", True),
    ("instructions_separator_inside.jsonl", "instructions", "separator_in_text", 2, "instruction", "error", True),
    ("instructions_wrong_field.jsonl", "instructions", "missing_field", 1, "instruction", "error", True),
    ("instructions_duplicate_key.jsonl", "instructions", "duplicate_key", 2, "instruction", "error", True),
    ("instructions_lone_surrogate.jsonl", "instructions", "not_text", 2, "instruction", "error", True),
    ("instructions_invisible_only.jsonl", "instructions", "empty_text", 2, "instruction", "error", True),
    ("sft_huge_integer.jsonl", "sft", "malformed_json", 2, None, "error", True),
    # TRL's conversational formats: the turn is named
    ("instructions_messages_bad_role.jsonl", "instructions", "bad_role", 2, "messages[1].role", "error", True),
    ("instructions_messages_empty_turn.jsonl", "instructions", "empty_turn", 1, "messages[0].content", "error", True),
    ("sft_messages_wrong_order.jsonl", "sft", "turn_order", 2, "messages[0].role", "error", True),
    ("pairs_conversational_wrong_last_turn.jsonl", "pairs", "wrong_last_turn", 2, "chosen[1].role", "error", True),
    (
        "pairs_conversational_chosen_equals_rejected.jsonl",
        "pairs",
        "chosen_equals_rejected",
        2,
        "rejected",
        "error",
        True,
    ),
]


def validate(kind, path, **kw):
    if kind == "instructions":
        from pipeline.validation import validate_file

        return validate_file(kind, path)
    if kind == "sft":
        return load_and_validate_sft(path, strict=False, **kw)[1]
    if kind == "negatives":
        return load_and_validate_negatives(path, strict=False, **kw)[1]
    return load_and_validate_pairs(path, strict=False, **kw)[1]


def test_at_least_fifteen_distinct_bad_files():
    files = {f for f, *_ in EXPECTED if (BAD / f).exists()}
    assert len(files) >= 15
    assert files == {p.name for p in BAD.glob("*.jsonl")} - {"pairs_leak_train.jsonl", "pairs_leak_heldout.jsonl"}


@pytest.mark.parametrize(
    "name, kind, code, row, field, severity, fails", EXPECTED, ids=[e[0] + ":" + e[2] for e in EXPECTED]
)
def test_bad_file_reports_code_row_and_field(name, kind, code, row, field, severity, fails):
    report = validate(kind, BAD / name)
    matches = [i for i in report.issues if i.code == code]
    assert matches, report.summary()
    assert (matches[0].row, matches[0].field, matches[0].severity) == (row, field, severity)
    assert code in ISSUE_CODES
    assert report.passed is (not fails)
    if fails:
        with pytest.raises(DataError) as err:
            report.raise_if_failed()
        assert name in str(err.value)
        if row is not None:
            assert f"{name}:{row}" in str(err.value)
        assert err.value.report is report


def test_good_rows_survive_next_to_a_bad_one_and_error_rate_threshold():
    records, report = load_and_validate_sft(BAD / "sft_malformed_json.jsonl", strict=False)
    assert report.rows_read == 4 and report.rows_valid == 3 and len(records) == 3
    assert not report.passed and "error_rate_exceeded" in report.codes()
    lenient = ValidationConfig(max_error_rate=0.3)
    records, report = load_and_validate_sft(BAD / "sft_malformed_json.jsonl", lenient)  # strict: does not raise
    assert report.passed and len(records) == 3


def test_prompt_leak_names_the_heldout_file_and_row():
    splits, report = load_and_validate_pairs(
        BAD / "pairs_leak_train.jsonl", BAD / "pairs_leak_heldout.jsonl", strict=False
    )
    leak = [i for i in report.issues if i.code == "prompt_leak"]
    assert [(i.row, i.field, i.file) for i in leak] == [(2, "prompt", str(BAD / "pairs_leak_heldout.jsonl"))]
    assert not report.passed
    assert report.stats["leaked_prompts"] == 1 and len(splits["heldout"]) == 1


def test_type_mix_warning_and_stats():
    rows = [
        (i + 1, {"prompt": f"p{i}", "chosen": f"good answer {i}", "rejected": f"bad {i}", "negative_type": "refusal"})
        for i in range(9)
    ] + [(10, {"prompt": "p9", "chosen": "fine", "rejected": "off", "negative_type": "truncated"})]
    valid, report = validate_negative_examples(rows, weights={"refusal": 0.5, "truncated": 0.5})
    assert report.passed and len(valid) == 10
    assert report.stats["negative_types"] == {"refusal": 9, "truncated": 1}
    assert {i.code for i in report.warnings} == {"type_mix_off"}
    assert report.stats["rejected_chars"]["count"] == 10


def test_token_length_limit_uses_the_tokenizer():
    from tests.tokenizer_families import tiny

    rows = [(1, {"prompt": "Instruction: hi\nResponse:", "completion": " hello " * 50})]
    from pipeline.validation import validate_sft_data

    _, report = validate_sft_data(rows, ValidationConfig(max_tokens=20), tokenizer=tiny())
    assert [i.code for i in report.errors][0] == "too_many_tokens"


def test_report_round_trips_through_json():
    report = validate("sft", BAD / "sft_wrong_type.jsonl")
    again = ValidationReport.from_dict(json.loads(report.to_json()))
    assert again.to_dict() == report.to_dict()


def test_datasets_directory_is_read_with_row_numbers(tmp_path):
    from datasets import Dataset

    Dataset.from_list(
        [
            {"prompt": "Instruction: a\nResponse:", "completion": " b"},
            {"prompt": "Instruction: c\nResponse:", "completion": ""},
        ]
    ).save_to_disk(str(tmp_path / "ds"))
    from pipeline.sources import read_records

    _, report = load_and_validate_sft(tmp_path / "ds", strict=False, read=read_records)
    assert [(i.row, i.field, i.code) for i in report.errors][0] == (2, "completion", "empty_text")


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "pipeline", "validate", *args], capture_output=True, text=True)


def test_cli_prints_summary_and_exit_codes(tmp_path):
    bad = run_cli("--kind", "sft", str(BAD / "sft_wrong_type.jsonl"))
    assert bad.returncode == 1
    assert "FAILED" in bad.stdout and "sft_wrong_type.jsonl:2 field=completion wrong_type" in bad.stdout
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"prompt": "Instruction: a\nResponse:", "completion": " b"}) + "\n")
    ok = run_cli("--kind", "sft", str(good), "--json")
    assert ok.returncode == 0 and json.loads(ok.stdout)["passed"] is True
    leak = run_cli(
        "--kind", "pairs", str(BAD / "pairs_leak_train.jsonl"), "--heldout", str(BAD / "pairs_leak_heldout.jsonl")
    )
    assert leak.returncode == 1 and "prompt_leak" in leak.stdout
