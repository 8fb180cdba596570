"""TRL's conversational formats: a conversation is a list of `{"role", "content"}` turns.

Data may come as plain text (`instruction`, `prompt`/`completion`, `prompt`/`chosen`/`rejected`) or as conversations:
`messages` (a whole conversation), or `prompt`/`completion` and `prompt`/`chosen`/`rejected` whose values are
message lists. `turn_problems` checks one conversation (roles, order, empty turns) and names the turn; `as_prompt`
reads the prompt turns and the reference answer out of a row of either shape. Torch-free: validation and the
dashboard use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ROLES = ("system", "user", "assistant")
SYSTEM, USER, ASSISTANT = ROLES


@dataclass(frozen=True)
class TurnProblem:
    field: str  # e.g. "messages[2].content"
    code: str  # not_a_list / not_a_turn / bad_role / empty_turn / wrong_type / turn_order / wrong_last_turn
    message: str


def is_conversation(value: Any) -> bool:
    return isinstance(value, list)


def turn_problems(
    value: Any, field: str, last: str | None = None, max_chars: int | None = None, first: str = USER
) -> list[TurnProblem]:
    """What is wrong with one conversation, turn by turn: every turn an object with a known `role` and non-empty
    string `content`; a system turn only first; then user and assistant alternating, starting with `first` (user; a
    completion, chosen or rejected continues a prompt, so starts with the assistant and has no system turn); `last`,
    when given, the role it must end with (a prompt ends with the user, an answer with the assistant)."""
    if not isinstance(value, list):
        return [TurnProblem(field, "not_a_list", f"'{field}' must be a list of {{role, content}} turns")]
    if not value:
        return [TurnProblem(field, "empty_turn", f"'{field}' has no turns")]
    problems: list[TurnProblem] = []
    for i, turn in enumerate(value):
        where = f"{field}[{i}]"
        if not isinstance(turn, dict) or "role" not in turn or "content" not in turn:
            problems.append(TurnProblem(where, "not_a_turn", f"'{where}' must be an object with 'role' and 'content'"))
            continue
        extra = sorted(set(turn) - {"role", "content"})
        if extra:
            problems.append(TurnProblem(where, "not_a_turn", f"'{where}' has unknown keys {', '.join(extra)}"))
        if turn["role"] not in ROLES:
            problems.append(
                TurnProblem(f"{where}.role", "bad_role", f"role {turn['role']!r}: one of {', '.join(ROLES)}")
            )
        content = turn["content"]
        if not isinstance(content, str):
            problems.append(TurnProblem(f"{where}.content", "wrong_type", "content must be a string"))
        elif not content.strip():
            problems.append(TurnProblem(f"{where}.content", "empty_turn", "the turn's content is empty"))
        elif max_chars is not None and len(content) > max_chars:
            problems.append(TurnProblem(f"{where}.content", "too_long", f"{len(content)} chars > {max_chars}"))
    if problems:
        return problems
    return _order_problems(value, field, last, first)


def _order_problems(turns: list[dict[str, Any]], field: str, last: str | None, first: str) -> list[TurnProblem]:
    roles = [t["role"] for t in turns]
    start = 1 if roles[0] == SYSTEM and first == USER else 0
    other = ASSISTANT if first == USER else USER
    for i in range(start, len(roles)):
        expected = first if (i - start) % 2 == 0 else other
        if roles[i] != expected:
            what = "a system turn may only come first" if roles[i] == SYSTEM else f"expected the {expected}'s turn"
            return [TurnProblem(f"{field}[{i}].role", "turn_order", f"turn {i} is {roles[i]}: {what}")]
    if len(roles) == start:
        return [TurnProblem(field, "turn_order", f"'{field}' has only a system turn")]
    if last is not None and roles[-1] != last:
        return [TurnProblem(f"{field}[{len(roles) - 1}].role", "wrong_last_turn", f"must end with a {last} turn")]
    return []


@dataclass(frozen=True)
class PromptTurns:
    """A conversational row read as a prompt: the turns up to the user's last question, the question itself (what a
    plain template and the content checks use) and the reference answer when the row has one."""

    turns: list[dict[str, str]]
    instruction: str
    reference: str | None


def as_prompt(
    record: dict[str, Any], max_chars: int | None = None
) -> tuple[str, PromptTurns | None, list[TurnProblem]]:
    """Where a row keeps its prompt as a conversation (`messages`, or a message-list `prompt`, with an optional
    message-list `completion`), that conversation read as a prompt; `(field, None, [])` for a plain-text row."""
    if is_conversation(record.get("messages")):
        problems = turn_problems(record["messages"], "messages", max_chars=max_chars)
        if problems:
            return "messages", None, problems
        turns = [dict(t) for t in record["messages"]]
        reference = turns.pop()["content"] if turns[-1]["role"] == ASSISTANT else None
        return "messages", PromptTurns(turns, turns[-1]["content"], reference), []
    if is_conversation(record.get("prompt")):
        problems = turn_problems(record["prompt"], "prompt", last=USER, max_chars=max_chars)
        completion = record.get("completion")
        if is_conversation(completion):
            problems += turn_problems(completion, "completion", last=ASSISTANT, max_chars=max_chars, first=ASSISTANT)
        if problems:
            return "prompt", None, problems
        turns = [dict(t) for t in record["prompt"]]
        reference = completion[-1]["content"] if is_conversation(completion) else None
        return "prompt", PromptTurns(turns, turns[-1]["content"], reference), []
    return "", None, []


def assistant_turns(turns: list[dict[str, Any]]) -> int:
    return sum(1 for t in turns if t["role"] == ASSISTANT)
