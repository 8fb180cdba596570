"""Validation at every hand-off: SFT records, typed negatives, preference pairs.

`validate_*` check records already in memory; `load_and_validate_*` read a JSONL file line by line (keeping
line numbers, catching malformed JSON and non-UTF-8 lines) or a `datasets` directory. Each returns a
`ValidationReport`: rows read and valid, issues (row, field, code, message, severity) and stats. Errors make
the report fail once they exceed `ValidationConfig.max_error_rate`; warnings are only reported.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipeline.core.checkers import check_problem
from pipeline.core.configs import ValidationConfig
from pipeline.core.conversations import ASSISTANT, USER, as_prompt, is_conversation, turn_problems
from pipeline.core.documents import (
    DocumentError,
    DuplicateKeyError,
    bounded_int,
    is_blank,
    no_duplicate_keys,
    require_regular_file,
)
from pipeline.core.errors import ConfigError, DataError
from pipeline.core.negative_types import names as negative_type_names
from pipeline.core.text import normalize_text, template_parts

ERROR, WARNING = "error", "warning"
FILE_KINDS = ("instructions", "sft", "negatives", "pairs")  # what `alignlab validate --kind` checks

# Every code a report can carry, with what to do about it.
ISSUE_CODES: dict[str, str] = {
    "file_not_found": "the file does not exist; check the path",
    "empty_file": "the file has no records",
    "not_utf8": "the line is not UTF-8 text; re-save the file as UTF-8",
    "malformed_json": "the line is not valid JSON; one JSON object per line",
    "line_too_long": "the line is longer than 16 MiB: skipped unread (one JSON object per line, text fields bounded)",
    "duplicate_key": "a key is given twice in one row (JSON would keep the last silently); give each key once",
    "bad_check": "the row's 'check' is not a known checker with its fields (pipeline.core.checkers)",
    "not_text": "a text field holds a lone surrogate (an escape such as \\ud800 that is not text)",
    "not_object": "the line is JSON but not an object; each line must be {...}",
    "missing_field": "a required field is missing",
    "null_value": "a required field is null",
    "nan_value": "a field is NaN",
    "wrong_type": "a field must be a string",
    "empty_text": "a text field is empty, or only whitespace and invisible characters",
    "too_long": "a text field exceeds ValidationConfig.max_text_chars",
    "too_many_tokens": "prompt + response exceed ValidationConfig.max_tokens",
    "separator_in_text": "the instruction contains the prompt template's response marker; the model would see "
    "the answer's start inside the question: remove it or change FormatConfig.template",
    "duplicate_exact": "the same record appears more than once",
    "duplicate_normalized": "the record repeats another one up to case and whitespace",
    "chosen_equals_rejected": "chosen and rejected are the same text (after case/whitespace normalization)",
    "chosen_prefix_of_rejected": "chosen is a prefix of rejected",
    "rejected_prefix_of_chosen": "rejected is a prefix of chosen",
    "unknown_negative_type": "negative_type is not a registered type",
    "type_mix_off": "the share of a negative type is far from its configured weight",
    "prompt_leak": "a held-out prompt also appears in the training split",
    "error_rate_exceeded": "too many rows have errors",
    "generation_rejected_empty": "every generated response was empty; the instruction was dropped",
    "generation_rejected_too_short": "every generated response was too short; the instruction was dropped",
    "generation_rejected_too_long": "every generated response was too long; the instruction was dropped",
    "generation_rejected_repetitive": "every generated response was degenerate; the instruction was dropped",
    "generation_rejected_incorrect": "no generated response passed the row's checker (sft_source: verified); the "
    "instruction was dropped",
    "generation_rejected_no_gold": "the row has no gold reference for sft_source gold; the instruction was dropped",
    "not_a_list": "a conversational field must be a list of {role, content} turns (TRL's conversational format)",
    "not_a_turn": "a turn must be an object with exactly 'role' and 'content'",
    "bad_role": "a turn's role must be system, user or assistant",
    "empty_turn": "a conversation or one of its turns is empty",
    "turn_order": "turns go: an optional system turn first, then user and assistant alternating, starting with user",
    "wrong_last_turn": "a prompt must end with the user's turn; a completion, chosen or rejected with the assistant's",
    "heldout_same_as_training": "the base model wrote a held-out prompt's answer (or its instruction matches) as for "
    "a training prompt; the held-out prompt was dropped so no held-out text is a training target",
}


@dataclass
class Issue:
    row: int | None  # 1-based line number in a JSONL file, 1-based row in a dataset; None for the whole file
    field: str | None
    code: str
    message: str
    severity: str = ERROR
    file: str | None = None


@dataclass
class ValidationReport:
    kind: str  # "sft", "negatives" or "pairs"
    source: str
    max_error_rate: float = 0.0
    rows_read: int = 0
    rows_valid: int = 0
    issues: list[Issue] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)

    def add(self, row: int | None, field_name: str | None, code: str, message: str, severity: str = ERROR, **kw: Any):
        self.issues.append(Issue(row, field_name, code, message, severity, kw.get("file")))

    @property
    def errors(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == ERROR]

    @property
    def warnings(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == WARNING]

    @property
    def error_rows(self) -> int:
        return len({(i.file, i.row) for i in self.errors if i.row is not None})

    @property
    def error_rate(self) -> float:
        return self.error_rows / self.rows_read if self.rows_read else 1.0

    @property
    def passed(self) -> bool:
        if any(i.row is None for i in self.errors) or self.rows_valid == 0:
            return False
        return self.error_rate <= self.max_error_rate

    def codes(self) -> Counter:
        return Counter(i.code for i in self.issues)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(passed=self.passed, error_rate=round(self.error_rate, 6), n_errors=len(self.errors))
        data["n_warnings"] = len(self.warnings)
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ValidationReport:
        fields = {k: data[k] for k in ("kind", "source", "max_error_rate", "rows_read", "rows_valid", "stats")}
        return cls(**fields, issues=[Issue(**i) for i in data.get("issues", [])])

    def summary(self, max_issues: int = 20) -> str:
        """A readable summary: verdict, counts, the first issues with file, row and field."""
        verdict = "PASSED" if self.passed else "FAILED"
        lines = [
            f"{self.kind} validation of {self.source}: {verdict}",
            f"  rows read {self.rows_read}, valid {self.rows_valid}, errors {len(self.errors)} "
            f"({self.error_rows} rows, rate {self.error_rate:.1%}, allowed {self.max_error_rate:.1%}), "
            f"warnings {len(self.warnings)}",
        ]
        for code, count in sorted(self.codes().items()):
            lines.append(f"  {code}: {count}")
        for issue in (self.errors + self.warnings)[:max_issues]:
            where = f"{issue.file or self.source}:{issue.row}" if issue.row is not None else (issue.file or self.source)
            lines.append(f"  [{issue.severity}] {where} field={issue.field or '-'} {issue.code}: {issue.message}")
        hidden = len(self.issues) - max_issues
        if hidden > 0:
            lines.append(f"  ... {hidden} more (use --json for all)")
        return "\n".join(lines)

    def raise_if_failed(self) -> None:
        """Raise `DataError` (carrying this report) naming the first errors' file, row and field."""
        if self.passed:
            return
        first = self.errors[:5]
        detail = "; ".join(
            f"{i.file or self.source}{':' + str(i.row) if i.row is not None else ''} field {i.field or '-'}: "
            f"{i.code} ({i.message})"
            for i in first
        )
        if not first:
            detail = "no valid rows"
        advice = (
            f"Fix these rows, or check the file first with `python -m pipeline validate --kind {self.kind} FILE`."
            if self.kind in FILE_KINDS
            else "Fix these rows."
        )
        raise DataError(
            f"{self.kind} data from {self.source} failed validation "
            f"({len(self.errors)} errors in {self.error_rows} of {self.rows_read} rows): {detail}. {advice}",
            report=self,
        )


