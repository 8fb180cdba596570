"""Runs: the table of runs, and one run's stages, progress, curves, memory and errors, refreshed live."""

import altair as alt
import pandas as pd
import streamlit as st

from app.dag_view import dag_dot
from db import queries
from pipeline.core.configs import preset
from pipeline.core.errors import AlignlabError
from workers import commands, scheduler
from workers.queues import connect

ACTIVE = ("queued", "running")


def launch_demo() -> None:
    try:
        run_id = scheduler.submit(preset("tiny-cpu"), connect())
    except AlignlabError as exc:
        st.error(f"Could not queue the demo: {exc}")
        return
    st.query_params["run"] = str(run_id)
    st.rerun()


def runs_table() -> None:
    st.title("Runs")
    status_col, tag_col = st.columns(2)
    status = status_col.selectbox(
        "Status", ["all", "queued", "running", "succeeded", "failed", "cancelled"], key="runs_status"
    )
    tag = tag_col.text_input("Tag or group", key="runs_tag", help="Show only runs with this tag or in this group.")
    rows = queries.list_runs(status=None if status == "all" else status)
    if tag.strip():
        rows = [r for r in rows if tag.strip() in r["tags"] or r["group"] == tag.strip()]
    if not rows and (status != "all" or tag.strip()):
        st.info("No run matches these filters.")
        return
    if not rows:
        st.info(
            "No runs yet. Launch the tiny demo (the whole DAG on the offline tiny model, a few minutes on a CPU), "
            "or go to Launch for your own."
        )
        if st.button("Launch the tiny demo", key="launch_demo"):
            launch_demo()
        return
    frame = pd.DataFrame(
        [
            {
                "id": r["id"],
                "name": r["name"],
                "status": r["status"],
                "progress": r["done"] / max(1, r["total"]),
                "base model": r["base_model"],
                "preset": r["preset"],
                "tags": ", ".join(r["tags"]),
                "group": r["group"] or "",
                "duration s": r["duration_s"],
                "created": r["created_at"],
            }
            for r in rows
        ]
    )
    st.dataframe(
        frame,
        key="runs_df",
        hide_index=True,
        width="stretch",
        column_config={"progress": st.column_config.ProgressColumn("progress", min_value=0.0, max_value=1.0)},
    )
    chosen = st.selectbox(
        "Open run",
        [r["id"] for r in rows],
        key="open_run",
        format_func=lambda i: f"{i}: {next(r['name'] for r in rows if r['id'] == i)}",
    )
    if st.button("Open", key="open"):
        st.query_params["run"] = str(chosen)
        st.rerun()


@st.fragment(run_every=2)
def live_stages(run_id: int) -> None:
    detail = queries.run_detail(run_id)
    st.subheader(f"Run {run_id} · {detail['name']} · {detail['status']}")
    if detail["error"]:
        st.error(f"{detail['error']}")
    stages = pd.DataFrame(
        [
            {
                "stage": s["node"],
                "status": s["status"],
                "attempt": s["attempt"],
                "progress": 1.0
                if s["status"] in queries.DONE
                else (s["progress_done"] / s["progress_total"] if s["progress_total"] else 0.0),
                "peak memory MiB": round(s["peak_memory_bytes"] / 2**20, 1) if s["peak_memory_bytes"] else None,
                "device": s["device"],
                "result from run": s["made_by_run"] if s["made_by_run"] not in (None, run_id) else "",
                "error": s["error"] or "",
            }
            for s in detail["stages"]
        ]
    )
    st.graphviz_chart(dag_dot({s["node"]: s["status"] for s in detail["stages"]}), width="stretch")
    st.dataframe(
        stages,
        key="stages_df",
        hide_index=True,
        width="stretch",
        height=35 * (len(stages) + 1) + 3,  # every stage visible without scrolling
        column_config={"progress": st.column_config.ProgressColumn("progress", min_value=0.0, max_value=1.0)},
    )
    for s in detail["stages"]:
        if s["status"] == "running":
            st.progress(s["progress_done"] / max(1, s["progress_total"]), text=f"{s['node']}: {s['progress_message']}")
            st.code(s["log_tail"][-2000:] or "(no log yet)")
    if detail["status"] not in ACTIVE and st.session_state.get(f"was_active_{run_id}"):
        st.session_state[f"was_active_{run_id}"] = False
        st.rerun()  # refresh the parts outside the fragment once the run ends
    st.session_state[f"was_active_{run_id}"] = detail["status"] in ACTIVE


