"""Checkers: is a generated answer correct, judged against the data's gold answer, never a model's own sample.

A verifiable data row carries a `check`: `{"type": <checker>, ...its fields}`. One declaration per checker (its
fields and its rule); `check_answer` applies it, `check_problem` says what is wrong with a row's `check` so data
validation can name the row and field. A checker reads the answer the way a grader reads it: it looks for the
answer the question asked for, not for the gold sentence's wording.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

NUMBER_WORDS = {
    word: value
    for value, word in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
        "seventeen eighteen nineteen twenty".split()
    )
}
_NUMBER = re.compile(r"-?\d+(?:[.,]\d+)?|\b(?:" + "|".join(NUMBER_WORDS) + r")\b", re.IGNORECASE)
_WORD = re.compile(r"[a-z]+(?:['-][a-z]+)*")


def _words(text: str) -> list[str]:
    return _WORD.findall(text.casefold())


def _numbers(text: str) -> list[float]:
    found = []
    for token in _NUMBER.findall(text):
        token = token.casefold()
        found.append(float(NUMBER_WORDS[token]) if token in NUMBER_WORDS else float(token.replace(",", ".")))
    return found


def _contains_phrase(text: str, phrase: str) -> bool:
    """`phrase` appears in `text` as whole words, case and punctuation aside."""
    wanted, words = _words(phrase), _words(text)
    return bool(wanted) and any(words[i : i + len(wanted)] == wanted for i in range(len(words) - len(wanted) + 1))


def _number(answer: str, spec: dict[str, Any]) -> bool:
    """The last number the answer states is the gold one ("28 minus 12 equals 16": 16)."""
    numbers = _numbers(answer)
    return bool(numbers) and abs(numbers[-1] - float(spec["value"])) < 1e-9


def _phrase(answer: str, spec: dict[str, Any]) -> bool:
    """The gold answer (or one of its accepted forms) appears as whole words ("Ankara", not "Istanbul")."""
    return any(_contains_phrase(answer, accepted) for accepted in [spec["value"], *spec.get("accept", [])])


def _yes_no(answer: str, spec: dict[str, Any]) -> bool:
    """The answer starts with the gold yes or no."""
    words = _words(answer)
    return bool(words) and words[0] == spec["value"]


def _exact_case(answer: str, spec: dict[str, Any]) -> bool:
    """The gold text appears with exactly its letter case (an uppercase rewrite must be uppercase)."""
    return re.search(r"(?<![A-Za-z])" + re.escape(spec["value"]) + r"(?![A-Za-z])", answer) is not None


def _sentence(answer: str, spec: dict[str, Any]) -> bool:
    """The gold sentence, case and punctuation aside, is the answer or appears in it (a rewrite)."""
    return _contains_phrase(answer, spec["value"])


def _single_word(answer: str, spec: dict[str, Any]) -> bool:
    """The answer is one word (punctuation aside), and the gold one."""
    words = _words(answer)
    return len(words) == 1 and words[0] in [spec["value"], *spec.get("accept", [])]


MAX_ITEM_WORDS = 4


def _list_items(answer: str, spec: dict[str, Any]) -> bool:
    """The answer lists exactly the asked number of items (split at commas, 'and', line breaks or bullets), each an
    item of a list (one to four words), not a sentence."""
    body = answer.split(":", 1)[1] if ":" in answer else answer
    parts = re.split(r",|\band\b|\n|;|•|^\s*[-*\d.]+\s", body.strip().rstrip("."), flags=re.M)
    items = [_words(part) for part in parts if part.strip()]
    return len(items) == int(spec["n"]) and all(1 <= len(words) <= MAX_ITEM_WORDS for words in items)


@dataclass(frozen=True)
class Checker:
    name: str
    fields: dict[str, type]  # required fields of the row's `check` and their types
    rule: Callable[[str, dict[str, Any]], bool]
    help: str


CHECKERS: dict[str, Checker] = {
    c.name: c
    for c in (
        Checker("number", {"value": float}, _number, "the last number in the answer equals the gold number"),
        Checker("phrase", {"value": str}, _phrase, "the gold answer (or an accepted form) appears as whole words"),
        Checker("yes_no", {"value": str}, _yes_no, "the answer starts with the gold yes / no"),
        Checker("exact_case", {"value": str}, _exact_case, "the gold text appears with its exact letter case"),
        Checker("sentence", {"value": str}, _sentence, "the gold sentence appears, case and punctuation aside"),
        Checker("single_word", {"value": str}, _single_word, "the answer is the single gold word"),
        Checker("list_items", {"n": int}, _list_items, "the answer lists exactly n items"),
    )
}


def check_problem(spec: Any) -> str | None:
    """What is wrong with a row's `check` (for data validation), or None."""
    if not isinstance(spec, dict):
        return f"must be an object with a 'type' ({', '.join(CHECKERS)}), got {type(spec).__name__}"
    checker = CHECKERS.get(spec.get("type"))
    if checker is None:
        return f"type {spec.get('type')!r} is not a checker; one of {', '.join(CHECKERS)}"
    for field, kind in checker.fields.items():
        value = spec.get(field)
        ok = (
            isinstance(value, int | float) and not isinstance(value, bool)
            if kind in (int, float)
            else isinstance(value, kind)
        )
        if not ok:
            return f"a {checker.name} check needs '{field}' ({kind.__name__})"
    if checker.name == "yes_no" and spec["value"] not in ("yes", "no"):
        return "a yes_no check's value is 'yes' or 'no'"
    return None


def check_answer(answer: str, spec: dict[str, Any]) -> bool:
    """Whether `answer` is correct by the row's checker (the spec is assumed valid: see `check_problem`)."""
    return CHECKERS[spec["type"]].rule(answer, spec)