# ----------------------------------------------------------------------------------------------- reading


Row = tuple[int, Any]  # (row number, decoded object, or an Issue for an unreadable line)


@dataclass
class Noted:
    """A readable row that comes with a warning about how it was read (e.g. a UTF-8 byte-order mark)."""

    record: Any
    warning: Issue


def take_row(report: ValidationReport, record: Any, file: str | None = None) -> Any:
    """The record of a row with its reading issues put on `report`; None when the row could not be read."""
    if isinstance(record, Issue | Noted):
        issue = record if isinstance(record, Issue) else record.warning
        issue.file = file or issue.file
        report.issues.append(issue)
        return None if isinstance(record, Issue) else record.record
    return record


BOM = b"\xef\xbb\xbf"


Reader = Callable[[Path], Iterator["Row"]]  # a file's rows: read_rows here, pipeline.sources.read_records for more


MAX_LINE_BYTES = 16 * 1024 * 1024  # one JSONL row: far above any text field's bound (max_text_chars)


def _bounded_lines(handle: Any) -> Iterator[bytes | None]:
    """The file's lines, each read with a bound: a longer one is skipped in bounded chunks and yields None, so one
    gigantic line never sits in memory whole."""
    while True:
        raw = handle.readline(MAX_LINE_BYTES + 1)
        if not raw:
            return
        if len(raw) > MAX_LINE_BYTES:
            while not raw.endswith(b"\n"):
                raw = handle.readline(1 << 20)
                if not raw:
                    break
            yield None
            continue
        yield raw