def replan(run_id: int, what: str, call) -> None:
    """A resume or retry; what it re-enqueued and what it left running is said on the next render."""
    try:
        st.session_state["run_action_result"] = f"Run {run_id}: {call()}"
    except (AlignlabError, KeyError) as exc:
        st.error(f"Could not {what}: {exc}")
    else:
        st.rerun()


def run_page(run_id: int) -> None:
    detail = queries.run_detail(run_id)
    if detail is None:
        st.error(f"There is no run {run_id}. Pick one from the list.")
        if st.button("Back to all runs", key="back"):
            del st.query_params["run"]
            st.rerun()
        return
    if st.button("← all runs", key="back"):
        del st.query_params["run"]
        st.rerun()
    live_stages(run_id)
    for verdict in queries.previews(run_id, "preflight"):
        st.subheader("Preflight: " + ("GO" if verdict["go"] else "NO-GO"))
        for check in verdict["checklist"]:
            mark = "PASS" if check["passed"] else ("FAIL" if check["required"] else "INFO")
            st.text(f"{mark}  {check['item']}: {check['reason']}")
    cancel_col, resume_col, retry_col, _ = st.columns([1, 1, 2, 2])
    if detail["status"] in ACTIVE and cancel_col.button("Cancel run", key="cancel"):
        commands.cancel(run_id, connect())
        st.rerun()
    if detail["status"] in ("failed", "cancelled") and resume_col.button("Resume run", key="resume"):
        replan(run_id, "resume", lambda: scheduler.resume(run_id, connect()))
    failed = {s["node"]: s["id"] for s in detail["stages"] if s["status"] in ("failed", "cancelled")}
    if failed and detail["status"] not in ACTIVE:
        node = retry_col.selectbox("Stage", list(failed), key="retry_node", label_visibility="collapsed")
        if retry_col.button(f"Retry {node} and what depends on it", key="retry"):
            replan(run_id, "retry", lambda: scheduler.retry(failed[node], connect()))
    if "run_action_result" in st.session_state:
        st.info(st.session_state.pop("run_action_result"))

    curves = pd.DataFrame(
        queries.metric_curves(
            run_id, ["loss", "rewards/margins", "rewards/accuracies", "rewards/chosen", "rewards/rejected"]
        )
    )
    if not curves.empty:
        st.subheader("Training curves")
        chart = (
            alt.Chart(curves)
            .mark_line()
            .encode(x="step:Q", y="value:Q", color="node:N", tooltip=["node", "step", "value"])
            .properties(height=220)
        )
        st.altair_chart(chart.facet(facet="name:N", columns=2).resolve_scale(y="independent"), key="curves")

    loads = [
        dict(
            stage=s["node"],
            **{
                k: (s["load_info"] or {}).get(k)
                for k in ("device", "dtype", "quantization", "fallback", "parameter_count", "load_seconds")
            },
        )
        for s in detail["stages"]
        if s["load_info"]
    ]
    if loads:
        st.subheader("How each model was loaded")
        st.dataframe(pd.DataFrame(loads), hide_index=True, key="loads_df")

    with st.form("annotate"):
        tags = st.text_input("Tags (comma-separated)", ", ".join(detail["tags"] or []), key="tags")
        notes = st.text_area("Notes", detail["notes"] or "", key="notes")
        if st.form_submit_button("Save tags and notes"):
            commands.annotate(run_id, tags.split(","), notes)
            st.success("Saved")


selected = st.query_params.get("run")
if selected is None:
    runs_table()
elif not selected.isdigit():
    st.error(f"'{selected}' is not a run id.")
else:
    run_page(int(selected))
