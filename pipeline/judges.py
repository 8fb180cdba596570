"""Judges of pairs of answers, and reward models that score one answer: the models behind the `judge` stage.

A pairwise judge reads one fixed prompt (`JUDGE_PROMPT`: the instruction, response A, response B) and says which slot
is better. Two kinds, registered in `JUDGES`:

- `ModelJudge`: a local Hugging Face causal LM, loaded through `pipeline.models.loaded` like every model. Its verdict
  is read from its next-token probabilities of the two labels (A, B) after the prompt, never parsed from free text;
  prompts are batched (both orders of an item in the same batch), and only the last position's logits are computed.
- `EndpointJudge`: an OpenAI-compatible endpoint (vLLM on the pod, or a hosted API) through the `openai` client. The
  key is read from the worker's environment variable named in the config, only for an endpoint the worker declared
  with that variable (`ALIGNLAB_JUDGE_ENDPOINTS`), and goes nowhere else; requests are
  bounded (tokens, timeout), retried with backoff by the client, and cached on the worker's disk by (judge, prompt)
  so a resumed stage does not pay twice. An answer that names neither label is kept as unparsed, never dropped.

`RewardScorer` scores one (prompt, answer) with an `AutoModelForSequenceClassification` reward model.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pipeline.core.configs import FormatConfig, JudgeConfig
from pipeline.core.errors import ConfigError, ModelLoadError
from pipeline.core.judging import SlotVerdict
from pipeline.formats import encode_prompt, render_prompt
from pipeline.generation import left_padded

BatchFn = Callable[[int, int], None]  # (done, total)
PROMPT_VERSION = "judge-prompt-v1"  # part of every cache key: a changed prompt is a new judge
LABELS = ("A", "B")
JUDGE_PROMPT = (
    "Compare two responses to the same instruction and decide which one follows it better: more helpful, more "
    "correct, more relevant. Neither the order of the responses nor their length should decide.\n\n"
    "### Instruction\n{instruction}\n\n### Response A\n{first}\n\n### Response B\n{second}\n\n"
    "Which response is better? Answer with the single letter A or B."
)
_CHOICE = re.compile(r"^\W*(?:response\s+)?([AB])\b", re.IGNORECASE)


@dataclass(frozen=True)
class JudgeItem:
    """One order of one pair: `first` is shown as response A, `second` as response B."""

    prompt: str
    first: str
    second: str


def judge_text(item: JudgeItem, max_chars: int) -> str:
    """The judge's prompt for one item; each response cut at `max_chars` characters (bounded requests)."""
    return JUDGE_PROMPT.format(instruction=item.prompt, first=item.first[:max_chars], second=item.second[:max_chars])


def parse_choice(answer: str) -> str | None:
    """The slot ("1" for A, "2" for B) a free-text answer names first, or None when it names neither."""
    match = _CHOICE.match(answer or "")
    if not match:
        return None
    return "1" if match.group(1).upper() == "A" else "2"


class Judge(Protocol):
    name: str  # what the records call it (model id, or endpoint model @ host)

    def judge(self, items: list[JudgeItem], on_batch: BatchFn | None = None) -> list[SlotVerdict]:
        """One verdict per item, in order."""
        ...


# ----------------------------------------------------------------------------------------------- local model


class ModelJudge:
    """A loaded causal LM as a judge: P(A) / (P(A) + P(B)) of its next token after the judge prompt."""

    def __init__(self, source: Any, config: JudgeConfig):
        self.source, self.config = source, config  # the `loaded(...)` holder: the model is freed when its block ends
        self.name = config.model.name_or_path
        self.tokens = 0  # prompt tokens read (the bench's judge tokens/s)

    def judge(self, items: list[JudgeItem], on_batch: BatchFn | None = None) -> list[SlotVerdict]:
        texts = [judge_text(item, self.config.max_response_chars) for item in items]
        return [
            SlotVerdict("1" if p_first >= 0.5 else "2", p_first)
            for p_first in self.first_slot_probabilities(texts, on_batch)
        ]

    def first_slot_probabilities(self, texts: list[str], on_batch: BatchFn | None = None) -> list[float]:
        """P(A) / (P(A) + P(B)) of the next token after each judge prompt (rendered with the judge's chat template),
        in batches of `batch_size`, left-padded so that every row's last position is its next token."""
        import torch

        if not texts:
            return []
        model, tokenizer = self.source.model, self.source.tokenizer
        rendered = [render_prompt(text, FormatConfig(), tokenizer) for text in texts]
        encoded = [encode_prompt(tokenizer, text) for text in rendered]
        label_a, label_b = label_ids(tokenizer, rendered[0], encoded[0])
        device = next(model.parameters()).device
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        probabilities: list[float] = []
        size = self.config.batch_size
        for start in range(0, len(encoded), size):
            input_ids, attention = left_padded(encoded[start : start + size], pad)
            with torch.no_grad():  # only the last position's logits: the vocabulary projection of one token per row
                logits = (
                    model(input_ids=input_ids.to(device), attention_mask=attention.to(device), logits_to_keep=1)
                    .logits[:, -1]
                    .float()
                )
            probabilities += torch.softmax(logits[:, [label_a, label_b]], dim=-1)[:, 0].tolist()
            self.tokens += int(attention.sum())
            if on_batch is not None:
                on_batch(min(start + size, len(encoded)), len(encoded))
        return probabilities