def read_rows(path: str | Path) -> Iterator[Row]:
    """Yield (line number, object) for each non-blank line; unreadable lines yield (line number, Issue). A UTF-8
    byte-order mark (Windows tools write one) is read past, with a warning."""
    path = Path(path)
    try:
        require_regular_file(path, "JSONL file")  # a FIFO or a device would block here, a directory means nothing
    except DocumentError as exc:
        raise DataError(str(exc)) from None
    with path.open("rb") as handle:
        for number, raw in enumerate(_bounded_lines(handle), start=1):
            if raw is None:
                message = f"the line is longer than {MAX_LINE_BYTES:,} bytes; it was skipped unread"
                yield number, Issue(number, None, "line_too_long", message)
                continue
            bom = number == 1 and raw.startswith(BOM)
            raw = raw[len(BOM) :] if bom else raw
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield number, Issue(number, None, "not_utf8", f"byte {exc.start} is not valid UTF-8")
                continue
            if text.strip() == "":
                continue
            try:
                record = json.loads(text, object_pairs_hook=no_duplicate_keys, parse_int=bounded_int)
            except json.JSONDecodeError as exc:
                yield number, Issue(number, None, "malformed_json", f"{exc.msg} at column {exc.colno}")
                continue
            except DuplicateKeyError as exc:
                yield number, Issue(number, exc.key, "duplicate_key", f"'{exc.key}' is given twice in this row")
                continue
            except DocumentError as exc:  # an integer of thousands of digits
                yield number, Issue(number, None, "malformed_json", str(exc))
                continue
            except RecursionError:
                yield number, Issue(number, None, "malformed_json", "nested too deeply")
                continue
            if bom:
                note = "starts with a UTF-8 byte-order mark; read past it (save as UTF-8 without BOM to silence this)"
                yield number, Noted(record, Issue(number, None, "byte_order_mark", note, WARNING, str(path)))
            else:
                yield number, record


# ----------------------------------------------------------------------------------------------- checks


def _lone_surrogate(text: str) -> int | None:
    """The index of the first lone surrogate in `text` (JSON's `\\ud800` escape makes one), or None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.start
    return None


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _check_text_fields(
    report: ValidationReport, row: int, record: Any, fields: Iterable[str], config: ValidationConfig, file: str | None
) -> bool:
    """Required string fields: present, not null/NaN, strings, not blank, not too long. True when all ok."""
    ok = True
    if not isinstance(record, dict):
        report.add(row, None, "not_object", f"expected a JSON object, got {type(record).__name__}", file=file)
        return False
    for name in fields:
        if name not in record:
            report.add(row, name, "missing_field", f"'{name}' is required", file=file)
            ok = False
            continue
        value = record[name]
        if value is None:
            report.add(row, name, "null_value", f"'{name}' is null", file=file)
        elif _is_nan(value):
            report.add(row, name, "nan_value", f"'{name}' is NaN", file=file)
        elif not isinstance(value, str):
            report.add(row, name, "wrong_type", f"'{name}' must be a string, got {type(value).__name__}", file=file)
        elif is_blank(value):
            report.add(
                row, name, "empty_text", f"'{name}' is empty, or only spaces and invisible characters", file=file
            )
        elif (surrogate := _lone_surrogate(value)) is not None:
            report.add(
                row,
                name,
                "not_text",
                f"'{name}' holds a lone surrogate (U+{ord(value[surrogate]):04X}) at character {surrogate}, "
                "which is not text; fix the escape that produced it",
                file=file,
            )
        elif len(value) > config.max_text_chars:
            report.add(row, name, "too_long", f"'{name}' has {len(value)} chars > {config.max_text_chars}", file=file)
        else:
            continue
        ok = False
    for name, value in record.items():
        if name not in fields and _is_nan(value):
            report.add(row, name, "nan_value", f"'{name}' is NaN", file=file)
            ok = False
    return ok


# a conversational field -> the role its conversation must end with (TRL's formats: a prompt ends with the user's turn,
# a completion / chosen / rejected is the assistant's)
LAST_TURN = {"prompt": USER, "completion": ASSISTANT, "chosen": ASSISTANT, "rejected": ASSISTANT}


def plain_view(
    report: ValidationReport, row: int, record: Any, config: ValidationConfig, file: str | None
) -> dict[str, Any] | None:
    """A row in TRL's conversational formats (`messages`; message-list `prompt`, `completion`, `chosen`,
    `rejected`) as the plain-text row the checks read, its turns checked first (roles, order, empty turns: issues name
    the turn, e.g. `messages[2].role`); a plain row as it is; None (issues reported) when a conversation is broken.

    A prompt becomes its turns as text, a response its assistant content; `messages` splits into the prompt before
    its last assistant turn and that turn as the completion."""
    if not isinstance(record, dict):
        return record
    conversational = [name for name in ("messages", *LAST_TURN) if is_conversation(record.get(name))]
    if not conversational:
        return record
    problems = []
    for name in conversational:
        last = ASSISTANT if name == "messages" else LAST_TURN[name]
        first = ASSISTANT if last == ASSISTANT and name != "messages" else USER  # an answer continues its prompt
        problems += turn_problems(record[name], name, last, config.max_text_chars, first)
    for problem in problems:
        report.add(row, problem.field, problem.code, problem.message, file=file)
    if problems:
        return None
    view = dict(record)
    if "messages" in conversational:
        *before, answer = record["messages"]
        view.pop("messages")
        view["prompt"], view["completion"] = turns_text(before), answer["content"]
    for name in conversational:
        if name != "messages":
            view[name] = turns_text(record[name]) if name == "prompt" else "\n".join(t["content"] for t in record[name])
    return view


def turns_text(turns: list[dict[str, str]]) -> str:
    return "\n".join(f"{t['role']}: {t['content']}" for t in turns)


def _check_tokens(report: ValidationReport, row: int, texts: list[str], tokenizer: Any, config: ValidationConfig):
    if tokenizer is None:
        return True
    count = sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)
    if count > config.max_tokens:
        report.add(row, None, "too_many_tokens", f"{count} tokens > max_tokens {config.max_tokens}")
        return False
    return True


def special_token_texts(tokenizer: Any) -> list[str]:
    """The literal text of the tokenizer's special tokens (`</s>`, `<|im_end|>`, ...)."""
    return sorted({t for t in getattr(tokenizer, "all_special_tokens", []) if isinstance(t, str) and t.strip()})


