"""TRL's conversational formats: turns checked, prompts rendered through the chat template, every assistant turn of a
multi-turn conversation trained (each with its EOS) and the rest masked, verified by decoding."""

from __future__ import annotations

import json

import pytest

from pipeline.core.configs import FormatConfig, ValidationConfig
from pipeline.core.conversations import as_prompt, turn_problems
from pipeline.core.errors import ConfigError, MaskingError
from pipeline.formats import IGNORE_INDEX, render_turns, tokenize_conversation, tokenize_record, verify_masking
from pipeline.validation import validate_instructions, validate_preference_pairs, validate_sft_data
from tests.tokenizer_families import qwen_like_chat, smollm2

U = lambda text: {"role": "user", "content": text}  # noqa: E731
A = lambda text: {"role": "assistant", "content": text}  # noqa: E731
SYSTEM = {"role": "system", "content": "Answer briefly."}
MULTI_TURN = [SYSTEM, U("Name a colour."), A("Blue."), U("And a fruit?"), A("An apple.")]


@pytest.mark.parametrize(
    "turns, last, field, code",
    [
        ("not a list", None, "messages", "not_a_list"),
        ([], None, "messages", "empty_turn"),
        ([U("hi"), {"role": "bot", "content": "x"}], None, "messages[1].role", "bad_role"),
        ([U("hi"), A("  ")], None, "messages[1].content", "empty_turn"),
        ([U("hi"), {"role": "assistant", "content": 3}], None, "messages[1].content", "wrong_type"),
        ([U("hi"), {"role": "assistant"}], None, "messages[1]", "not_a_turn"),
        ([U("hi"), {"role": "assistant", "content": "x", "name": "b"}], None, "messages[1]", "not_a_turn"),
        ([A("hi"), U("x")], None, "messages[0].role", "turn_order"),
        ([U("hi"), U("again")], None, "messages[1].role", "turn_order"),
        ([U("hi"), SYSTEM], None, "messages[1].role", "turn_order"),
        ([SYSTEM], None, "messages", "turn_order"),
        ([U("hi"), A("x")], "user", "messages[1].role", "wrong_last_turn"),
    ],
)
def test_turn_problems_name_the_turn(turns, last, field, code):
    problems = turn_problems(turns, "messages", last)
    assert [(p.field, p.code) for p in problems][:1] == [(field, code)]


def test_well_formed_conversations_have_no_problems():
    assert turn_problems(MULTI_TURN, "messages", "assistant") == []
    assert turn_problems([U("hi")], "prompt", "user") == []


def test_a_conversational_row_reads_as_its_prompt_turns_and_reference():
    field, prompt, problems = as_prompt({"messages": MULTI_TURN})
    assert (field, problems) == ("messages", [])
    assert prompt.turns == MULTI_TURN[:-1] and prompt.instruction == "And a fruit?" and prompt.reference == "An apple."
    _, prompt, _ = as_prompt({"prompt": [U("Name a colour.")], "completion": [A("Blue.")]})
    assert prompt.turns == [U("Name a colour.")] and prompt.reference == "Blue."
    assert as_prompt({"instruction": "plain"}) == ("", None, [])


def test_instructions_accept_conversations_beside_plain_rows():
    rows = [
        (1, {"instruction": "Name a colour."}),
        (2, {"messages": [U("Name a fruit."), A("An apple.")]}),
        (3, {"prompt": [SYSTEM, U("Name a tree.")]}),
        (4, {"messages": [A("out of order"), U("x")]}),
    ]
    valid, report = validate_instructions(rows, config=ValidationConfig(max_error_rate=0.5))
    assert valid == [(1, "Name a colour."), (2, "Name a fruit."), (3, "Name a tree.")]
    assert [(i.row, i.field, i.code) for i in report.errors] == [(4, "messages[0].role", "turn_order")]


def test_sft_and_pair_checks_read_conversations_as_their_text():
    sft = [(1, {"messages": [U("Name a colour."), A("Blue.")]}), (2, {"prompt": [U("Hi")], "completion": [A("")]})]
    valid, report = validate_sft_data(sft, ValidationConfig(max_error_rate=0.5))
    assert len(valid) == 1 and valid[0]["completion"] == "Blue." and "user: Name a colour." in valid[0]["prompt"]
    assert [(i.row, i.field, i.code) for i in report.errors] == [(2, "completion[0].content", "empty_turn")]
    pairs = [(1, {"prompt": [U("Name a colour.")], "chosen": [A("Blue.")], "rejected": [A("BLUE.")]})]
    _, report = validate_preference_pairs(pairs)
    assert (report.errors[0].row, report.errors[0].field, report.errors[0].code) == (
        1,
        "rejected",
        "chosen_equals_rejected",
    )