def label_ids(tokenizer: Any, text: str, ids: list[int]) -> tuple[int, int]:
    """The token each label starts with when it follows the prompt (tokenised in context, so a plain template's
    trailing space merges as it would when the model writes the label)."""
    found = []
    for label in LABELS:
        full = encode_prompt(tokenizer, text + label)
        if full[: len(ids)] != ids or len(full) == len(ids):
            raise ModelLoadError(
                f"judge: the label {label!r} does not tokenise after the judge prompt; use another judge"
            )
        found.append(full[len(ids)])
    if found[0] == found[1]:
        raise ModelLoadError("judge: the labels A and B start with the same token for this tokenizer")
    return found[0], found[1]


# ----------------------------------------------------------------------------------------------- endpoint


class AnswerCache:
    """(judge, prompt) -> raw answer on the worker's disk, one JSON line per answer, written as answers arrive."""

    def __init__(self, path: Path):
        self.path = path
        self.lock = threading.Lock()
        self.answers: dict[str, dict[str, Any]] = {}
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:  # a line cut by a kill mid-write: that answer is asked again
                    continue
                self.answers[row["key"]] = row

    def get(self, key: str) -> dict[str, Any] | None:
        return self.answers.get(key)

    def put(self, key: str, row: dict[str, Any]) -> None:
        with self.lock:
            self.answers[key] = {"key": key, **row}
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(self.answers[key]) + "\n")


ENDPOINTS_VAR = "ALIGNLAB_JUDGE_ENDPOINTS"


def declared_endpoints() -> dict[str, str]:
    """The endpoints this worker may send a key to, from its own environment: `ALIGNLAB_JUDGE_ENDPOINTS` holds
    comma-separated `URL=VARIABLE` entries (the base URL, and the variable holding its key)."""
    declared = {}
    for entry in os.environ.get(ENDPOINTS_VAR, "").split(","):
        url, _, variable = entry.strip().rpartition("=")
        if url and variable:
            declared[url.rstrip("/")] = variable
    return declared


def endpoint_api_key(config: JudgeConfig) -> str:
    """The key from the worker's environment (never from a config, a job or the database), for an endpoint the
    worker itself declared with that key: whoever can submit a run chooses the URL and the variable's name, and must
    not be able to have the worker send any of its secrets (HF_TOKEN, a RunPod key) to a host of theirs."""
    url = config.endpoint_url.rstrip("/")
    if declared_endpoints().get(url) != config.api_key_env:
        raise ConfigError(
            f"JudgeConfig.endpoint_url: this worker has not declared {url} with the key in {config.api_key_env}; "
            f"add '{url}={config.api_key_env}' to {ENDPOINTS_VAR} (comma-separated URL=VARIABLE entries) in the "
            "worker's environment to allow it"
        )
    key = os.environ.get(config.api_key_env, "")
    if not key:
        raise ConfigError(
            f"JudgeConfig.api_key_env: the worker's environment has no {config.api_key_env}; set it where the worker "
            "runs (a local server that takes any key still needs one: e.g. EMPTY)"
        )
    return key


