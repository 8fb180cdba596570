"""Samples: the four methods' outputs side by side with their stats and flags, and blind A/B judging."""

import json
import random

import pandas as pd
import streamlit as st

from app.judge_panels import verdict_rows
from app.text import plain
from db import queries
from pipeline.core.configs import METHOD_LABELS, METHODS
from pipeline.core.errors import AlignlabError
from pipeline.core.metrics import sample_metrics
from pipeline.core.stats import win_rate
from workers import commands

st.title("Samples")
choices = queries.run_choices()
if not choices:
    st.info("No evaluated run yet: samples appear once a run's evaluate stages finish.")
    st.stop()
labels = dict(choices)
run_id = st.selectbox("Run", list(labels), format_func=labels.get, key="samples_run")
only = st.radio(
    "Prompts",
    queries.SAMPLE_FILTERS,
    horizontal=True,
    key="samples_filter",
    help="flagged: some output shows repetition, no EOS, a length blow-up, a template leak or a refusal; "
    "disagreeing: one method's output is flagged and another's is not, or reviewers picked different winners.",
)
rows = queries.samples_side_by_side(run_id, only=only)
if not rows:
    st.info("No sample matches this filter.")
    st.stop()

GUIDELINES = (
    "Read the prompt, then both answers. Pick the one you would rather receive: correct first, then helpful, then "
    "clear and concise. Tie only when neither is better. The sides are shuffled; the methods stay hidden until you "
    "export. Keys: A, B, T (tie), S (skip)."
)


def outputs(row: dict, methods: list[str]) -> None:
    """One column per method, in METHODS order: its output as text, and its flags."""
    for column, method in zip(st.columns(len(methods)), methods, strict=True):
        sample = row["methods"][method]
        with column:
            st.subheader(METHOD_LABELS[method])
            st.text(sample["generation"] or "(empty)")
            if sample["flags"]:
                st.warning("flags: " + plain(", ".join(sample["flags"])))


side_by_side, blind = st.tabs(["Side by side", "Blind A/B"])
with side_by_side:
    index = st.number_input("Prompt", min_value=1, max_value=len(rows), value=1, step=1, key="prompt_index") - 1
    row = rows[int(index)]
    st.caption(f"Prompt {plain(row['prompt_id'])}")
    st.text(row["prompt"])
    st.caption(
        "Reference (SFT data): the base model's own generated answer, which SFT trained towards; not a gold answer"
    )
    st.text(row["reference"] or "(none)")
    methods = [m for m in METHODS if m in row["methods"]]
    outputs(row, methods)
    judged = queries.judge_verdicts(run_id, row["prompt_id"])
    if judged:
        st.subheader("The judge on this prompt")
        st.dataframe(verdict_rows(judged), hide_index=True, key="judge_verdicts")
    others = [i for i in labels if i != run_id]
    beside = st.selectbox(
        "Beside another run",
        [None, *others],
        format_func=lambda i: "(none)" if i is None else labels[i],
        key="samples_beside",
        help="The same prompt's outputs from a second run (another β, seed or learning rate), under this run's.",
    )
    if beside is not None:
        match = next((r for r in queries.samples_side_by_side(beside) if r["prompt"] == row["prompt"]), None)
        st.subheader(f"The same prompt in run {plain(labels[beside])}")
        if match is None:
            st.info(f"Run {plain(labels[beside])} has no output for this prompt (its held-out prompts differ).")
        else:
            outputs(match, [m for m in METHODS if m in match["methods"]])
    shown = sample_metrics()
    stats = pd.DataFrame(
        {METHOD_LABELS[method]: [row["methods"][method]["stats"].get(m.name) for m in shown] for method in methods},
        index=[m.label for m in shown],
    )
    st.dataframe(stats, key="sample_stats")

with blind:
    st.caption(GUIDELINES)
    ordered = [m for m in METHODS if any(m in r["methods"] for r in rows)]
    pair = st.selectbox(
        "Compare",
        [(a, b) for i, a in enumerate(ordered) for b in ordered[i + 1 :]],
        index=0,
        format_func=lambda p: f"{METHOD_LABELS[p[0]]} vs {METHOD_LABELS[p[1]]}",
        key="ab_pair",
    )
    reviewer = st.text_input("Reviewer", key="reviewer", help="Your name: one judgement per item each.").strip()
    if not reviewer:
        st.info("Enter your name as reviewer to start judging; the queue continues where you left off.")
    else:
        queue = queries.blind_queue(run_id, *pair, reviewer)
        skipped = st.session_state.setdefault("ab_skipped", {}).setdefault(f"{reviewer}:{pair}", [])
        left_now = [item for item in queue["left"] if item["prompt_id"] not in skipped] or queue["left"]
        progress = f"{queue['done']} of {queue['total']} judged by {reviewer}"
        if queue["identical"]:
            progress += f" ({queue['identical']} prompts where both wrote the same text are not offered)"
        st.text(progress)
        if not left_now:
            st.success(f"Nothing left to judge for {plain(reviewer)} on this pair.")
        else:
            item = left_now[0]
            # the order is random but stable for this prompt and pair, and stored with the judgement
            left, right = pair if random.Random(f"{item['prompt_id']}:{pair}").random() < 0.5 else pair[::-1]
            st.caption(f"Prompt {plain(item['prompt_id'])}")
            st.text(item["prompt"])
            col_a, col_b = st.columns(2)
            col_a.subheader("A")
            col_a.text(item["outputs"][left] or "(empty)")
            col_b.subheader("B")
            col_b.text(item["outputs"][right] or "(empty)")
            verdicts = {"A is better": left, "B is better": right, "Tie": "tie"}
            buttons = st.columns(4)
            for column, (label, winner), shortcut in zip(buttons, verdicts.items(), "abt", strict=False):
                if column.button(plain(label), key=f"ab_{shortcut}", shortcut=shortcut):
                    try:
                        commands.record_judgement(run_id, item["prompt_id"], left, right, winner, reviewer)
                    except AlignlabError as exc:
                        st.error(plain(str(exc)))
                    else:
                        st.rerun()
            if buttons[3].button("Skip", key="ab_skip", shortcut="s"):
                skipped.append(item["prompt_id"])
                st.rerun()
    rates = pd.DataFrame([win_rate(counts) for counts in queries.judgement_counts(run_id)])
    if not rates.empty:
        st.subheader("Win rates from judgements")
        st.caption(
            "Win rate of a over b, ties counted half, with a 95% bootstrap CI over judgements. The export holds the "
            "judgements that picked a winner (ties have none)."
        )
        st.dataframe(rates, hide_index=True, key="win_rates")
        pairs = queries.judgements_as_pairs(run_id)
        ties = int(rates["ties"].sum())
        st.download_button(
            f"Export {len(pairs)} judged pairs (JSONL, TRL prompt/chosen/rejected; {plain(ties)} ties left out)",
            "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs),
            file_name=f"judged-pairs-{run_id}.jsonl",
        )