@pytest.mark.parametrize("family", [qwen_like_chat, smollm2], ids=["qwen_like_chat", "smollm2"])
def test_every_assistant_turn_is_trained_with_its_eos_and_the_rest_masked(family):
    tok = family()
    example = tokenize_conversation(tok, MULTI_TURN, max_length=512)
    assert example.targets == ["Blue.", "An apple."]
    verify_masking(tok, example.input_ids, example.labels, example.targets)
    spans, current = [], []
    for token, label in zip(example.input_ids, example.labels, strict=True):
        if label != IGNORE_INDEX:
            current.append(token)
        elif current:
            spans.append(current)
            current = []
    spans.append(current)
    assert [tok.decode(s, skip_special_tokens=False) for s in spans] == [
        "Blue." + tok.eos_token,
        "An apple." + tok.eos_token,
    ]
    masked = tok.decode([t for t, lab in zip(example.input_ids, example.labels, strict=True) if lab == IGNORE_INDEX])
    assert all(text in masked for text in ("Answer briefly.", "Name a colour.", "And a fruit?"))
    assert "Blue." not in masked and "apple" not in masked
    # the whole sequence is the conversation exactly as the template renders it (its turn-closing newline aside)
    rendered = tok.apply_chat_template(MULTI_TURN, tokenize=False)
    assert tok.decode(example.input_ids, skip_special_tokens=False) == rendered.rstrip("\n")


@pytest.mark.parametrize("family", [qwen_like_chat, smollm2], ids=["qwen_like_chat", "smollm2"])
def test_a_mask_leaking_into_a_user_turn_or_missing_a_turn_fails(family):
    tok = family()
    example = tokenize_conversation(tok, MULTI_TURN, max_length=512)
    leaked = list(example.labels)
    leaked[example.prompt_tokens - 1] = example.input_ids[example.prompt_tokens - 1]  # a prompt token trained
    with pytest.raises(MaskingError):
        verify_masking(tok, example.input_ids, leaked, example.targets, index=3)
    only_last = list(example.labels)
    first_span_end = example.labels.index(IGNORE_INDEX, example.prompt_tokens)
    only_last[example.prompt_tokens : first_span_end] = [IGNORE_INDEX] * (first_span_end - example.prompt_tokens)
    with pytest.raises(MaskingError, match="2 spans, one per assistant turn"):
        verify_masking(tok, example.input_ids, only_last, example.targets)


def test_a_conversation_longer_than_max_length_is_dropped_not_cut():
    assert tokenize_conversation(qwen_like_chat(), MULTI_TURN, max_length=12) == "conversation_too_long"


def test_an_sft_record_with_earlier_assistant_turns_trains_them_all():
    tok = smollm2()
    record = {"prompt": "rendered", "completion": "An apple.", "meta": {"messages": MULTI_TURN[:-1]}}
    example = tokenize_record(tok, record, max_length=512)
    assert example.targets == ["Blue.", "An apple."]
    plain = {"prompt": render_turns([U("Name a colour.")], FormatConfig(), tok), "completion": "Blue."}
    assert tokenize_record(tok, plain, max_length=512).targets == ["Blue."]


def test_a_template_whose_turn_does_not_end_with_eos_is_refused():
    tok = qwen_like_chat().__class__(tokenizer_object=qwen_like_chat().backend_tokenizer, eos_token="<|endoftext|>")
    tok.chat_template = qwen_like_chat().chat_template
    with pytest.raises(ConfigError, match="not its content followed by the tokenizer's EOS"):
        tokenize_conversation(tok, MULTI_TURN, max_length=512)


def test_a_plain_template_renders_one_user_turn_and_refuses_more():
    assert render_turns([U("Name a colour.")], FormatConfig()) == "Instruction: Name a colour.\nResponse:"
    with pytest.raises(ConfigError, match="a plain template renders one user turn"):
        render_turns(MULTI_TURN[:-1], FormatConfig())


def test_the_split_keeps_a_conversational_rows_turns_and_reference(tmp_path):
    """What generate_sft renders through the model's chat template: the prompt's turns; the reference answer comes
    from the row's final assistant turn."""
    from pipeline.core.configs import preset
    from pipeline.stages import split as split_stage

    rows = [{"messages": [U(f"Name colour number {i}."), A(f"Colour {i} is blue.")]} for i in range(12)]
    path = tmp_path / "conversations.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    spec = preset("tiny-ci")
    spec.data.instructions = str(path)
    (tmp_path / "split").mkdir()
    split_stage.run(spec, {}, tmp_path / "split")
    written = [json.loads(x) for x in (tmp_path / "split" / split_stage.OUTPUT).read_text().splitlines()]
    assert written[0]["messages"] == [U("Name colour number 0.")] and written[0]["reference"] == "Colour 0 is blue."
    assert {r["split"] for r in written} == {"train", "heldout"}
