"""Prompt format, record schemas, tokenization with loss masks, and the mask verification.

One prompt format serves SFT, DPO, generation and evaluation alike. The SFT loss mask comes from the
prompt/completion boundary itself: the prompt and the completion are tokenized separately and joined, so
the boundary is exact and generation (which continues the same prompt tokens) sees what training saw.
Nothing guesses a prompt length or searches for a separator, so a `\\nResponse:` inside an instruction
cannot fool it. `verify_masking` then decodes the trained tokens and checks they are the completion.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipeline.core.configs import FormatConfig
from pipeline.core.errors import ConfigError, MaskingError
from pipeline.core.text import render_template, template_parts

IGNORE_INDEX = -100


# ----------------------------------------------------------------------------------------------- prompt format


def uses_chat_template(fmt: FormatConfig, tokenizer: Any) -> bool:
    """Whether prompts are rendered with the tokenizer's chat template under this format."""
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if fmt.chat_template == "always" and not has_template:
        raise ConfigError(
            "FormatConfig.chat_template: 'always' was asked for but the tokenizer has no chat template; "
            "use 'auto' or 'never'"
        )
    return fmt.chat_template == "always" or (fmt.chat_template == "auto" and has_template)


def render_prompt(instruction: str, fmt: FormatConfig, tokenizer: Any = None) -> str:
    """The prompt text for one instruction: the chat template's generation prompt, or the plain template."""
    return render_turns([{"role": "user", "content": instruction}], fmt, tokenizer)


def render_turns(turns: list[dict[str, str]], fmt: FormatConfig, tokenizer: Any = None) -> str:
    """The prompt text for a conversation ending with a user turn: the chat template's generation prompt; the plain
    template renders a single user turn only."""
    if tokenizer is not None and uses_chat_template(fmt, tokenizer):
        return tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=False)
    if len(turns) != 1 or turns[0]["role"] != "user":
        raise ConfigError(
            f"FormatConfig.template: a plain template renders one user turn, and this conversation has {len(turns)} "
            f"({', '.join(t['role'] for t in turns)}); use a model whose tokenizer has a chat template "
            "(format.chat_template: auto)"
        )
    return render_template(fmt.template, turns[0]["content"])


def completion_text(response: str, fmt: FormatConfig, tokenizer: Any = None) -> str:
    """A response as it follows the prompt: plain templates put one space after the separator."""
    if tokenizer is not None and uses_chat_template(fmt, tokenizer):
        return response
    return response if response[:1].isspace() else " " + response


def shaped_like(text: str, completion: str) -> str:
    """`text` with the leading whitespace of `completion`: a rejected response starts where its chosen one does, so
    the prompt/response boundary (one space after a plain template, none after a chat template) never tells them
    apart."""
    lead = completion[: len(completion) - len(completion.lstrip())]
    return lead + text.strip()


def stop_strings(fmt: FormatConfig) -> list[str]:
    """Text that marks the model starting a new turn: the template's first line (e.g. `Instruction:`)."""
    head = template_parts(fmt.template)[0].strip()
    return [f"\n{head}"] if head else []


# ----------------------------------------------------------------------------------------------- tokenization


def _special_id(tokenizer: Any, name: str) -> int | None:
    value = getattr(tokenizer, f"{name}_token_id", None)
    return value if isinstance(value, int) else None


def adds_bos(tokenizer: Any) -> bool:
    """Whether this tokenizer's post-processor puts a BOS token in front of a sequence."""
    bos = _special_id(tokenizer, "bos")
    if bos is None:
        return False
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return len(ids) > 0 and ids[0] == bos


def encode_prompt(tokenizer: Any, prompt: str) -> list[int]:
    """Token ids of a prompt: one BOS where the tokenizer uses one (never two), then the prompt text."""
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    bos = _special_id(tokenizer, "bos")
    bos_text = getattr(tokenizer, "bos_token", None)
    already_has_bos = (ids[:1] == [bos]) or (bool(bos_text) and prompt.startswith(bos_text))
    if adds_bos(tokenizer) and not already_has_bos:
        ids = [bos, *ids]
    return list(ids)


