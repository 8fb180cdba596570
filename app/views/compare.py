"""Compare: base / SFT / SFT→DPO / DPO-only with 95% CIs, paired differences, per-type breakdown, parity, go/no-go."""

import altair as alt
import pandas as pd
import streamlit as st

from app.charts import CURVE_METRICS, curve_rows, training_curves
from app.judge_panels import compare_section
from app.text import plain
from db import queries
from pipeline.core.intervals import cannot_separate, readable_rows
from pipeline.core.metrics import METRICS
from pipeline.core.stats import ONE_SEED, seed_group_statistics


def metric_title(metric: str) -> str:
    """An axis title for people: the metric's label and unit ("preference accuracy (share)")."""
    declared = METRICS.get(metric)
    return f"{declared.label} ({declared.unit})" if declared else metric


def interval_chart(rows: pd.DataFrame, value: str, y: str, title: str) -> alt.LayerChart:
    """Points with their intervals: a real one as a line, one over too few items dashed, and none drawn where there
    is no interval to draw (zero width, no estimate), its label written beside the point instead."""
    color = alt.Color("run:N") if "run" in rows else alt.value("#1f77b4")
    drawn = rows[rows["interval"].isin(["ok", "few"])]
    rules = (
        alt.Chart(drawn)
        .mark_rule(strokeWidth=2)
        .encode(
            x="ci_low:Q",
            x2="ci_high:Q",
            y=f"{y}:N",
            color=color,
            strokeDash=alt.condition("datum.interval == 'few'", alt.value([4, 3]), alt.value([1, 0])),
        )
    )
    points = (
        alt.Chart(rows)
        .mark_point(filled=True, size=80)
        .encode(x=alt.X(f"{value}:Q", title=title), y=f"{y}:N", color=color, tooltip=[y, value, "95% CI"])
    )
    labels = (
        alt.Chart(rows[~rows["interval"].isin(["ok"])])
        .mark_text(align="left", dx=8, dy=-8, fontSize=11)
        .encode(x=f"{value}:Q", y=f"{y}:N", text="95% CI:N")
    )
    return rules + points + labels


st.title("Compare methods")
choices = queries.run_choices()
if not choices:
    st.info("No evaluated run yet: a run needs its evaluate and compare stages. Launch one from the Launch page.")
    st.stop()
labels = dict(choices)
if "compare_runs" not in st.session_state:  # the newest run, unless the Runs page sent a choice
    st.session_state["compare_runs"] = [choices[0][0]]
run_ids = st.multiselect("Runs", list(labels), format_func=labels.get, key="compare_runs")
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
title = metric_title(metric)
table = pd.DataFrame(readable_rows(matrix[matrix["metric"] == metric].to_dict("records")))
for run_name, of_run in table.groupby("run"):
    reason = cannot_separate(metric, dict(zip(of_run["method"], of_run["value"], strict=True)))
    if reason:
        st.warning(f"{plain(run_name)}: {plain(reason)}")
st.dataframe(table[["run", "method", "value", "95% CI", "n"]], hide_index=True, key="compare_table")
st.altair_chart(interval_chart(table, "value", "method", title), key="compare_chart")

per_type = pd.DataFrame(queries.by_negative_type(run_ids))
if not per_type.empty:
    st.subheader("Preference accuracy by negative type")
    st.caption("Which kinds of rejected answer each method learned to rank below the chosen one (95% CI).")
    points = (
        alt.Chart(per_type)
        .mark_point(filled=True)
        .encode(
            x=alt.X("value:Q", title=metric_title("preference_accuracy")),
            y="method:N",
            color="method:N",
            tooltip=["run", "negative_type", "method", "value", "ci_low", "ci_high", "n"],
        )
    )
    rules = alt.Chart(per_type).mark_rule().encode(x="ci_low:Q", x2="ci_high:Q", y="method:N", color="method:N")
    st.altair_chart(
        (rules + points).facet(row=alt.Row("negative_type:N", title=None), column=alt.Column("run:N", title=None)),
        key="per_type_chart",
    )

