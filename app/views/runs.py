"""Runs: the table of runs, and one run's stages, progress, curves, memory and errors, refreshed live."""

from datetime import UTC, datetime

import pandas as pd
import streamlit as st
import yaml

from app.charts import CURVE_METRICS, curve_rows, training_curves
from app.dag_view import dag_dot
from app.text import plain
from db import queries
from pipeline.core.configs import KEY_SETTINGS, flatten, migrate_spec, preset
from pipeline.core.durations import elapsed_seconds, human_duration, remaining_seconds
from pipeline.core.errors import AlignlabError, ConfigError
from pipeline.core.prices import Prices, ledger_text, load_prices
from pipeline.core.registry import dependents
from workers import commands, scheduler
from workers.queues import connect

ACTIVE = ("queued", "running")
REFRESH_S = 2


def launch_demo() -> None:
    try:
        run_id = scheduler.submit(preset("tiny-cpu"), connect())
    except AlignlabError as exc:
        st.error(f"Could not queue the demo: {plain(exc)}")
        return
    open_run(run_id)


def open_run(run_id: int) -> None:
    st.query_params["run"] = str(run_id)
    st.rerun()


def matches(row: dict, needle: str) -> bool:
    """The tag filter: any tag or the group containing the text, case folded ("sweep" finds "beta-sweep")."""
    needle = needle.strip().casefold()
    return not needle or any(needle in str(t).casefold() for t in [*row["tags"], row["group"] or ""])


@st.fragment(run_every=REFRESH_S)
def runs_table() -> None:
    status_col, tag_col = st.columns(2)
    status = status_col.selectbox(
        "Status", ["all", "queued", "running", "succeeded", "failed", "cancelled"], key="runs_status"
    )
    tag = tag_col.text_input(
        "Tag or group", key="runs_tag", help="Show only runs with a tag or group containing this text."
    )
    rows = [r for r in queries.list_runs(status=None if status == "all" else status) if matches(r, tag)]
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
                "duration": human_duration(r["duration_s"]),
                "created": f"{r['created_at']:%Y-%m-%d %H:%M}",
            }
            for r in rows
        ]
    )
    st.caption("Click a row to open its run.")
    event = st.dataframe(
        frame,
        key="runs_df",
        hide_index=True,
        width="stretch",
        on_select="rerun",
        selection_mode=["single-row", "single-cell"],  # a click on any cell of a row, or on its row marker
        column_config={"progress": st.column_config.ProgressColumn("progress", min_value=0.0, max_value=1.0)},
    )
    clicked = event.selection.rows or [row for row, _ in event.selection.cells]
    if clicked:
        open_run(rows[clicked[0]]["id"])
    evaluated = {run_id: name for run_id, name in queries.run_choices()}
    chosen_col, go_col = st.columns([3, 1])
    chosen = chosen_col.multiselect(
        "Compare runs",
        [r["id"] for r in rows if r["id"] in evaluated],
        format_func=lambda i: evaluated[i],
        key="runs_to_compare",
        help="Runs with evaluations: Compare shows their settings that differ, metrics along them and curves.",
    )
    if go_col.button("Compare these runs", key="compare_chosen", disabled=not chosen):
        st.session_state["compare_runs"] = chosen
        st.switch_page("views/compare.py")


def stage_rows(detail: dict, now: datetime, prices: Prices) -> pd.DataFrame:
    out = []
    for s in detail["stages"]:
        elapsed = elapsed_seconds(s["started_at"], s["finished_at"], now)
        running = s["status"] == "running"
        left = remaining_seconds(elapsed, s["progress_done"], s["progress_total"]) if running else None
        out.append(
            {
                "stage": s["node"],
                "status": s["status"],
                "attempt": s["attempt"],
                "progress": 1.0
                if s["status"] in queries.DONE
                else (s["progress_done"] / s["progress_total"] if s["progress_total"] else 0.0),
                "time": human_duration(elapsed),
                "left (estimate)": human_duration(left) if left is not None else ("unknown" if running else ""),
                "peak memory": f"{s['peak_memory_bytes'] / 2**20:,.1f} MiB" if s["peak_memory_bytes"] else "",
                "device": s["device"] or "",
                "cost": ""
                if s["charged_seconds"] is None
                else ("no price" if s["cost"] is None else prices.money(s["cost"])),
                "result from run": s["made_by_run"] if s["made_by_run"] not in (None, detail["id"]) else "",
                "error": s["error"] or "",
            }
        )
    return pd.DataFrame(out)


