"""Launch: a run from a preset or a config file, every field editable, checked before anything is queued."""

import streamlit as st
import yaml

from app.forms import error_field, spec_form
from pipeline.configs import PRESETS, RunSpec, from_dict, preset, to_dict
from pipeline.errors import AlignlabError, ConfigError
from workers import scheduler
from workers.queues import connect

st.title("Launch a run")
errors = st.session_state.setdefault("launch_errors", {})

left, right = st.columns([2, 1])
with left:
    chosen = st.selectbox(
        "Preset",
        sorted(PRESETS),
        index=sorted(PRESETS).index("tiny-cpu"),
        key="launch_preset",
        help="Starting values; every field below can be changed.",
    )
with right:
    uploaded = st.file_uploader("Import a config (YAML or JSON)", type=["yaml", "yml", "json"], key="launch_import")

base = to_dict(preset(chosen))
if uploaded is not None:
    try:
        base = to_dict(from_dict(RunSpec, yaml.safe_load(uploaded.getvalue().decode("utf-8")) or {}))
        st.success(f"Loaded {uploaded.name}")
    except (ConfigError, yaml.YAMLError, UnicodeDecodeError) as exc:
        st.error(f"{uploaded.name}: {exc}. Fix the file, or start from a preset.")

with st.form("launch_form"):
    edited = spec_form(base, errors)
    submitted = st.form_submit_button("Launch")

st.download_button("Export this config as YAML", yaml.safe_dump(edited, sort_keys=False), file_name="run.yaml")

if submitted:
    st.session_state["launch_errors"] = {}
    try:
        spec = from_dict(RunSpec, edited)
    except ConfigError as exc:
        st.session_state["launch_errors"] = {error_field(str(exc)): str(exc)}
        st.rerun()
    try:
        run_id = scheduler.submit(spec, connect())
    except AlignlabError as exc:
        st.error(f"Could not queue the run: {exc}")
    else:
        st.switch_page("pages/runs.py", query_params={"run": str(run_id)})

if "_form" in errors:
    st.error(errors["_form"])