def _check_special_tokens(
    report: ValidationReport, row: int, record: dict[str, Any], fields: tuple[str, ...], tokenizer: Any
) -> bool:
    """An answer holding a special token's literal text would be tokenized into that special token mid-answer
    (an EOS inside the completion, say), invisible to the mask check: refuse it, naming row and field."""
    if tokenizer is None:
        return True
    for field_name in fields:
        found = [t for t in special_token_texts(tokenizer) if t in record[field_name]]
        if found:
            report.add(
                row,
                field_name,
                "special_token_in_text",
                f"contains the literal special token {found[0]!r}, which the tokenizer would turn into that special "
                "token mid-answer; remove it from the data",
            )
            return False
    return True


def _length_stats(lengths: list[int]) -> dict[str, Any]:
    if not lengths:
        return {"count": 0}
    ordered = sorted(lengths)
    top = ordered[-1]
    width = max(1, math.ceil((top + 1) / 20))
    histogram = Counter(length // width * width for length in lengths)
    return {
        "count": len(lengths),
        "min": ordered[0],
        "p50": ordered[len(ordered) // 2],
        "p95": ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))],
        "max": top,
        "mean": round(statistics.fmean(lengths), 2),
        "histogram": {str(k): histogram[k] for k in sorted(histogram)},
    }


class _Duplicates:
    """Flags exact and case/whitespace-normalized repeats of a key (a warning: harmless but wasteful)."""

    def __init__(self, report: ValidationReport):
        self.report = report
        self.exact: dict[tuple, int] = {}
        self.normalized: dict[tuple, int] = {}
        self.count = 0

    def check(self, row: int, key: tuple[str, ...], file: str | None) -> None:
        norm = tuple(normalize_text(k) for k in key)
        if key in self.exact:
            self.report.add(row, None, "duplicate_exact", f"repeats row {self.exact[key]}", WARNING, file=file)
            self.count += 1
        elif norm in self.normalized:
            self.report.add(
                row,
                None,
                "duplicate_normalized",
                f"repeats row {self.normalized[norm]} up to case/whitespace",
                WARNING,
                file=file,
            )
            self.count += 1
        else:
            self.exact[key] = row
            self.normalized[norm] = row


def _finish(report: ValidationReport, valid: list[dict[str, Any]]) -> None:
    report.rows_valid = len(valid)
    if report.rows_read == 0 and not report.errors:
        report.add(None, None, "empty_file", "no records found")
    if report.rows_read and not report.passed and report.error_rate > report.max_error_rate:
        report.add(
            None,
            None,
            "error_rate_exceeded",
            f"{report.error_rows} of {report.rows_read} rows have errors ({report.error_rate:.1%} > "
            f"{report.max_error_rate:.1%} allowed)",
        )


