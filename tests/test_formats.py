import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from pipeline.core.configs import FormatConfig
from pipeline.core.errors import ConfigError, MaskingError
from pipeline.formats import (
    IGNORE_INDEX,
    encode_prompt,
    mask_example_view,
    render_prompt,
    stop_strings,
    tokenize_pair,
    verify_masking,
)
from tests.tokenizer_families import FAMILIES, qwen_like_chat

FMT = FormatConfig()
CASES = {
    "separator_inside_instruction": ("Repeat this:\nResponse: yes\nResponse: no", " The answer is no."),
    "completion_starts_with_space": ("What is 2 plus 2?", " 2 plus 2 equals 4."),
    "completion_starts_with_newline": ("Write a list.", "\n- one\n- two"),
    "unicode_and_emoji": ("Say hello in Japanese 🙂", " こんにちは 🚀 — naïve café"),
    "crlf": ("Two lines please.", " first line\r\nsecond line\r\n"),
    "empty_looking": ("Reply with an invisible character.", "\u200b"),
    "single_char": ("Answer with one letter.", "A"),
}


def trained_ids(example):
    return [t for t, label in zip(example.input_ids, example.labels, strict=True) if label != IGNORE_INDEX]


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("case", sorted(CASES))
def test_labels_mask_exactly_the_prompt(family, case):
    tok = FAMILIES[family]()
    instruction, completion = CASES[case]
    prompt = render_prompt(instruction, FMT, tok)
    example = tokenize_pair(tok, prompt, completion, max_length=512)
    verify_masking(tok, example.input_ids, example.labels, completion)
    # the masked part is exactly the prompt's own tokens, which is what generation continues from
    assert example.input_ids[: example.prompt_tokens] == encode_prompt(tok, prompt)
    assert all(label == IGNORE_INDEX for label in example.labels[: example.prompt_tokens])
    trained = trained_ids(example)
    assert trained[-1] == tok.eos_token_id and tok.eos_token_id not in trained[:-1]
    assert tok.decode(trained[:-1], skip_special_tokens=False, clean_up_tokenization_spaces=False) == completion
    if tok.bos_token_id is not None:
        assert example.input_ids[0] == tok.bos_token_id and example.input_ids[1] != tok.bos_token_id
    assert not example.truncated


def test_separator_inside_instruction_stays_masked():
    tok = FAMILIES["tiny"]()
    instruction, completion = CASES["separator_inside_instruction"]
    example = tokenize_pair(tok, render_prompt(instruction, FMT), completion, max_length=512)
    masked_text = tok.decode([t for t, lab in zip(example.input_ids, example.labels, strict=True) if lab == -100])
    assert masked_text.count("Response:") == 3  # two in the instruction, one separator: all masked
    assert tok.decode(trained_ids(example)) == completion + "</s>"


def test_chat_template_prompt_has_one_bos_and_masks_the_template():
    tok = qwen_like_chat()
    prompt = render_prompt("What is the capital of Peru?", FMT, tok)
    assert prompt.startswith("<|im_start|>user") and prompt.endswith("<|im_start|>assistant\n")
    example = tokenize_pair(tok, prompt, "Lima.", max_length=512)
    verify_masking(tok, example.input_ids, example.labels, "Lima.")
    assert tok.decode(trained_ids(example)) == "Lima.<|im_end|>"
    with pytest.raises(ConfigError, match="no chat template"):
        render_prompt("x", FormatConfig(chat_template="always"), FAMILIES["gpt2_like"]())


def test_very_long_prompt_is_dropped_not_trained_on_nothing():
    tok = FAMILIES["tiny"]()
    prompt = render_prompt("word " * 400, FMT)
    assert tokenize_pair(tok, prompt, " fine", max_length=64, min_completion_tokens=2) == "prompt_too_long"
    assert tokenize_pair(tok, render_prompt("hi", FMT), "   ", max_length=64) == "empty_completion"


