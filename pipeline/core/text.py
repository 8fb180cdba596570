"""Measures of a text that need no model: words, distinct n-grams, repetition, refusals, template leaks and
correctness against a reference answer (SQuAD's exact match and token F1). Pure Python."""

from __future__ import annotations

import re
from collections import Counter

REFUSAL_PATTERNS = re.compile(
    r"\b(i('m| am) sorry|i can(no|')t (help|assist|do)|i cannot|i won't|i will not|as an ai|i'm unable|i am unable"
    r"|i must decline)\b",
    re.IGNORECASE,
)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_text(text: str) -> str:
    """Case and spacing folded: the form in which two texts count as the same."""
    return " ".join(text.casefold().split())


def same_text(a: str, b: str) -> bool:
    """Whether two texts are the same once case and spacing are folded (two outputs with nothing to choose)."""
    return normalize_text(a) == normalize_text(b)


def words(text: str) -> list[str]:
    return re.findall(r"\w+|[^\w\s]", text.lower())


def distinct_n(text: str, n: int) -> float:
    """Unique n-grams / all n-grams of the words (1.0 for text too short to have one)."""
    tokens = words(text)
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 1.0


def repeated_ngram_fraction(text: str, n: int = 3) -> float:
    """Share of word n-grams that repeat an earlier one: 0 for varied text, near 1 for loops."""
    return 1.0 - distinct_n(text, n)


def longest_run(text: str) -> int:
    """Longest run of the same word repeated back to back."""
    tokens = words(text)
    best = run = 1 if tokens else 0
    for previous, current in zip(tokens, tokens[1:], strict=False):
        run = run + 1 if current == previous else 1
        best = max(best, run)
    return best


def is_refusal(text: str) -> bool:
    return bool(REFUSAL_PATTERNS.search(text))


TEMPLATE_MAX_CHARS = 4000


def template_parts(template: str) -> tuple[str, str]:
    """The literal text before and after the template's one `{instruction}` placeholder (`{{`/`}}` unescaped).

    A template is exactly one bare `{instruction}` and literal text: no other field, no format spec (`{instruction:>
    999999999}` would pad every prompt to gigabytes), no conversion (`!r`), no attribute or index. Raises ValueError
    saying which rule it breaks. Rendering never calls `str.format` on a template, so nothing in one can be evaluated.
    """
    import string

    if len(template) > TEMPLATE_MAX_CHARS:
        raise ValueError(f"is {len(template)} characters long; a prompt template may have at most {TEMPLATE_MAX_CHARS}")
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"has unbalanced braces ({exc}); write a literal brace as {{{{ or }}}}") from None
    fields = [(name, spec, conversion) for _, name, spec, conversion in parsed if name is not None]
    if [name for name, _, _ in fields] != ["instruction"]:
        named = ", ".join("{" + name + "}" for name, _, _ in fields) or "none"
        raise ValueError(
            f"must contain the placeholder {{instruction}} exactly once and no other (found: {named}); "
            "write a literal brace as {{ or }}"
        )
    _, spec, conversion = fields[0]
    if spec or conversion:
        raise ValueError("{instruction} must be bare: no format spec (:...) and no conversion (!r, !s, !a)")
    at = next(i for i, (_, name, _, _) in enumerate(parsed) if name is not None)
    head = "".join(literal for literal, *_ in parsed[: at + 1])
    tail = "".join(literal for literal, *_ in parsed[at + 1 :])
    return head, tail


def render_template(template: str, instruction: str) -> str:
    """The prompt for one instruction: the template's literal text around it, nothing formatted or padded."""
    head, tail = template_parts(template)
    return head + instruction + tail


def template_markers(template: str) -> list[str]:
    """The template's literal parts (e.g. `Instruction:` and `Response:`): they must not appear in a response."""
    return [part.strip() for part in template_parts(template) if part.strip()]


def has_template_leak(text: str, template: str) -> bool:
    return any(marker in text for marker in template_markers(template))


def answer_tokens(text: str) -> list[str]:
    """SQuAD's answer normalisation: lower case, punctuation and articles dropped, words split on spaces."""
    text = re.sub(r"[^\w\s]", " ", text.casefold())
    return _ARTICLES.sub(" ", text).split()


def correctness(generation: str, reference: str) -> dict[str, float]:
    """Exact match after normalisation, and token F1 (SQuAD), of a generation against a reference answer."""
    predicted, gold = answer_tokens(generation), answer_tokens(reference)
    common = sum((Counter(predicted) & Counter(gold)).values())
    if common == 0:
        f1 = float(predicted == gold)  # both empty: a match
    else:
        precision, recall = common / len(predicted), common / len(gold)
        f1 = 2 * precision * recall / (precision + recall)
    return {"exact_match": float(predicted == gold), "token_f1": round(f1, 6)}