class EndpointJudge:
    """An OpenAI-compatible chat endpoint as a judge, its answers cached by (judge, prompt)."""

    def __init__(self, config: JudgeConfig, cache_dir: Path):
        from openai import OpenAI

        self.config = config
        host = re.sub(r"^https?://", "", config.endpoint_url).split("/")[0]
        self.name = f"{config.endpoint_model} @ {host}"
        identity = "|".join((config.endpoint_url, config.endpoint_model, PROMPT_VERSION, str(config.max_answer_tokens)))
        self.identity = hashlib.sha256(identity.encode()).hexdigest()
        self.cache = AnswerCache(cache_dir / f"{self.identity[:24]}.jsonl")
        self.client = OpenAI(
            base_url=config.endpoint_url,
            api_key=endpoint_api_key(config),
            max_retries=config.max_retries,
            timeout=config.request_timeout_s,
        )
        self.requests = 0  # answers fetched from the endpoint (not from the cache)

    def _answer(self, item: JudgeItem) -> dict[str, Any]:
        text = judge_text(item, self.config.max_response_chars)
        key = hashlib.sha256(f"{self.identity}\x00{text}".encode()).hexdigest()
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        from openai import OpenAIError

        try:
            response = self.client.chat.completions.create(
                model=self.config.endpoint_model,
                messages=[{"role": "user", "content": text}],
                max_tokens=self.config.max_answer_tokens,
                temperature=0.0,
                logprobs=True,
                top_logprobs=5,
            )
        except OpenAIError as exc:  # retries spent: the stage fails; answers so far stay cached for the resume
            raise ModelLoadError(f"judge endpoint {self.name}: {type(exc).__name__}: {exc}") from None
        choice = response.choices[0]
        row = {"answer": choice.message.content or "", "p_first": _label_probability(choice)}
        self.requests += 1
        self.cache.put(key, row)
        return row

    def judge(self, items: list[JudgeItem], on_batch: BatchFn | None = None) -> list[SlotVerdict]:
        done = 0
        verdicts: list[SlotVerdict] = []
        with ThreadPoolExecutor(max_workers=self.config.concurrency) as pool:
            for row in pool.map(self._answer, items):
                choice = parse_choice(row["answer"])
                p_first = row["p_first"] if choice is not None else None
                verdicts.append(SlotVerdict(choice, p_first, row["answer"][:200]))
                done += 1
                if on_batch is not None and (done % self.config.batch_size == 0 or done == len(items)):
                    on_batch(done, len(items))
        return verdicts


def _label_probability(choice: Any) -> float | None:
    """P(A) / (P(A) + P(B)) from the first answer token's top log-probs, where the endpoint returns them."""
    import math

    content = getattr(getattr(choice, "logprobs", None), "content", None)
    if not content:
        return None
    probabilities = {label: 0.0 for label in LABELS}
    for top in content[0].top_logprobs or []:
        label = top.token.strip().upper()
        if label in probabilities:
            probabilities[label] += math.exp(top.logprob)
    total = sum(probabilities.values())
    return probabilities["A"] / total if total > 0 else None


# ----------------------------------------------------------------------------------------------- reward model


class RewardScorer:
    """An `AutoModelForSequenceClassification` reward model: one score per (prompt, answer), batched."""

    def __init__(self, source: Any, config: JudgeConfig):
        self.source, self.config = source, config
        self.name = config.model.name_or_path
        self.tokens = 0

    def text(self, prompt: str, answer: str) -> str:
        tokenizer = self.source.tokenizer
        if getattr(tokenizer, "chat_template", None):
            turns = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
            return tokenizer.apply_chat_template(turns, tokenize=False)
        return f"{prompt}\n\n{answer}"

    def score(self, prompts: list[str], answers: list[str], on_batch: BatchFn | None = None) -> list[float]:
        import torch

        model, tokenizer = self.source.model, self.source.tokenizer
        device = next(model.parameters()).device
        if model.config.pad_token_id is None:  # the head reads each row's last non-pad token
            model.config.pad_token_id = tokenizer.pad_token_id
        scores: list[float] = []
        size = self.config.batch_size
        for start in range(0, len(prompts), size):
            texts = [
                self.text(p, a[: self.config.max_response_chars])
                for p, a in zip(prompts[start : start + size], answers[start : start + size], strict=True)
            ]
            batch = tokenizer(texts, padding=True, truncation=True, max_length=4096, return_tensors="pt")
            batch = {k: v.to(device) for k, v in batch.items()}
            with torch.no_grad():
                logits = model(**batch).logits.float()
            if logits.shape[-1] != 1:
                raise ModelLoadError(
                    f"reward model {self.name}: its head has {logits.shape[-1]} outputs; a reward model has one"
                )
            scores += logits[:, 0].tolist()
            self.tokens += int(batch["attention_mask"].sum())
            if on_batch is not None:
                on_batch(min(start + size, len(prompts)), len(prompts))
        return scores


# kind -> how the stage builds its pairwise judge (the reward model is no pairwise judge: `RewardScorer`)
JUDGES: dict[str, Callable[..., Judge]] = {"model": ModelJudge, "endpoint": EndpointJudge}
