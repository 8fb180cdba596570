"""Data: every hand-off's validation report, record browsers and the token-mask viewer, all from the database."""

import html

import pandas as pd
import streamlit as st

from app.text import plain
from db import queries
from pipeline.core.errors import AlignlabError
from pipeline.validation import FILE_KINDS
from workers.blobs import check_upload

st.title("Data and validation")

with st.expander("Check a file before you launch", expanded=False):
    kind = st.selectbox("Kind", FILE_KINDS, key="check_kind", help="What the file holds; the same checks as the run.")
    upload = st.file_uploader("JSONL file", type=["jsonl"], key="check_file")
    try:
        report = check_upload(kind, upload.getvalue(), upload.name) if upload is not None else None
    except AlignlabError as exc:  # over the upload limit
        st.error(plain(str(exc)))
        report = None
    if report is not None:
        summary = f"{upload.name}: {report.rows_valid} of {report.rows_read} rows valid"
        if report.passed:
            st.success(plain(summary) + (f", {len(report.warnings)} warnings" if report.warnings else ""))
        else:
            first = report.errors[0]
            where = f"row {first.row}, field {first.field or '-'}" if first.row else "the whole file"
            st.error(
                f"{plain(summary)}. First error at {plain(where)}: {plain(first.message)}. "
                "Fix the file and check it again."
            )
        if report.issues:
            st.dataframe(
                pd.DataFrame(
                    [{k: getattr(i, k) for k in ("row", "field", "code", "severity", "message")} for i in report.issues]
                ),
                hide_index=True,
                key="check_issues",
            )

runs = queries.list_runs()
if not runs:
    st.info("No runs yet. Launch one from the Launch page.")
    st.stop()
run_id = st.selectbox(
    "Run",
    [r["id"] for r in runs],
    format_func=lambda i: f"{i}: {next(r['name'] for r in runs if r['id'] == i)}",
    key="data_run",
)
reports = queries.validation_reports(run_id)
st.header("Validation reports")
if not reports:
    st.info("No report yet: the first stage reports when it reads its input.")
for n, report in enumerate(reports):
    verdict = "passed" if report["passed"] else "FAILED"
    with st.expander(
        f"{plain(report['kind'])} · {plain(verdict)} · "
        f"{plain(report['rows_valid'])}/{plain(report['rows_read'])} rows valid · "
        f"{plain(report['n_errors'])} errors · {plain(report['n_warnings'])} warnings · "
        f"checked by {plain(', '.join(report['checked_by']))}",
        expanded=not report["passed"],
    ):
        st.text(f"File: {report['source']}")
        issues = pd.DataFrame(report["issues"])
        if not issues.empty:
            codes = st.multiselect("Codes", sorted(issues["code"].unique()), key=f"codes_{n}")
            if codes:
                issues = issues[issues["code"].isin(codes)]
            st.dataframe(issues, hide_index=True, key=f"issues_{n}")
        if report["stats"].get("negative_types"):
            st.bar_chart(pd.Series(report["stats"]["negative_types"], name="pairs"))
        histograms = {
            name: stat["histogram"]
            for name, stat in report["stats"].items()
            if isinstance(stat, dict) and stat.get("histogram")
        }
        for name, histogram in histograms.items():
            st.caption(f"{plain(name)}: rows per length bucket (bucket start)")
            frame = pd.DataFrame({"length from": [int(k) for k in histogram], "rows": list(histogram.values())})
            st.bar_chart(frame, x="length from", y="rows")
        st.json(report["stats"], expanded=False)

st.header("Records")
kind = st.selectbox("Show", ["sft_records", "negatives", "train_pairs", "heldout_pairs"], key="records_kind")
records = queries.previews(run_id, kind)
total = queries.records_total(run_id, kind)
if records:
    st.caption(
        f"The first {len(records)} of {plain(total)} rows" if total is not None else f"{len(records)} rows (a preview)"
    )
else:
    st.caption("No rows yet: the stage that makes them has not finished.")
if records:
    frame = pd.DataFrame(records)
    if "negative_type" in frame:
        types = st.multiselect("Negative types", sorted(frame["negative_type"].dropna().unique()), key="neg_types")
        if types:
            frame = frame[frame["negative_type"].isin(types)]
    st.dataframe(frame.astype(str), hide_index=True, key="records_df")

st.header("Token-mask viewer")
examples = queries.previews(run_id, "mask_examples")
if not examples:
    st.info("train_sft sends token-mask examples once its masking check passed.")
else:
    chosen = st.selectbox("Example", list(range(len(examples))), key="mask_example")
    tokens = examples[chosen]["tokens"]
    spans = "".join(
        f"<span style='background:{'#b7e4c7' if t['trained'] else '#e9ecef'};border:1px solid #ccc;margin:1px;"
        f"padding:0 2px;white-space:pre-wrap'>{html.escape(t['token'])}</span>"
        for t in tokens
    )
    st.markdown("Green tokens are trained (completion + EOS), grey are masked (prompt).")
    st.html(f"<div style='font-family:monospace;line-height:2'>{spans}</div>")
    st.caption(f"{sum(t['trained'] for t in tokens)} trained of {len(tokens)} tokens")