if len(run_ids) > 1:
    st.header("Across runs")
    differences = queries.spec_differences(run_ids)
    varying = sorted({field for fields in differences.values() for field in fields})
    if varying:
        st.subheader("Settings that differ")
        st.dataframe(
            pd.DataFrame(
                [{"setting": f, **{labels[i]: str(differences[i].get(f, "")) for i in run_ids}} for f in varying]
            ),
            hide_index=True,
            key="differences_table",
        )
    overlaid = [{**row, "run": labels[i]} for i in run_ids for row in queries.metric_curves(i, CURVE_METRICS)]
    if overlaid:
        st.subheader("Training curves of these runs")
        st.altair_chart(training_curves(curve_rows(overlaid), colour="run"), key="overlay_chart")
    if varying and all(field.endswith(".seed") for field in varying):
        st.subheader("Seed group: these runs differ only in their seeds")
        group = seed_group_statistics(queries.per_prompt_values(run_ids))
        st.text(group["aa"]["text"])
        st.caption(
            "A/A control: each trained method against itself across seeds, tested like two methods; every "
            "'difference' found is a false positive of one run's intervals. Below, SFT→DPO − DPO-only with intervals "
            "that resample seeds and prompts (per-prompt generation metrics; preference metrics need the seeds "
            "report of `alignlab seeds`, which reads every scored pair)."
        )
        st.dataframe(pd.DataFrame(group["headline"]), hide_index=True, key="seed_group_table")
    if not varying:
        st.info("These runs have identical settings (seeds included): their spread is run-to-run noise.")
    else:
        sweep = pd.DataFrame(queries.sweep(run_ids, metric))
        along = st.selectbox(
            "Along",
            varying,
            index=varying.index("dpo.beta") if "dpo.beta" in varying else 0,
            key="sweep_field",
            help="A setting that differs between the chosen runs (a β sweep, seeds, learning rates).",
        )
        numeric = pd.to_numeric(sweep[along], errors="coerce").notna().all()
        # a dotted name ("dpo.beta") is a nested field to Vega-Lite, which then finds no values: plot a plain column
        plotted = sweep.assign(setting=sweep[along])
        x = alt.X(f"setting:{'Q' if numeric else 'N'}", title=along)
        line = alt.Chart(plotted).mark_line(point=True).encode(x=x, y=alt.Y("value:Q", title=title), color="method:N")
        band = alt.Chart(plotted).mark_rule().encode(x=x, y="ci_low:Q", y2="ci_high:Q", color="method:N")
        st.altair_chart(line + band, key="sweep_chart")
        others = [f for f in varying if f != along]
        if others:
            st.caption(f"Also differing between these runs: {plain(', '.join(others))}.")
        spread = sweep.groupby([along, "method"], as_index=False).agg(
            runs=("value", "size"),
            mean=("value", "mean"),
            std=("value", "std"),
            low=("value", "min"),
            high=("value", "max"),
        )
        st.dataframe(spread, hide_index=True, key="sweep_table")

for run_id in run_ids:
    verdict = (queries.previews(run_id, "verdict") or [None])[0]
    differences = pd.DataFrame(queries.previews(run_id, "differences"))
    st.header(plain(labels[run_id]))
    if verdict is None:
        st.warning("This run has no compare result yet.")
        continue
    answer = verdict.get("answer")
    st.subheader("Did SFT before DPO help?")
    if answer:
        st.text(answer["text"])
        st.caption(
            f"Primary metric, named in the config before the run: {plain(answer['metric'])}. Every other difference is "
            f"secondary or descriptive; family correction: {plain(verdict.get('correction'))}. {ONE_SEED}"
        )
    else:
        st.warning("This run's compare result predates the stated answer; rerun compare to get it.")
    if verdict.get("controls"):
        st.subheader("Controls (experiments with a known answer)")
        for control in verdict["controls"]:  # fixed words in colour; the control's own sentence as plain text
            if control["passed"]:
                st.success("PASS: the planted effect was detected")
            else:
                st.error("FAIL: the planted effect was not detected: this run cannot be trusted to see an effect")
            st.text(control["text"])
    for check in (verdict.get("heldout") or {}).get("decontamination", []):
        line = (
            f"Held-out data, {check['stage']}: {check['contaminated']} of {check['heldout_texts']} held-out texts "
            f"found in its training inputs (largest {check['ngram']}-gram overlap {check['max_ngram_overlap']:.0%})"
        )
        if check["passed"]:
            st.text(line + ": leak-free")
        else:
            st.error(plain(line) + ": CONTAMINATED")
    if not differences.empty:
        st.subheader("Paired differences (a − b, 95% bootstrap CI)")
        shown = differences[differences["metric"] == metric] if metric in set(differences["metric"]) else differences
        shown = pd.DataFrame(readable_rows(shown.to_dict("records"), value="mean", n="n_prompts"))
        shown = shown.assign(pair=shown["a"] + " − " + shown["b"])
        st.dataframe(
            shown[
                [
                    c
                    for c in (
                        "pair",
                        "metric",
                        "role",
                        "mean",
                        "95% CI",
                        "n_prompts",
                        "wins",
                        "losses",
                        "ties",
                        "p",
                        "p_adjusted",
                        "sign_test_p",
                        "verdict",
                    )
                    if c in shown
                ]
            ],
            hide_index=True,
            key=f"diff_{run_id}",
        )
        st.altair_chart(interval_chart(shown, "mean", "pair", "a − b (95% CI)"), key=f"diff_chart_{run_id}")
    compare_section(run_id)
    parity = verdict["parity"]
    st.subheader("Parity check")
    if parity["fair"]:
        st.success(plain(parity["verdict"]))
    else:
        st.error(plain(parity["verdict"]))
    only_diff = st.toggle("Differences only", value=True, key=f"parity_diff_{run_id}")
    rows = pd.DataFrame(parity["differences"] if only_diff else parity["all"])
    if not rows.empty:
        st.dataframe(rows.astype(str), hide_index=True, key=f"parity_{run_id}")
    st.subheader("Pipeline health (go / no-go: did the pipeline run as it should; not the answer above)")
    if verdict["go"]:
        st.success("GO: every check passed")
    else:
        st.error("NO-GO: a check failed")
    for item in verdict["checklist"]:
        st.text(f"{'PASS' if item['passed'] else 'FAIL'}  {item['item']}: {item['reason']}")