def test_truncated_completion_keeps_a_verified_prefix():
    tok = FAMILIES["gpt2_like"]()
    prompt = render_prompt("Tell a long story.", FMT)
    completion = " Once upon a time " + "there was a river and a bridge. " * 20
    example = tokenize_pair(tok, prompt, completion, max_length=40, min_completion_tokens=4)
    assert example.truncated and len(example.input_ids) == 40
    verify_masking(tok, example.input_ids, example.labels, completion)
    assert tok.eos_token_id not in trained_ids(example)
    # too little room left for the completion: dropped, not trained on a stub
    short = tokenize_pair(tok, prompt, completion, max_length=example.prompt_tokens + 2, min_completion_tokens=4)
    assert short == "prompt_too_long"


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_verify_masking_catches_a_prompt_length_guess(family):
    """The seed's fallback: a mask from a guessed prompt length leaks prompt tokens into the loss."""
    tok = FAMILIES[family]()
    completion = " The capital of Peru is Lima."
    example = tokenize_pair(tok, render_prompt("What is the capital of Peru?", FMT), completion, max_length=512)
    guess = example.prompt_tokens - 2
    labels = [IGNORE_INDEX] * guess + example.input_ids[guess:]
    with pytest.raises(MaskingError) as err:
        verify_masking(tok, example.input_ids, labels, completion, index=7)
    assert "example 7" in str(err.value) and "masked (prompt) part" in str(err.value)
    late = [IGNORE_INDEX] * (example.prompt_tokens + 1) + example.input_ids[example.prompt_tokens + 1 :]
    with pytest.raises(MaskingError):
        verify_masking(tok, example.input_ids, late, completion)


def test_verify_masking_catches_double_eos_double_bos_and_padding_labels():
    tok = FAMILIES["llama_like"]()
    completion = " Lima."
    example = tokenize_pair(tok, render_prompt("Capital of Peru?", FMT), completion, max_length=512)
    eos, bos = tok.eos_token_id, tok.bos_token_id
    with pytest.raises(MaskingError, match="two EOS"):
        verify_masking(tok, example.input_ids + [eos], example.labels + [eos], completion)
    with pytest.raises(MaskingError, match="two BOS"):
        verify_masking(tok, [bos] + example.input_ids, [IGNORE_INDEX] + example.labels, completion)
    with pytest.raises(MaskingError, match="no token is trained"):
        verify_masking(tok, example.input_ids, [IGNORE_INDEX] * len(example.labels), completion)
    # right padding with pad == eos (as TRL sets it) is fine when the padding is not labelled
    padded_ids = example.input_ids + [tok.pad_token_id] * 3
    verify_masking(tok, padded_ids, example.labels + [IGNORE_INDEX] * 3, completion)


def test_mask_view_flags_each_token():
    tok = FAMILIES["tiny"]()
    example = tokenize_pair(tok, render_prompt("Hi", FMT), " Hello.", max_length=64)
    view = mask_example_view(tok, example.input_ids, example.labels)
    assert [v["trained"] for v in view] == [lab != IGNORE_INDEX for lab in example.labels]
    assert "".join(v["token"] for v in view if v["trained"]) == " Hello.</s>"


def test_stop_strings_from_template():
    assert stop_strings(FMT) == ["\nInstruction:"]


SAFE_TEXT = st.text(alphabet=st.characters(exclude_categories=("Cs",)), min_size=0, max_size=60)


@pytest.mark.parametrize("family", sorted(FAMILIES))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(instruction=SAFE_TEXT, completion=SAFE_TEXT.filter(lambda s: s.strip() != ""))
def test_property_trained_tokens_decode_to_completion(family, instruction, completion):
    tok = FAMILIES[family]()
    if family == "llama_like":
        # SentencePiece uses U+2581 for spaces: that character cannot round-trip in this family at all
        completion = completion.replace("\u2581", "_")
        instruction = instruction.replace("\u2581", "_")
        if completion.strip() == "":
            return
    if family == "smollm2":
        # a real model's byte-level vocabulary lacks the bytes its training data never had (e.g. U+40000's lead
        # byte): such text cannot round-trip at all, and verify_masking rightly refuses it
        assume(tok.decode(tok(completion, add_special_tokens=False)["input_ids"]) == completion)
    example = tokenize_pair(tok, render_prompt(instruction, FMT), completion, max_length=4096)
    verify_masking(tok, example.input_ids, example.labels, completion)
    decoded = tok.decode(trained_ids(example)[:-1], skip_special_tokens=False, clean_up_tokenization_spaces=False)
    assert decoded == completion