def validate_sft_data(
    rows: Iterable[Row], config: ValidationConfig | None = None, tokenizer: Any = None, source: str = "<memory>"
) -> tuple[list[dict[str, Any]], ValidationReport]:
    """Check SFT records `{prompt, completion}`; returns the valid records and the report."""
    config = config or ValidationConfig()
    report = ValidationReport("sft", source, config.max_error_rate)
    dups = _Duplicates(report)
    valid: list[dict[str, Any]] = []
    for row, record in rows:
        report.rows_read += 1
        record = plain_view(report, row, take_row(report, record), config, None)
        if record is None:
            continue
        if not _check_text_fields(report, row, record, ("prompt", "completion"), config, None):
            continue
        if not _check_special_tokens(report, row, record, ("completion",), tokenizer):
            continue
        if not _check_tokens(report, row, [record["prompt"], record["completion"]], tokenizer, config):
            continue
        dups.check(row, (record["prompt"], record["completion"]), None)
        valid.append(record)
    report.stats = {
        "prompt_chars": _length_stats([len(r["prompt"]) for r in valid]),
        "completion_chars": _length_stats([len(r["completion"]) for r in valid]),
        "duplicates": dups.count,
        "unique_prompts": len({r["prompt"] for r in valid}),
    }
    _finish(report, valid)
    return valid, report


def _check_pair(
    report: ValidationReport,
    row: int,
    record: dict[str, Any],
    known_types: Iterable[str] | None,
    require_type: bool,
    file: str | None,
) -> bool:
    ok = True
    if known_types is not None and (require_type or "negative_type" in record):
        negative_type = record.get("negative_type")
        if negative_type is None and require_type:
            report.add(row, "negative_type", "missing_field", "'negative_type' is required", file=file)
            ok = False
        elif negative_type not in known_types:
            report.add(
                row,
                "negative_type",
                "unknown_negative_type",
                f"{negative_type!r} is not one of {', '.join(known_types)}",
                file=file,
            )
            ok = False
    chosen, rejected = normalize_text(record["chosen"]), normalize_text(record["rejected"])
    if chosen == rejected:
        report.add(row, "rejected", "chosen_equals_rejected", "chosen and rejected are the same text", file=file)
        ok = False
    elif rejected.startswith(chosen):
        report.add(row, "rejected", "chosen_prefix_of_rejected", "rejected only extends chosen", WARNING, file=file)
    elif chosen.startswith(rejected):
        report.add(row, "rejected", "rejected_prefix_of_chosen", "rejected is a cut of chosen", WARNING, file=file)
    return ok


def _type_mix(report: ValidationReport, valid: list[dict[str, Any]], weights: dict[str, float] | None, tol: float):
    counts = Counter(r.get("negative_type") for r in valid if r.get("negative_type") is not None)
    report.stats["negative_types"] = dict(sorted(counts.items()))
    if not weights or not counts:
        return
    total_weight = sum(weights.values())
    total = sum(counts.values())
    for negative_type, weight in weights.items():
        want = weight / total_weight if total_weight else 0.0
        have = counts.get(negative_type, 0) / total
        if abs(have - want) > tol:
            report.add(
                None,
                "negative_type",
                "type_mix_off",
                f"{negative_type!r} is {have:.0%} of rows, configured {want:.0%} (tolerance {tol:.0%})",
                WARNING,
            )


def validate_negative_examples(
    rows: Iterable[Row],
    config: ValidationConfig | None = None,
    known_types: Iterable[str] | None = None,
    weights: dict[str, float] | None = None,
    tokenizer: Any = None,
    source: str = "<memory>",
) -> tuple[list[dict[str, Any]], ValidationReport]:
    """Check typed negatives `{prompt, chosen, rejected, negative_type}` against the type registry."""
    config = config or ValidationConfig()
    known = tuple(negative_type_names() if known_types is None else known_types)
    report = ValidationReport("negatives", source, config.max_error_rate)
    dups = _Duplicates(report)
    valid: list[dict[str, Any]] = []
    for row, record in rows:
        report.rows_read += 1
        record = take_row(report, record)
        if record is None:
            continue
        if not _check_text_fields(report, row, record, ("prompt", "chosen", "rejected"), config, None):
            continue
        if not _check_pair(report, row, record, known, True, None):
            continue
        if not _check_special_tokens(report, row, record, ("chosen", "rejected"), tokenizer):
            continue
        if not _check_tokens(
            report, row, [record["prompt"], max(record["chosen"], record["rejected"], key=len)], tokenizer, config
        ):
            continue
        dups.check(row, (record["prompt"], record["chosen"], record["rejected"]), None)
        valid.append(record)
    _type_mix(report, valid, weights, config.type_mix_tolerance)
    report.stats.update(
        rejected_chars=_length_stats([len(r["rejected"]) for r in valid]),
        chosen_chars=_length_stats([len(r["chosen"]) for r in valid]),
        duplicates=dups.count,
    )
    _finish(report, valid)
    return valid, report