@dataclass
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]
    prompt_tokens: int  # tokens before the first trained one
    completion_tokens: int  # trained tokens, EOS included
    truncated: bool  # the completion's tail (and EOS) was cut to fit max_length
    targets: list[str] = field(default_factory=list)  # the text each trained span is (before its EOS), in order


@dataclass
class DropCounter:
    """Examples dropped by tokenization and why; shown on the stage's report, never silent."""

    dropped: dict[str, int] = field(default_factory=dict)
    rows: list[tuple[int, str]] = field(default_factory=list)

    def add(self, row: int, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
        self.rows.append((row, reason))

    @property
    def total(self) -> int:
        return sum(self.dropped.values())


def tokenize_pair(
    tokenizer: Any,
    prompt: str,
    completion: str,
    max_length: int,
    min_completion_tokens: int = 1,
) -> TokenizedExample | str:
    """Tokenize prompt + completion with labels `-100` exactly on the prompt and one EOS at the end.

    Returns the example, or a reason string when it must be dropped (prompt too long for `max_length`,
    or truncation would keep fewer than `min_completion_tokens` completion tokens, or an empty completion).
    """
    eos = _special_id(tokenizer, "eos")
    if eos is None:
        raise ConfigError("tokenizer: has no eos_token; set one so completions have a learnable end")
    if completion.strip() == "":
        return "empty_completion"
    prompt_ids = encode_prompt(tokenizer, prompt)
    completion_ids = list(tokenizer(completion, add_special_tokens=False)["input_ids"]) + [eos]
    room = max_length - len(prompt_ids)
    if room < min_completion_tokens:
        return "prompt_too_long"
    truncated = len(completion_ids) > room
    if truncated:
        completion_ids = completion_ids[:room]
    input_ids = prompt_ids + completion_ids
    labels = [IGNORE_INDEX] * len(prompt_ids) + completion_ids
    return TokenizedExample(input_ids, labels, len(prompt_ids), len(completion_ids), truncated, [completion])


def tokenize_record(
    tokenizer: Any, record: dict[str, Any], max_length: int, min_completion_tokens: int = 1
) -> TokenizedExample | str:
    """An SFT record as it trains: one whose prompt was a conversation with earlier assistant turns trains every
    assistant turn (each with its EOS) and masks the rest; any other trains its completion after its prompt."""
    turns = (record.get("meta") or {}).get("messages")
    if turns and any(t["role"] == "assistant" for t in turns):
        conversation = [*turns, {"role": "assistant", "content": record["completion"]}]
        return tokenize_conversation(tokenizer, conversation, max_length, min_completion_tokens)
    return tokenize_pair(tokenizer, record["prompt"], record["completion"], max_length, min_completion_tokens)


def conversation_segments(tokenizer: Any, turns: list[dict[str, str]]) -> list[tuple[str, bool]]:
    """A conversation as the chat template renders it, cut into (text, trained) segments: every assistant turn's
    content is trained (its end-of-turn EOS is added by the tokenization), everything else is masked.

    Each assistant turn is found by rendering the conversation up to it with the generation prompt and up to its end:
    the template must extend the first into the second by exactly the turn's content and the tokenizer's EOS (plus
    whitespace), or the boundary is not where it seems and `ConfigError` says so."""
    eos_text = tokenizer.eos_token
    segments: list[tuple[str, bool]] = []
    done = ""  # the text already cut into segments
    for i, turn in enumerate(turns):
        if turn["role"] != "assistant":
            continue
        before = tokenizer.apply_chat_template(turns[:i], add_generation_prompt=True, tokenize=False)
        through = tokenizer.apply_chat_template(turns[: i + 1], tokenize=False)
        if not before.startswith(done) or not through.startswith(before):
            raise ConfigError(
                f"chat template: rendering turn {i} changes the text before it, so the loss mask of a multi-turn "
                "conversation cannot be cut from it"
            )
        rendered_turn = through[len(before) :]
        expected = turn["content"] + eos_text
        if not rendered_turn.startswith(expected) or rendered_turn[len(expected) :].strip():
            raise ConfigError(
                f"chat template: assistant turn {i} renders as {rendered_turn!r}, not its content followed by the "
                f"tokenizer's EOS {eos_text!r}; the end of the turn the model must learn is not the EOS it stops at"
            )
        segments += [(before[len(done) :], False), (turn["content"], True)]
        done = before + expected
    return segments


def tokenize_conversation(
    tokenizer: Any, turns: list[dict[str, str]], max_length: int, min_completion_tokens: int = 1
) -> TokenizedExample | str:
    """Tokenize a whole conversation with every assistant turn (and its EOS) trained and the rest masked.

    Returns the example, or a reason string when it must be dropped: a conversation is never truncated (a cut could
    leave a turn without its end), so one longer than `max_length` is `conversation_too_long`."""
    eos = _special_id(tokenizer, "eos")
    if eos is None:
        raise ConfigError("tokenizer: has no eos_token; set one so completions have a learnable end")
    input_ids: list[int] = []
    labels: list[int] = []
    targets: list[str] = []
    for text, trained in conversation_segments(tokenizer, turns):
        if not trained:
            ids = (
                encode_prompt(tokenizer, text)
                if not input_ids
                else list(tokenizer(text, add_special_tokens=False)["input_ids"])
            )
            input_ids += ids
            labels += [IGNORE_INDEX] * len(ids)
            continue
        ids = list(tokenizer(text, add_special_tokens=False)["input_ids"]) + [eos]
        input_ids += ids
        labels += ids
        targets.append(text)
    trained_count = sum(1 for label in labels if label != IGNORE_INDEX)
    if len(input_ids) > max_length:
        return "conversation_too_long"
    if trained_count - len(targets) < min_completion_tokens:
        return "empty_completion"
    first = next(k for k, label in enumerate(labels) if label != IGNORE_INDEX)
    return TokenizedExample(input_ids, labels, first, trained_count, False, targets)


# ----------------------------------------------------------------------------------------------- verification


def _decode(tokenizer: Any, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def verify_masking(
    tokenizer: Any,
    input_ids: list[int],
    labels: list[int],
    completion: str | list[str],
    index: int = 0,
) -> None:
    """Check that the trained tokens (labels != -100) decode to exactly `completion` + EOS; for a conversation
    (`completion` = the assistant turns, in order) that they form one span per turn, each its turn + EOS.

    Padding is ignored. A completion cut by truncation must still be a non-empty prefix of `completion`.
    Raises `MaskingError` showing the example index and the prompt/completion split as the tokenizer saw it.
    """
    pad = _special_id(tokenizer, "pad")
    eos = _special_id(tokenizer, "eos")
    bos = _special_id(tokenizer, "bos")
    targets = [completion] if isinstance(completion, str) else list(completion)
    pairs = _without_padding(list(zip(input_ids, labels, strict=True)), pad, bos)
    ids = [i for i, _ in pairs]
    trained_positions = [k for k, (_, lab) in enumerate(pairs) if lab != IGNORE_INDEX]
    spans = _spans(trained_positions)
    problem = _span_problem(pairs, trained_positions, bos, len(targets))
    for k, (span, target) in enumerate(zip(spans, targets, strict=False)):
        problem = problem or _text_problem(tokenizer, [ids[p] for p in span], target, eos, last=k == len(spans) - 1)
    if problem:
        completion = " | ".join(targets)
        first = trained_positions[0] if trained_positions else len(ids)
        raise MaskingError(
            f"example {index}: {problem}\n"
            f"  masked (prompt) part : {_decode(tokenizer, ids[:first])!r}\n"
            f"  trained part         : {_decode(tokenizer, [ids[k] for k in trained_positions])!r}\n"
            f"  expected completion  : {completion!r} + EOS"
        )


def _without_padding(pairs: list[tuple[int, int]], pad: int | None, bos: int | None) -> list[tuple[int, int]]:
    """(input id, label) pairs with padding stripped at either end: pad positions are never labelled, a real EOS
    (possibly == pad) is."""
    while pairs and pairs[-1][1] == IGNORE_INDEX and pairs[-1][0] == pad:
        pairs.pop()
    while pairs and pairs[0][1] == IGNORE_INDEX and pairs[0][0] == pad and pad != bos:
        pairs.pop(0)
    return pairs


def _spans(positions: list[int]) -> list[list[int]]:
    """Runs of consecutive positions."""
    runs: list[list[int]] = []
    for p in positions:
        if runs and p == runs[-1][-1] + 1:
            runs[-1].append(p)
        else:
            runs.append([p])
    return runs


def _span_problem(pairs: list[tuple[int, int]], trained: list[int], bos: int | None, turns: int = 1) -> str | None:
    """What is wrong with where the trained tokens sit, if anything."""
    ids = [i for i, _ in pairs]
    if not trained:
        return "no token is trained (the whole example is masked)"
    if any(lab != ids[k] for k, (_, lab) in enumerate(pairs) if lab != IGNORE_INDEX):
        return "a label differs from its input token"
    spans = len(_spans(trained))
    if spans != turns:
        what = "one contiguous span" if turns == 1 else f"{turns} spans, one per assistant turn"
        return f"the trained tokens are not {what} (found {spans})"
    if trained[-1] != len(ids) - 1:
        return "tokens after the completion are not masked"
    if bos is not None and ids[:2] == [bos, bos]:
        return "the sequence starts with two BOS tokens"
    return None


def _text_problem(
    tokenizer: Any, trained: list[int], completion: str, eos: int | None, last: bool = True
) -> str | None:
    """What is wrong with the trained tokens' text against the completion, if anything (only the last span may have
    been cut by truncation)."""
    ends_with_eos = trained[-1] == eos
    if not ends_with_eos and not last:
        return "an assistant turn before the last is trained without its EOS"
    if ends_with_eos and len(trained) >= 2 and trained[-2] == eos and not completion.endswith(tokenizer.eos_token):
        return "the completion ends with two EOS tokens"
    text = _decode(tokenizer, trained[:-1] if ends_with_eos else trained)
    if ends_with_eos:
        return None if text == completion else "the trained tokens do not decode to the completion"
    # truncated: the trained text must be a prefix of the completion (a cut multi-byte char may trail)
    kept = text.rstrip("\ufffd")
    if not completion.startswith(kept) or kept == "":
        return "the completion was truncated and the trained tokens are not a prefix of it"
    return None


def verify_batch(
    tokenizer: Any, batch: dict[str, Any], completions: list[str] | list[list[str]], start_index: int = 0
) -> int:
    """Verify every row of a collated batch (`input_ids`, `labels`) against its completion; returns rows checked."""
    input_ids = batch["input_ids"]
    labels = batch["labels"]
    for row, completion in enumerate(completions):
        ids = input_ids[row].tolist() if hasattr(input_ids[row], "tolist") else list(input_ids[row])
        labs = labels[row].tolist() if hasattr(labels[row], "tolist") else list(labels[row])
        verify_masking(tokenizer, ids, labs, completion, index=start_index + row)
    return len(completions)


def mask_example_view(tokenizer: Any, input_ids: list[int], labels: list[int]) -> list[dict[str, Any]]:
    """Tokens as the tokenizer split them, each with whether it is trained: for the dashboard's mask viewer."""
    return [
        {"token": _decode(tokenizer, [tok]), "id": int(tok), "trained": lab != IGNORE_INDEX}
        for tok, lab in zip(input_ids, labels, strict=True)
    ]
