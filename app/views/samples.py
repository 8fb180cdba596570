"""Samples: the four methods' outputs side by side with their stats and flags, and blind A/B judging."""

import json
import random

import pandas as pd
import streamlit as st

from db import queries
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

side_by_side, blind = st.tabs(["Side by side", "Blind A/B"])
with side_by_side:
    index = st.number_input("Prompt", min_value=1, max_value=len(rows), value=1, step=1, key="prompt_index") - 1
    row = rows[int(index)]
    st.caption(f"Prompt {row['prompt_id']}")
    st.text(row["prompt"])
    st.caption("Reference (SFT data)")
    st.text(row["reference"] or "(none)")
    columns = st.columns(len(row["methods"]))
    for column, (method, sample) in zip(columns, sorted(row["methods"].items()), strict=True):
        with column:
            st.subheader(method)
            st.text(sample["generation"] or "(empty)")
            stats = sample["stats"]
            if sample["flags"]:
                st.warning("flags: " + ", ".join(sample["flags"]))
            st.caption(
                json.dumps({k: stats.get(k) for k in ("new_tokens", "distinct_2", "repetition", "reference_nll")})
            )

with blind:
    methods = sorted({m for r in rows for m in r["methods"]})
    pair = st.selectbox(
        "Compare",
        [(a, b) for i, a in enumerate(methods) for b in methods[i + 1 :]],
        index=0,
        format_func=lambda p: f"{p[0]} vs {p[1]}",
        key="ab_pair",
    )
    reviewer = st.text_input("Reviewer", key="reviewer")
    queue = [r for r in rows if pair[0] in r["methods"] and pair[1] in r["methods"]]
    position = st.session_state.setdefault("ab_position", 0) % max(1, len(queue))
    item = queue[position]
    # the order is random but stable for this prompt and pair, and stored with the judgement
    left, right = pair if random.Random(f"{item['prompt_id']}:{pair}").random() < 0.5 else pair[::-1]
    st.text(item["prompt"])
    col_a, col_b = st.columns(2)
    col_a.subheader("A")
    col_a.text(item["methods"][left]["generation"] or "(empty)")
    col_b.subheader("B")
    col_b.text(item["methods"][right]["generation"] or "(empty)")
    # a fresh widget per prompt and pair: every prompt starts unanswered
    choice = st.radio(
        "Which is better?", ["A", "B", "tie"], index=None, horizontal=True, key=f"ab_choice_{item['prompt_id']}_{pair}"
    )
    if st.button("Record judgement", key="ab_record", disabled=choice is None):
        winner = {"A": left, "B": right, "tie": "tie"}[choice]
        commands.record_judgement(run_id, item["prompt_id"], left, right, winner, reviewer)
        st.session_state["ab_position"] = position + 1
        st.rerun()
    rates = pd.DataFrame([win_rate(counts) for counts in queries.judgement_counts(run_id)])
    if not rates.empty:
        st.subheader("Win rates from judgements")
        st.caption("Win rate of a over b, ties counted half, with a 95% bootstrap CI over judgements.")
        st.dataframe(rates, hide_index=True, key="win_rates")
        pairs = queries.judgements_as_pairs(run_id)
        st.download_button(
            f"Export {len(pairs)} judged pairs (JSONL, TRL prompt/chosen/rejected)",
            "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs),
            file_name=f"judged-pairs-{run_id}.jsonl",
        )