def _drop_leaked_prompts(
    report: ValidationReport, splits: dict[str, list[dict[str, Any]]], train_prompts: set[str], file: str | None
) -> set[int]:
    """Report and drop each held-out pair whose prompt is also a training prompt; returns their rows."""
    leaked_rows = set()
    for record in splits["heldout"]:
        if normalize_text(record["prompt"]) in train_prompts:
            message = "this held-out prompt is also in the training split"
            report.add(record["_row"], "prompt", "prompt_leak", message, file=file)
            leaked_rows.add(record["_row"])
    splits["heldout"] = [r for r in splits["heldout"] if r["_row"] not in leaked_rows]
    for records in splits.values():
        for r in records:
            r.pop("_row")
    return leaked_rows


def validate_preference_pairs(
    train_rows: Iterable[Row],
    heldout_rows: Iterable[Row] | None = None,
    config: ValidationConfig | None = None,
    known_types: Iterable[str] | None = None,
    weights: dict[str, float] | None = None,
    tokenizer: Any = None,
    source: str = "<memory>",
    heldout_source: str | None = None,
) -> tuple[dict[str, list[dict[str, Any]]], ValidationReport]:
    """Check DPO pairs `{prompt, chosen, rejected[, negative_type]}` and the train / held-out split (no leakage)."""
    config = config or ValidationConfig()
    known = tuple(negative_type_names() if known_types is None else known_types)
    label = source if heldout_source is None else f"{source} + {heldout_source}"
    report = ValidationReport("pairs", label, config.max_error_rate)
    dups = _Duplicates(report)
    splits: dict[str, list[dict[str, Any]]] = {"train": [], "heldout": []}
    sides = [("train", train_rows, source)]
    if heldout_rows is not None:
        sides.append(("heldout", heldout_rows, heldout_source or source))
    for split, rows, file in sides:
        for row, record in rows:
            report.rows_read += 1
            record = plain_view(report, row, take_row(report, record, file), config, file)
            if record is None:
                continue
            if not _check_text_fields(report, row, record, ("prompt", "chosen", "rejected"), config, file):
                continue
            if not _check_pair(report, row, record, known, False, file):
                continue
            dups.check(row, (record["prompt"], record["chosen"], record["rejected"]), file)
            record = dict(record)
            record["_row"] = row
            splits[split].append(record)
    train_prompts = {normalize_text(r["prompt"]) for r in splits["train"]}
    leaked_rows = _drop_leaked_prompts(report, splits, train_prompts, heldout_source)
    everything = splits["train"] + splits["heldout"]
    _type_mix(report, everything, weights, config.type_mix_tolerance)
    report.stats.update(
        train_pairs=len(splits["train"]),
        heldout_pairs=len(splits["heldout"]),
        train_prompts=len(train_prompts),
        heldout_prompts=len({normalize_text(r["prompt"]) for r in splits["heldout"]}),
        leaked_prompts=len(leaked_rows),
        duplicates=dups.count,
        chosen_chars=_length_stats([len(r["chosen"]) for r in everything]),
        rejected_chars=_length_stats([len(r["rejected"]) for r in everything]),
    )
    _finish(report, everything)
    return splits, report


# ----------------------------------------------------------------------------------------------- from files


def _missing(kind: str, path: Path, config: ValidationConfig) -> ValidationReport | None:
    if path.exists():
        return None
    report = ValidationReport(kind, str(path), config.max_error_rate)
    report.add(None, None, "file_not_found", f"{path} does not exist", file=str(path))
    return report


def load_and_validate_sft(
    path: str | Path,
    config: ValidationConfig | None = None,
    tokenizer: Any = None,
    strict: bool = True,
    read: Reader = read_rows,
) -> tuple[list[dict[str, Any]], ValidationReport]:
    """Read and validate SFT records; with `strict`, raise `DataError` (carrying the report) when it fails."""
    config = config or ValidationConfig()
    path = Path(path)
    report = _missing("sft", path, config)
    records: list[dict[str, Any]] = []
    if report is None:
        records, report = validate_sft_data(read(path), config, tokenizer, source=str(path))
    if strict:
        report.raise_if_failed()
    return records, report


