"""Generation backends: the `Generator` protocol and its Hugging Face `generate` implementation.

generate_sft (SFT data from the base model), generate_negatives (`model_sample`) and evaluate generate and score
through a `Generator`, so the three decode the same way from the same prompt tokens (`formats.encode_prompt`),
and another backend (vLLM on a pod, a judge model behind an endpoint) plugs in by implementing the protocol and
registering in `BACKENDS`, without touching a stage.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from pipeline.core.configs import FormatConfig, SamplingConfig
from pipeline.core.errors import ConfigError
from pipeline.formats import IGNORE_INDEX, encode_prompt, stop_strings, tokenize_pair, uses_chat_template

BatchFn = Callable[[int, int], None]  # (done, total) after each batch
MAX_SCORED_LENGTH = 4096
ROUND_TOKENS = 8  # new tokens per `generate` call before finished rows leave the batch


@dataclass
class Generation:
    text: str  # decoded, special tokens removed, cut at the first stop marker
    new_tokens: int  # tokens generated up to (and including) EOS, or all when EOS never came
    eos_reached: bool


class Generator(Protocol):
    """What a stage needs of a model that writes and scores text."""

    def generate(
        self, prompts: list[str], sampling: SamplingConfig, *, seed: int, batch_size: int, on_batch: BatchFn | None
    ) -> list[Generation]:
        """One continuation per prompt, in order; batch b samples with seed + b."""
        ...

    def completion_logprobs(
        self, prompts: list[str], completions: list[str], batch_size: int
    ) -> list[tuple[float, int]]:
        """(sum of log-probs, token count) of each completion + EOS given its prompt."""
        ...


@dataclass
class HFGenerator:
    """A loaded Hugging Face causal LM: batched, left-padded `generate`, seeded per batch, cut at stop markers.

    It holds the `pipeline.models.loaded` holder, never the model itself: when the `with loaded(...)` block ends
    the holder lets go of the model and the memory is returned, whatever still refers to this generator."""

    source: Any  # a pipeline.models.LoadedModel (anything with .model and .tokenizer)
    fmt: FormatConfig

    @property
    def model(self) -> Any:
        return self.source.model

    @property
    def tokenizer(self) -> Any:
        return self.source.tokenizer

    def generate(
        self,
        prompts: list[str],
        sampling: SamplingConfig,
        *,
        seed: int = 0,
        batch_size: int = 8,
        on_batch: BatchFn | None = None,
    ) -> list[Generation]:
        import torch
        from transformers import GenerationConfig

        model, tokenizer = self.model, self.tokenizer
        eos = tokenizer.eos_token_id
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
        device = next(model.parameters()).device
        # a chat template ends a turn with EOS; the plain template's next `Instruction:` line is what ends one there
        stops = [] if uses_chat_template(self.fmt, tokenizer) else stop_strings(self.fmt)
        config = GenerationConfig(
            max_new_tokens=sampling.max_new_tokens,
            do_sample=sampling.do_sample,
            temperature=sampling.temperature if sampling.do_sample else None,
            top_p=sampling.top_p if sampling.do_sample else None,
            top_k=None,
            eos_token_id=eos,
            pad_token_id=pad,
            stop_strings=stops or None,
            return_dict_in_generate=True,
        )
        results: list[Generation] = []
        was_training = model.training
        model.eval()
        for batch_index, start in enumerate(range(0, len(prompts), batch_size)):
            chunk = prompts[start : start + batch_size]
            input_ids, attention = left_padded([encode_prompt(tokenizer, p) for p in chunk], pad)
            torch.manual_seed(seed + batch_index)
            rows = self._generate_in_rounds(input_ids.to(device), attention.to(device), config, sampling, stops)
            for row in rows:
                kept, eos_reached = generated_part(row, eos, pad, tokenizer, stops)
                text = tokenizer.decode(kept, skip_special_tokens=True, clean_up_tokenization_spaces=False)
                cut = cut_at_markers(text, stops)
                results.append(Generation(cut, len(kept), eos_reached))
            if on_batch is not None:
                on_batch(min(start + batch_size, len(prompts)), len(prompts))
        if was_training:
            model.train()
        return results

    def _generate_in_rounds(
        self, input_ids: Any, attention: Any, config: Any, sampling: SamplingConfig, stops: list[str]
    ) -> list[list[int]]:
        """Each row's generated tokens: `generate` ROUND_TOKENS at a time on the KV cache it returns, rows that
        finished (EOS or a stop marker) dropped from the batch and its cache between rounds.

        One `generate` call keeps computing every row until the longest answer ends; on a CPU, where a batch's
        cost grows with its rows, that is most of the work when answers end at different lengths. Continuing on
        the returned cache (`Cache.batch_select_indices`) recomputes nothing, so greedy answers are the ones a
        single call gives, and sampling draws from the same per-batch seeded stream."""
        import torch

        tokenizer = self.tokenizer
        eos = tokenizer.eos_token_id
        generated: list[list[int]] = [[] for _ in range(input_ids.shape[0])]
        live = list(range(input_ids.shape[0]))
        cache, produced = None, 0
        while live and produced < sampling.max_new_tokens:
            step = min(ROUND_TOKENS, sampling.max_new_tokens - produced)
            round_config = copy.copy(config)
            round_config.max_new_tokens = step
            with torch.no_grad():
                output = self.model.generate(
                    input_ids=input_ids,
                    attention_mask=attention,
                    cache=cache,
                    generation_config=round_config,
                    tokenizer=tokenizer if stops else None,
                )
            new = output.sequences[:, input_ids.shape[1] :]
            produced += new.shape[1]
            still: list[int] = []
            for position, row in enumerate(live):
                generated[row] += new[position].tolist()
                if not self._finished(generated[row], eos, stops):
                    still.append(position)
            if not still:
                break
            if len(still) < len(live):
                keep = torch.tensor(still, dtype=torch.long, device=input_ids.device)
                output.cache.batch_select_indices(keep)
                live = [live[p] for p in still]
                input_ids, attention = output.sequences[keep], attention[keep]
            else:
                input_ids = output.sequences
            attention = torch.cat([attention, attention.new_ones((len(live), new.shape[1]))], dim=1)
            cache = output.cache
        return generated

    def _finished(self, tokens: list[int], eos: int, stops: list[str]) -> bool:
        if eos in tokens:
            return True
        if not stops:
            return False
        text = self.tokenizer.decode(tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        return any(marker in text for marker in stops)

    def completion_logprobs(
        self, prompts: list[str], completions: list[str], batch_size: int = 8
    ) -> list[tuple[float, int]]:
        """Teacher-forced, right-padded batches; the completion's tokens exactly as SFT trains on them."""
        import torch

        model, tokenizer = self.model, self.tokenizer
        device = next(model.parameters()).device
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        results: list[tuple[float, int]] = []
        model.eval()
        for start in range(0, len(prompts), batch_size):
            examples = []
            for prompt, completion in zip(
                prompts[start : start + batch_size], completions[start : start + batch_size], strict=True
            ):
                example = tokenize_pair(tokenizer, prompt, completion, MAX_SCORED_LENGTH)
                if isinstance(example, str):
                    raise ConfigError(f"cannot score a completion ({example}) for prompt {prompt[:60]!r}")
                examples.append(example)
            width = max(len(e.input_ids) for e in examples)
            input_ids = torch.full((len(examples), width), pad, dtype=torch.long)
            labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
            attention = torch.zeros((len(examples), width), dtype=torch.long)
            for row, e in enumerate(examples):
                input_ids[row, : len(e.input_ids)] = torch.tensor(e.input_ids)
                labels[row, : len(e.labels)] = torch.tensor(e.labels)
                attention[row, : len(e.input_ids)] = 1
            with torch.no_grad():
                logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits.float()
            logps = torch.log_softmax(logits[:, :-1], dim=-1)
            targets = labels[:, 1:].to(device)
            mask = targets != IGNORE_INDEX
            gathered = logps.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1) * mask
            for row in range(len(examples)):
                results.append((float(gathered[row].sum()), int(mask[row].sum())))
        return results


