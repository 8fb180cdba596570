"""Compare: base / SFT / SFT→DPO / DPO-only with 95% CIs, paired differences, per-type breakdown, parity, go/no-go."""

import altair as alt
import pandas as pd
import streamlit as st

from db import queries

st.title("Compare methods")
choices = queries.run_choices()
if not choices:
    st.info("No evaluated run yet: a run needs its evaluate and compare stages. Launch one from the Launch page.")
    st.stop()
labels = dict(choices)
run_ids = st.multiselect("Runs", list(labels), default=[choices[0][0]], format_func=labels.get, key="compare_runs")
if not run_ids:
    st.stop()

matrix = pd.DataFrame(queries.comparison_matrix(run_ids))
metric = st.selectbox(
    "Metric",
    sorted(matrix["metric"].unique()),
    index=sorted(matrix["metric"].unique()).index("preference_accuracy")
    if "preference_accuracy" in set(matrix["metric"])
    else 0,
    key="compare_metric",
)
table = matrix[matrix["metric"] == metric].copy()
table["95% CI"] = table.apply(
    lambda r: "–" if pd.isna(r["ci_low"]) else f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}]", axis=1
)
st.dataframe(table[["run", "method", "value", "95% CI", "n"]], hide_index=True, key="compare_table")
bars = alt.Chart(table).mark_point(filled=True, size=80).encode(x="value:Q", y="method:N", color="run:N")
errors = alt.Chart(table).mark_rule().encode(x="ci_low:Q", x2="ci_high:Q", y="method:N", color="run:N")
st.altair_chart(errors + bars, key="compare_chart")

for run_id in run_ids:
    verdict = (queries.previews(run_id, "verdict") or [None])[0]
    differences = pd.DataFrame(queries.previews(run_id, "differences"))
    st.header(labels[run_id])
    if verdict is None:
        st.warning("This run has no compare result yet.")
        continue
    head = verdict.get("headline")
    if head:
        st.markdown(
            f"**Did SFT before DPO help?** Preference accuracy SFT→DPO − DPO-only = {head['mean']:+.3f} "
            f"[{head['ci_low']}, {head['ci_high']}] over {head['n']} held-out pairs, sign test p = "
            f"{head['sign_test_p']}: **{head['verdict']}**"
        )
    if not differences.empty:
        st.subheader("Paired differences (a − b, 95% bootstrap CI)")
        shown = differences[differences["metric"] == metric] if metric in set(differences["metric"]) else differences
        shown = shown.assign(pair=shown["a"] + " − " + shown["b"])
        st.dataframe(
            shown[["pair", "metric", "mean", "ci_low", "ci_high", "wins", "losses", "ties", "sign_test_p", "verdict"]],
            hide_index=True,
            key=f"diff_{run_id}",
        )
        st.altair_chart(
            alt.Chart(shown).mark_rule().encode(x="ci_low:Q", x2="ci_high:Q", y="pair:N")
            + alt.Chart(shown).mark_point(filled=True).encode(x="mean:Q", y="pair:N"),
            key=f"diff_chart_{run_id}",
        )
    parity = verdict["parity"]
    st.subheader("Parity check")
    if parity["fair"]:
        st.success(parity["verdict"])
    else:
        st.error(parity["verdict"])
    only_diff = st.toggle("Differences only", value=True, key=f"parity_diff_{run_id}")
    rows = pd.DataFrame(parity["differences"] if only_diff else parity["all"])
    if not rows.empty:
        st.dataframe(rows.astype(str), hide_index=True, key=f"parity_{run_id}")
    st.subheader("Go / no-go")
    (st.success if verdict["go"] else st.error)("GO" if verdict["go"] else "NO-GO")
    for item in verdict["checklist"]:
        st.markdown(f"{'✅' if item['passed'] else '❌'} **{item['item']}** — {item['reason']}")
