"""Launch: a run from a preset, a config file or an earlier run; every field editable and checked before anything is
queued; N seeds as one group; a preflight of the whole DAG at tiny scale."""

import streamlit as st
import yaml

from app.forms import error_field, spec_form
from db import queries
from pipeline.configs import DPO_STAGES, PRESETS, SEED_SCOPES, RunSpec, from_dict, preset, to_dict
from pipeline.errors import AlignlabError, ConfigError
from workers import scheduler
from workers.blobs import MAX_BLOB_BYTES, check_upload, put_blob
from workers.queues import connect

st.title("Launch a run")
errors = st.session_state.setdefault("launch_errors", {})

runs = {r["id"]: r for r in queries.list_runs()}
source_col, import_col = st.columns([2, 1])
with source_col:
    sources = ["preset", "earlier run"] if runs else ["preset"]
    source = st.radio("Start from", sources, horizontal=True, key="launch_source")
    parent_id = None
    if source == "preset":
        chosen = st.selectbox(
            "Preset",
            sorted(PRESETS),
            index=sorted(PRESETS).index("tiny-cpu"),
            key="launch_preset",
            help="Starting values; every field below can be changed.",
        )
        base = to_dict(preset(chosen))
    else:
        parent_id = st.selectbox(
            "Run",
            list(runs),
            format_func=lambda i: f"{i}: {runs[i]['name']} ({runs[i]['status']})",
            key="launch_parent",
            help="Its config fills the form; unchanged stages reuse its artifacts instead of running again.",
        )
        base = queries.run_detail(parent_id)["spec"]
        if st.checkbox(
            "Only the DPO stages (train_dpo, evaluate, compare), reusing this run's SFT data, SFT model and pairs",
            value=True,
            key="launch_dpo_only",
        ):
            base = {**base, "stages": DPO_STAGES}
with import_col:
    uploaded = st.file_uploader("Import a config (YAML or JSON)", type=["yaml", "yml", "json"], key="launch_import")
    dataset = st.file_uploader(
        "Upload instructions (JSONL)",
        type=["jsonl"],
        key="launch_dataset",
        help=f"One JSON object per line with an `instruction` field; at most {MAX_BLOB_BYTES // 2**20} MiB. "
        "Checked here, then sent to the worker through Redis. Larger data: a path on the worker or a hub id.",
    )

if uploaded is not None:
    try:
        base = to_dict(from_dict(RunSpec, yaml.safe_load(uploaded.getvalue().decode("utf-8")) or {}))
        st.success(f"Loaded {uploaded.name}")
    except (ConfigError, yaml.YAMLError, UnicodeDecodeError) as exc:
        st.error(f"{uploaded.name}: {exc}. Fix the file, or start from a preset.")

if dataset is not None:
    try:
        report = check_upload("instructions", dataset.getvalue(), dataset.name, base["data"]["instruction_field"])
        if report.passed:
            base["data"]["instructions"] = put_blob(connect(), dataset.getvalue(), dataset.name)
    except AlignlabError as exc:  # over the size limit, Redis unreachable
        st.error(f"{exc}. Nothing was queued.")
    else:
        if report.passed:
            st.success(f"{dataset.name}: {report.rows_valid} valid instructions, used by this run")
        else:
            st.error(
                f"{dataset.name}: {report.error_rows} of {report.rows_read} rows are invalid, e.g. "
                + "; ".join(f"row {i.row}, field {i.field or '-'}: {i.message}" for i in report.errors[:3])
                + ". Fix the file and upload it again; nothing was queued."
            )

# a new starting point (another preset, run or file) refills the form: drop the widgets' remembered values
signature = yaml.safe_dump(base, sort_keys=True)
if st.session_state.get("launch_base") != signature:
    for key in [k for k in st.session_state if str(k).startswith("form.")]:
        del st.session_state[key]
    st.session_state["launch_base"] = signature

with st.form("launch_form"):
    edited = spec_form(base, errors)
    seeds_col, scope_col = st.columns(2)
    n_seeds = seeds_col.number_input(
        "Seeds",
        min_value=1,
        max_value=32,
        value=1,
        step=1,
        key="launch_seeds",
        help="N > 1 launches N runs as a group.",
    )
    scope = scope_col.selectbox(
        "A seed varies",
        list(SEED_SCOPES),
        key="launch_seed_scope",
        help="training: SFT, DPO and evaluation seeds (the data is shared); everything: every stage's seed.",
    )
    launch_col, preflight_col = st.columns(2)
    submitted = launch_col.form_submit_button("Launch", type="primary")
    preflight = preflight_col.form_submit_button(
        "Preflight", help="The whole DAG on this model at tiny scale (a few prompts, two steps) before a long run."
    )

st.download_button("Export this config as YAML", yaml.safe_dump(edited, sort_keys=False), file_name="run.yaml")

if submitted or preflight:
    st.session_state["launch_errors"] = {}
    try:
        spec = from_dict(RunSpec, edited)
    except ConfigError as exc:
        st.session_state["launch_errors"] = {error_field(str(exc)): str(exc)}
        st.rerun()
    try:
        if preflight:
            run_ids = [scheduler.submit_preflight(spec, connect())]
        elif n_seeds > 1:
            first = spec.sft.seed
            seeds = list(range(first, first + int(n_seeds)))
            run_ids = scheduler.submit_seeds(spec, seeds, connect(), scope=scope, parent_id=parent_id)
        else:
            run_ids = [scheduler.submit(spec, connect(), parent_id=parent_id)]
    except ConfigError as exc:  # e.g. a path outside the allowed roots: shown on its field
        st.session_state["launch_errors"] = {error_field(str(exc)): str(exc)}
        st.rerun()
    except AlignlabError as exc:
        st.error(f"Could not queue the run: {exc}")
    else:
        st.switch_page("views/runs.py", query_params={"run": str(run_ids[0])})

if "_form" in errors:
    st.error(errors["_form"])