# backend name -> factory(loaded model, format): the seam where vLLM or an endpoint-backed judge plugs in
BACKENDS: dict[str, Callable[[Any, FormatConfig], Generator]] = {
    "hf": HFGenerator,
}


def generator(loaded_model: Any, fmt: FormatConfig, backend: str = "hf") -> Generator:
    """The generator of a model loaded by `pipeline.models.loaded`."""
    if backend not in BACKENDS:
        raise ConfigError(f"generation backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    return BACKENDS[backend](loaded_model, fmt)


def left_padded(encoded: list[list[int]], pad: int) -> tuple[Any, Any]:
    """(input_ids, attention_mask) of token id lists padded on the left: every row's last position is its next
    token, as batched generation and the judge's next-token verdict need."""
    import torch

    width = max(len(ids) for ids in encoded)
    input_ids = torch.full((len(encoded), width), pad, dtype=torch.long)
    attention = torch.zeros((len(encoded), width), dtype=torch.long)
    for row, ids in enumerate(encoded):
        input_ids[row, width - len(ids) :] = torch.tensor(ids)
        attention[row, width - len(ids) :] = 1
    return input_ids, attention


def generated_part(row: list[int], eos: int, pad: int, tokenizer: Any, stops: list[str]) -> tuple[list[int], bool]:
    """The tokens a sequence generated and whether it generated EOS itself.

    `generate` fills a finished sequence (at EOS, or at a stop string) with the pad token; when pad == EOS (the
    loader sets that for tokenizers without a pad token) that filling looks like EOS. An EOS that comes after the
    sequence had already produced a stop string is filling, not the model ending its answer."""
    if eos not in row:
        return row, False
    first = row.index(eos)
    if pad == eos and stops:
        before = tokenizer.decode(row[:first], skip_special_tokens=True, clean_up_tokenization_spaces=False)
        if any(marker in before for marker in stops):
            return row[:first], False
    return row[: first + 1], True


def cut_at_markers(text: str, markers: list[str]) -> str:
    """Text up to the first marker (a model starting a new `Instruction:` turn)."""
    positions = [text.find(m) for m in markers if m and m in text]
    return text[: min(positions)] if positions else text