def load_rows(detail: dict) -> pd.DataFrame:
    def cell(info: dict, key: str) -> str:
        value = info.get(key)
        if key == "load_seconds" and value is not None:
            return human_duration(value)
        if key == "parameter_count" and value is not None:
            return f"{value / 1e6:,.1f} M"
        return "" if value in (None, False) else str(value)

    columns = {
        "device": "device",
        "dtype": "dtype",
        "quantization": "quantization",
        "fallback": "fallback",
        "parameter_count": "parameters",
        "load_seconds": "load time",
    }
    return pd.DataFrame(
        [
            {"stage": s["node"], **{title: cell(s["load_info"], key) for key, title in columns.items()}}
            for s in detail["stages"]
            if s["load_info"]
        ]
    )


@st.fragment(run_every=REFRESH_S)
def live_run(run_id: int, smoothing: float) -> None:
    """Everything that changes while a run runs: status, stages, the DAG, logs, curves and how models were loaded."""
    detail = queries.run_detail(run_id)
    now = datetime.now(UTC)
    started = [s["started_at"] for s in detail["stages"] if s["started_at"]]
    st.subheader(f"Run {plain(run_id)} · {plain(detail['name'])} · {plain(detail['status'])}")
    if started and detail["status"] in ACTIVE:
        st.caption(f"running for {plain(human_duration(elapsed_seconds(min(started), None, now)))}")
    if detail["error"]:
        st.error(f"{plain(detail['error'])}")
    try:
        prices = load_prices()
    except ConfigError as exc:
        st.error(plain(str(exc)))
        prices = Prices()
    stages = stage_rows(detail, now, prices)
    st.text(f"Cost: {ledger_text(detail['stages'], prices)}")
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
    curves = curve_rows(queries.metric_curves(run_id, CURVE_METRICS), smoothing)
    if not curves.empty:
        st.subheader("Training curves")
        st.altair_chart(training_curves(curves, smoothing), key="curves")
    loads = load_rows(detail)
    if not loads.empty:
        st.subheader("How each model was loaded")
        st.dataframe(loads, hide_index=True, key="loads_df")
    if detail["status"] not in ACTIVE and st.session_state.get(f"was_active_{run_id}"):
        st.session_state[f"was_active_{run_id}"] = False
        st.rerun()  # the actions below the fragment change when the run ends
    st.session_state[f"was_active_{run_id}"] = detail["status"] in ACTIVE


def replan(run_id: int, what: str, call) -> None:
    """A resume or retry; what it re-enqueued and what it left running is said on the next render."""
    try:
        st.session_state["run_action_result"] = f"Run {run_id}: {call()}"
    except AlignlabError as exc:
        st.error(f"Could not {plain(what)}: {plain(exc)}")
    else:
        st.rerun()


def cancel_with_confirmation(run_id: int, detail: dict) -> None:
    asked = f"cancel_asked_{run_id}"
    if not st.session_state.get(asked):
        if st.button("Cancel run", key="cancel"):  # asks first, below
            st.session_state[asked] = True
            st.rerun()
        return
    unfinished = [s["node"] for s in detail["stages"] if s["status"] in ACTIVE]
    st.warning(
        f"Cancel run {plain(run_id)}? The running stage stops at its next step and {len(unfinished)} unfinished stages "
        "are marked cancelled. Finished stages and checkpoints are kept: Resume continues from them."
    )
    yes, no = st.columns(2)
    if yes.button("Yes, cancel the run", key="cancel_confirm", type="primary"):
        st.session_state[asked] = False
        commands.cancel(run_id, connect())
        st.rerun()
    if no.button("No, keep it", key="cancel_keep"):
        st.session_state[asked] = False
        st.rerun()