def load_and_validate_negatives(
    path: str | Path,
    config: ValidationConfig | None = None,
    known_types: Iterable[str] | None = None,
    weights: dict[str, float] | None = None,
    tokenizer: Any = None,
    strict: bool = True,
    read: Reader = read_rows,
) -> tuple[list[dict[str, Any]], ValidationReport]:
    config = config or ValidationConfig()
    path = Path(path)
    report = _missing("negatives", path, config)
    records: list[dict[str, Any]] = []
    if report is None:
        records, report = validate_negative_examples(
            read(path), config, known_types, weights, tokenizer, source=str(path)
        )
    if strict:
        report.raise_if_failed()
    return records, report


def load_and_validate_pairs(
    train_path: str | Path,
    heldout_path: str | Path | None = None,
    config: ValidationConfig | None = None,
    known_types: Iterable[str] | None = None,
    weights: dict[str, float] | None = None,
    tokenizer: Any = None,
    strict: bool = True,
    read: Reader = read_rows,
) -> tuple[dict[str, list[dict[str, Any]]], ValidationReport]:
    config = config or ValidationConfig()
    paths = [Path(train_path)] + ([Path(heldout_path)] if heldout_path else [])
    for path in paths:
        report = _missing("pairs", path, config)
        if report is not None:
            if strict:
                report.raise_if_failed()
            return {"train": [], "heldout": []}, report
    splits, report = validate_preference_pairs(
        read(paths[0]),
        read(paths[1]) if heldout_path else None,
        config,
        known_types,
        weights,
        tokenizer,
        source=str(paths[0]),
        heldout_source=str(paths[1]) if heldout_path else None,
    )
    if strict:
        report.raise_if_failed()
    return splits, report


# ----------------------------------------------------------------------------------------------- instructions


def template_separators(fmt: Any) -> tuple[str, ...]:
    """The plain template's text around `{instruction}` ("Instruction:", "\nResponse:"): not allowed inside one."""
    return tuple(part.rstrip() for part in template_parts(fmt.template) if part.strip())


def _instruction_turns(report: ValidationReport, row: int, record: Any, config: ValidationConfig) -> Any:
    """A conversational instruction row read as its prompt turns; None for a plain row; False (reported) when broken."""
    if not isinstance(record, dict):
        return None
    _, conversation, problems = as_prompt(record, config.max_text_chars)
    for problem in problems:
        report.add(row, problem.field, problem.code, problem.message)
    return False if problems else conversation


def validate_instructions(
    rows: Iterable[Row],
    field_name: str = "instruction",
    config: ValidationConfig | None = None,
    source: str = "",
    separators: tuple[str, ...] | None = None,
) -> tuple[list[tuple[int, str]], ValidationReport]:
    """Check instruction records (one required text field, or a conversation in TRL's formats: `messages`, or a
    message-list `prompt`); returns (row, instruction) pairs and the report.
    `separators`: markers of the prompt template (default: the plain template's) that must not occur inside."""
    from pipeline.core.configs import FormatConfig

    config = config or ValidationConfig()
    separators = template_separators(FormatConfig()) if separators is None else separators
    report = ValidationReport("instructions", source or "<memory>", config.max_error_rate)
    dups = _Duplicates(report)
    valid: list[tuple[int, str]] = []
    for row, record in rows:
        report.rows_read += 1
        record = take_row(report, record)
        if record is None:
            continue
        if isinstance(record, dict) and "check" in record and (problem := check_problem(record["check"])):
            report.add(row, "check", "bad_check", problem)
            continue
        conversation = _instruction_turns(report, row, record, config)
        if conversation is False:
            continue
        if conversation is not None:  # checked turn by turn; the user's last question is the instruction
            record = {field_name: conversation.instruction}
        if not _check_text_fields(report, row, record, (field_name,), config, None):
            continue
        found = [marker for marker in separators if marker in record[field_name]]
        if found:
            report.add(row, field_name, "separator_in_text", f"contains the template marker {found[0]!r}")
            continue
        before = dups.count
        dups.check(row, (record[field_name],), None)
        if dups.count == before:  # a repeated instruction is reported and used once
            valid.append((row, record[field_name].strip()))
    report.stats = {"instruction_chars": _length_stats([len(text) for _, text in valid]), "duplicates": dups.count}
    report.rows_valid = len(valid)
    _finish(report, [{} for _ in valid])
    return valid, report


def check_instructions_before_queueing(source: str, instruction_field: str, config: ValidationConfig) -> None:
    """A local instructions file's rows checked before anything is queued (`alignlab submit`, Launch): a file whose
    rows fail validation is refused as a ConfigError of `DataConfig.instructions` naming file, row and field."""
    from pipeline.paths import is_local_path

    if not is_local_path(source) or not Path(source).expanduser().is_file():
        return  # the demo, a blob (checked when uploaded), a hub id or a datasets directory: read by the stage
    report = validate_file("instructions", Path(source).expanduser(), config, instruction_field=instruction_field)
    try:
        report.raise_if_failed()
    except DataError as exc:
        raise ConfigError(f"DataConfig.instructions: {exc}") from None