def clone_and_edit(run_id: int) -> None:
    """Launch, started from this run's config with every stage selected, to change and launch as a new run."""
    st.session_state.update(launch_source="earlier run", launch_parent=run_id, launch_dpo_only=False)
    st.switch_page("views/launch.py")


def actions(run_id: int, detail: dict) -> None:
    if detail["status"] in ACTIVE:
        cancel_with_confirmation(run_id, detail)
    statuses = {s["node"]: s["status"] for s in detail["stages"]}
    if detail["status"] in ("failed", "cancelled"):
        again = scheduler.nodes_to_rerun(statuses)
        what = (
            f"Resume re-enqueues {', '.join(again)}; the {len(statuses) - len(again)} finished stages are kept, "
            "and a training stage continues from its last checkpoint."
        )
        st.caption(plain(what))
        if st.button("Resume run", key="resume"):  # what it does is the caption above
            replan(run_id, "resume", lambda: scheduler.resume(run_id, connect()))
    failed = {s["node"]: s["id"] for s in detail["stages"] if s["status"] in ("failed", "cancelled")}
    if failed and detail["status"] not in ACTIVE:
        node_col, button_col = st.columns([1, 3])
        node = node_col.selectbox("Stage", list(failed), key="retry_node", label_visibility="collapsed")
        again = scheduler.nodes_to_rerun(statuses, {node} | dependents(node))
        what = f"Retry re-enqueues {', '.join(again)} (this stage and what depends on it); the rest stays as it is."
        if button_col.button(f"Retry {plain(node)} and what depends on it", key="retry"):
            replan(run_id, "retry", lambda: scheduler.retry(failed[node], connect()))
        st.caption(plain(what))
    if "run_action_result" in st.session_state:
        st.info(plain(st.session_state.pop("run_action_result")))
    if st.button("Clone and edit", key="clone", help="Opens Launch with this run's config, to change and launch."):
        clone_and_edit(run_id)


def config_block(detail: dict) -> None:
    spec = migrate_spec(detail["spec"])
    values = flatten(spec)
    st.subheader("Config")
    st.dataframe(
        pd.DataFrame(
            [{"setting": label, "value": str(values.get(dotted, ""))} for dotted, label in KEY_SETTINGS.items()]
        ),
        hide_index=True,
        key="key_settings_df",
    )
    with st.expander("The whole config (YAML), exactly as the run was launched"):
        st.code(yaml.safe_dump(spec, sort_keys=False), language="yaml")


def run_page(run_id: int) -> None:
    detail = queries.run_detail(run_id)
    if detail is None:
        st.error(f"There is no run {plain(run_id)}. Pick one from the list.")
        if st.button("Back to all runs", key="back"):
            del st.query_params["run"]
            st.rerun()
        return
    if st.button("← all runs", key="back"):
        del st.query_params["run"]
        st.rerun()
    smoothing = st.slider(
        "Curve smoothing", 0.0, 0.95, 0.0, 0.05, key="smoothing", help="Exponential moving average, as TensorBoard's."
    )
    live_run(run_id, smoothing)
    for verdict in queries.previews(run_id, "preflight"):
        st.subheader("Preflight: " + ("GO" if verdict["go"] else "NO-GO"))
        for check in verdict["checklist"]:
            mark = "PASS" if check["passed"] else ("FAIL" if check["required"] else "INFO")
            st.text(f"{mark}  {check['item']}: {check['reason']}")
    actions(run_id, detail)
    config_block(detail)
    with st.form("annotate"):
        tags = st.text_input("Tags (comma-separated)", ", ".join(detail["tags"] or []), key="tags")
        notes = st.text_area("Notes", detail["notes"] or "", key="notes")
        if st.form_submit_button("Save tags and notes"):
            commands.annotate(run_id, tags.split(","), notes)
            st.success("Saved")


selected = st.query_params.get("run")
if selected is None:
    st.title("Runs")
    runs_table()
elif not selected.isdigit():
    st.error(f"'{plain(selected)}' is not a run id.")
else:
    run_page(int(selected))