def validate_file(
    kind: str,
    path: str | Path,
    config: ValidationConfig | None = None,
    heldout: str | Path | None = None,
    instruction_field: str = "instruction",
    read: Reader = read_rows,
) -> ValidationReport:
    """One file's report, never raising for bad content: `alignlab validate` and the dashboard's file checks.
    `read` reads the rows (JSONL; `pipeline.sources.read_records` also reads a `datasets` directory)."""
    config = config or ValidationConfig()
    if kind == "instructions":
        path = Path(path)
        return (
            _missing(kind, path, config)
            or validate_instructions(read(path), instruction_field, config, source=str(path))[1]
        )
    if kind == "sft":
        return load_and_validate_sft(path, config, strict=False, read=read)[1]
    if kind == "negatives":
        return load_and_validate_negatives(path, config, strict=False, read=read)[1]
    if kind == "pairs":
        return load_and_validate_pairs(path, heldout, config, strict=False, read=read)[1]
    raise ValueError(f"kind {kind!r}: one of {', '.join(FILE_KINDS)}")


# ----------------------------------------------------------------------------------------------- decontamination

Text = tuple[str, str, str]  # (where: "file:row", field, text)
SHORT_TEXT_MIN_WORDS = 3


def _gram_words(text: str) -> list[str]:
    """The words n-grams are made of: case folded, punctuation aside ("16." and "16," are one word)."""
    return re.findall(r"\w+", text.casefold())


def check_decontamination(heldout: list[Text], training: list[Text], config: Any, source: str) -> ValidationReport:
    """Held-out texts (prompts, answers, negatives) against every training input of a stage: a held-out text is
    contaminated when it equals a training text (up to case and spacing; texts of at least SHORT_TEXT_MIN_WORDS
    words, so that two one-word answers such as "White." are not called a leak) or when at least
    `config.max_ngram_overlap` of its word n-grams occur in the training inputs, with n = min(`config.ngram`, its
    length): a held-out text shorter than an n-gram counts as contaminated when it occurs word for word inside a
    training input. Fails when more than
    `config.max_contaminated_fraction` of the held-out texts are contaminated; each one is named with the training
    input it overlaps."""
    report = ValidationReport("decontamination", source, config.max_contaminated_fraction)
    exact: dict[str, str] = {}
    trained = [(f"{where} ({field_name})", _gram_words(text)) for where, field_name, text in training]
    grams_of: dict[int, dict[tuple[str, ...], str]] = {}  # n -> every training n-gram, built for the n used

    def grams(n: int) -> dict[tuple[str, ...], str]:
        if n not in grams_of:
            grams_of[n] = {}
            for where, words in trained:
                for i in range(len(words) - n + 1):
                    grams_of[n].setdefault(tuple(words[i : i + n]), where)
        return grams_of[n]

    for where, field_name, text in training:
        exact.setdefault(normalize_text(text), f"{where} ({field_name})")
    contaminated = worst = 0
    for row, (where, field_name, text) in enumerate(heldout, start=1):
        report.rows_read += 1
        words = _gram_words(text)
        # n = min(ngram, length): a short held-out text (an answer of a few words) is contaminated when it occurs
        # word for word inside a training input; below SHORT_TEXT_MIN_WORDS only an exact match counts (two
        # one-word answers such as "White." are not a leak)
        n = min(config.ngram, len(words)) if len(words) >= SHORT_TEXT_MIN_WORDS else config.ngram
        own = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
        table = grams(n) if own else {}
        shared = [g for g in own if g in table]
        overlap = len(shared) / len(own) if own else 0.0
        worst = max(worst, overlap)
        same = exact.get(normalize_text(text)) if len(words) >= SHORT_TEXT_MIN_WORDS else None
        found = same or (table[shared[0]] if own and overlap >= config.max_ngram_overlap else None)
        if found:
            contaminated += 1
            how = "equals" if same else f"shares {overlap:.0%} of its {n}-grams with"
            report.add(
                row, field_name, "heldout_in_training", f"held-out {where} {how} training input {found}", file=source
            )
    report.rows_valid = report.rows_read - contaminated
    report.stats = {
        "heldout_texts": len(heldout),
        "training_texts": len(training),
        "contaminated": contaminated,
        "max_ngram_overlap": round(worst, 4),
        "ngram": config.ngram,
        "threshold": config.max_ngram_overlap,
    }
    if not heldout:
        report.add(None, None, "no_heldout_texts", "nothing held out to check: the split has no held-out prompts")
    return report
