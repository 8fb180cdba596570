"""Launch: a run from a preset, a config file or an earlier run; every field editable and checked before anything is
queued; N seeds as one group; a preflight of the whole DAG at tiny scale.

The form is the spec: a starting point (preset, file, earlier run) is written into the widgets once, when it
changes; the widgets are the only state; Launch, the preview and the YAML export all take the dict the widgets
return, so what is shown is what is submitted."""

import hashlib

import pandas as pd
import streamlit as st
import yaml

from app.forms import error_field, fill_form, set_field, spec_form
from app.text import plain
from db import queries
from pipeline.core.configs import (
    PRESETS,
    SEED_SCOPES,
    RunSpec,
    canonical_json,
    config_from_upload,
    flatten,
    from_dict,
    load_stored_spec,
    preset,
    to_dict,
)
from pipeline.core.durations import estimate_cost, estimate_run, scaled_to
from pipeline.core.errors import AlignlabError, ConfigError
from pipeline.core.home import alignlab_home
from pipeline.core.memory_plan import BASE_MODEL, fit_warnings, fitting_queues, plan_rows, read_shapes
from pipeline.core.prices import load_prices
from pipeline.core.registry import selected_nodes, variant_stages_onward
from workers import scheduler
from workers.blobs import MAX_BLOB_BYTES, check_upload, put_blob
from workers.queues import connect


def changes(before: dict, after: dict) -> pd.DataFrame:
    """The settings that differ between two specs, one row each, values as text."""
    old, new = flatten(before), flatten(after)
    return pd.DataFrame(
        [
            {"setting": dotted, "that run": str(old.get(dotted, "")), "this launch": str(new.get(dotted, ""))}
            for dotted in dict.fromkeys([*old, *new])
            if old.get(dotted) != new.get(dotted) and dotted != "spec_version"
        ],
        columns=["setting", "that run", "this launch"],
    )


def run_forecast(edited: dict, seeds: int) -> tuple[str, str]:
    """(duration, cost) of the run from the times earlier runs of this model recorded for each stage on its queue,
    scaled to this run's work, the cost at today's price per hour of each queue."""
    try:
        spec = from_dict(RunSpec, edited)
    except ConfigError:
        return "unknown until every field is valid", "unknown until every field is valid"
    nodes = [(n.name, spec.execution.queue_for(n.stage)) for n in selected_nodes(spec.stages)]
    recorded = scaled_to(spec, queries.recorded_stage_times(spec.base_model.name_or_path))
    _, duration = estimate_run(nodes, recorded)
    try:
        _, cost = estimate_cost(nodes, recorded, load_prices())
    except ConfigError as exc:
        cost = f"unknown: {exc}"
    per_run = f", per run ({seeds} seeds launch {seeds} runs)" if seeds > 1 else ""
    return duration + per_run, cost + per_run


def memory_forecast(edited: dict) -> tuple[str, pd.DataFrame | None, list[str], dict[str, str] | None]:
    """(what the plan rests on, a row per stage that loads a model, a warning per stage its class cannot hold, the
    queues that would hold them) from the model's config.json on this host (pipeline.core.memory_plan); no table
    when the model is not here, no queues when there is no plan."""
    try:
        spec = from_dict(RunSpec, edited)
        model = spec.base_model
        shapes = read_shapes(spec, alignlab_home())
    except ConfigError as exc:
        return f"Memory: unknown: {exc}", None, [], None
    shape = shapes.get(BASE_MODEL)
    if shape is None:
        return (
            f"Memory: unknown: {model.name_or_path}'s config.json is not on this host (not fetched, not a local "
            "directory, not in the Hugging Face cache); the worker's preflight plans it where the model is.",
            None,
            [],
            None,
        )
    basis = (
        f"Memory planned per stage from {shape.source} ({shape.parameters / 1e6:,.1f}M parameters), at the configured "
        "maximum lengths: the worst case a batch can reach."
    )
    queues = {**spec.execution.queues, **fitting_queues(shapes, spec)}
    return basis, pd.DataFrame(plan_rows(shapes, spec)), fit_warnings(shapes, spec), queues


FIT_QUEUES_KEY = "launch_fit_queues_chosen"


def queue_where_they_fit(queues: dict[str, str]) -> None:
    """The stages' queues, as the form edits them; called before the widgets are drawn."""
    set_field("execution", "queues", yaml.safe_dump(queues, default_flow_style=True).strip())


st.title("Launch a run")
errors = st.session_state.setdefault("launch_errors", {})
blocking: list[str] = []  # why Launch is disabled: an input that was rejected and not yet fixed or removed

runs = {r["id"]: r for r in queries.list_runs()}
source_col, dataset_col = st.columns([2, 1])
with source_col:
    sources = ["preset", "config file", "earlier run"] if runs else ["preset", "config file"]
    source = st.radio("Start from", sources, horizontal=True, key="launch_source")
    parent_id = None
    base_of_parent = None  # an earlier run's config, to show what this launch changes
    base = None
    if source == "preset":
        chosen = st.selectbox(
            "Preset",
            sorted(PRESETS),
            index=sorted(PRESETS).index("tiny-cpu"),
            key="launch_preset",
            help="Starting values; every field below can be changed.",
        )
        base = to_dict(preset(chosen))
    elif source == "config file":
        uploaded = st.file_uploader("Config (YAML or JSON)", type=["yaml", "yml", "json"], key="launch_import")
        if uploaded is None:
            st.info("Choose a config file (e.g. one exported from this page or written for `alignlab submit`).")
        else:
            try:
                base = to_dict(config_from_upload(uploaded.name, uploaded.getvalue()))
            except ConfigError as exc:
                st.error(f"{plain(exc)}. Fix the file, or start from a preset.")
                blocking.append(f"the config file {uploaded.name} was rejected")
            else:
                st.success(f"Loaded {plain(uploaded.name)}")
    else:
        parent_id = st.selectbox(
            "Run",
            list(runs),
            format_func=lambda i: f"{i}: {runs[i]['name']} ({runs[i]['status']})",
            key="launch_parent",
            help="Its config fills the form; unchanged stages reuse its artifacts instead of running again.",
        )
        try:
            base = base_of_parent = to_dict(load_stored_spec(queries.run_detail(parent_id)["spec"]))  # migrated
        except ConfigError as exc:
            st.error(f"Run {plain(parent_id)}'s stored config cannot be used: {plain(exc)}")
            base = None
            blocking.append(f"run {parent_id}'s stored config was rejected")
        onward = variant_stages_onward((base or {}).get("stages"))
        if base is not None and st.checkbox(
            f"Only the DPO stages ({plain(', '.join(onward))}), reusing this run's SFT data, SFT model and pairs",
            value=True,
            key="launch_dpo_only",
        ):
            base = {**base, "stages": onward}
with dataset_col:
    dataset = st.file_uploader(
        "Upload instructions (JSONL)",
        type=["jsonl"],
        key="launch_dataset",
        help=f"One JSON object per line with an `instruction` field; at most {MAX_BLOB_BYTES // 2**20} MiB. "
        "Checked here, then sent to the worker through Redis. Larger data: a path on the worker or a hub id.",
    )

if base is None:  # a file to choose, or a rejected one: nothing to show or launch yet
    st.session_state.pop("launch_base", None)
    if blocking:
        st.button("Launch", type="primary", disabled=True, key="launch_disabled")
    st.stop()

# a new starting point refills the form, once; after that the widgets hold the person's edits
signature = hashlib.sha256(canonical_json(base).encode()).hexdigest()
if st.session_state.get("launch_base") != signature:
    fill_form(base)
    st.session_state["launch_base"] = signature
    st.session_state.pop("launch_dataset_sha", None)
    st.session_state["launch_errors"] = errors = {}

if dataset is not None:
    data = dataset.getvalue()
    instruction_field = st.session_state.get("form.data.instruction_field", base["data"]["instruction_field"])
    try:
        report = check_upload("instructions", data, dataset.name, instruction_field)
        if report.passed:
            reference = put_blob(connect(), data, dataset.name)
            if st.session_state.get("launch_dataset_sha") != reference:
                set_field("data", "instructions", reference)  # shown in the form like any other value
                st.session_state["launch_dataset_sha"] = reference
    except AlignlabError as exc:  # over the size limit, Redis unreachable
        st.error(f"{plain(dataset.name)}: {plain(exc)}.")
        blocking.append(f"the upload {dataset.name} was rejected")
    else:
        if report.passed:
            st.success(f"{plain(dataset.name)}: {plain(report.rows_valid)} valid instructions, used by this run")
        else:
            st.error(
                f"{plain(dataset.name)}: {plain(report.error_rows)} of {plain(report.rows_read)} rows are invalid, "
                "e.g. "
                + plain("; ".join(f"row {i.row}, field {i.field or '-'}: {i.message}" for i in report.errors[:3]))
                + ". Fix the file and upload it again, or remove it."
            )
            blocking.append(f"the upload {dataset.name} was rejected")


def seeds_widgets() -> None:
    seeds_col, scope_col = st.columns(2)
    seeds_col.number_input(
        "Seeds",
        min_value=1,
        max_value=32,
        value=1,
        step=1,
        key="launch_seeds",
        help="N > 1 launches N runs as a group.",
    )
    scope_col.selectbox(
        "A seed varies",
        list(SEED_SCOPES),
        key="launch_seed_scope",
        help="training: SFT, DPO and evaluation seeds (the data is shared); everything: every stage's seed.",
    )


if FIT_QUEUES_KEY in st.session_state:  # the memory plan's button, clicked in the run before
    queue_where_they_fit(st.session_state.pop(FIT_QUEUES_KEY))
edited = spec_form(errors, after_key_settings=seeds_widgets)
n_seeds, scope = st.session_state["launch_seeds"], st.session_state["launch_seed_scope"]
exported = yaml.safe_dump(edited, sort_keys=False)
with st.expander("Config preview: exactly what Launch submits"):
    st.code(exported, language="yaml")
if parent_id is not None and base is not None:
    st.subheader(f"Changes from run {plain(parent_id)}")
    changed = changes(base_of_parent, edited)
    if changed.empty:
        st.text(f"None: this launches run {parent_id}'s config as it was.")
    else:
        st.dataframe(changed, hide_index=True, key="launch_changes")
duration, cost = run_forecast(edited, int(n_seeds))
st.text(f"Duration: {duration}")
st.text(f"Cost: {cost}")
memory_basis, memory_table, memory_warnings, queues_that_fit = memory_forecast(edited)
for warning in memory_warnings:
    st.warning(f"Will not fit: {plain(warning)}")
if (
    queues_that_fit is not None
    and queues_that_fit != edited["execution"]["queues"]
    and st.button(
        "Queue each stage on a GPU class that holds it",
        key="launch_fit_queues",
        help="Sets execution.queues from the memory plan; the preview shows the result before anything is queued.",
    )
):  # no widget callback (it would run before the login gate): applied at the top of the next run
    st.session_state[FIT_QUEUES_KEY] = queues_that_fit
    st.rerun()
with st.expander("Memory plan" + (f" ({len(memory_warnings)} stage(s) will not fit)" if memory_warnings else "")):
    st.text(memory_basis)
    if memory_table is not None:
        st.dataframe(memory_table, hide_index=True, key="launch_memory_plan")
launch_col, preflight_col, export_col = st.columns(3)
submitted = launch_col.button("Launch", type="primary", disabled=bool(blocking), key="launch")
preflight = preflight_col.button(
    "Preflight",
    disabled=bool(blocking),
    key="preflight",
    help="The whole DAG on this model at tiny scale (a few prompts, two steps) before a long run.",
)
export_col.download_button("Export this config as YAML", exported, file_name="run.yaml", key="export")
if blocking:
    st.error("Launch is disabled: " + plain("; ".join(blocking)) + ". Nothing was queued.")


if submitted or preflight:
    try:
        spec = from_dict(RunSpec, edited)
        if preflight:
            run_ids = [scheduler.submit_preflight(spec, connect())]
        elif n_seeds > 1:
            first = spec.sft.seed
            seeds = list(range(first, first + int(n_seeds)))
            run_ids = scheduler.submit_seeds(spec, seeds, connect(), scope=scope, parent_id=parent_id)
        else:
            run_ids = [scheduler.submit(spec, connect(), parent_id=parent_id)]
    except ConfigError as exc:  # a bad value, a path outside the allowed roots: shown on its field and here
        st.session_state["launch_errors"] = {error_field(str(exc)): str(exc)}
        st.rerun()
    except AlignlabError as exc:
        st.error(f"Could not queue the run: {plain(exc)}")
    else:
        st.session_state["launch_errors"] = {}
        st.switch_page("views/runs.py", query_params={"run": str(run_ids[0])})

if errors:
    st.error(
        "Nothing was queued. Fix "
        + plain(
            "; ".join(
                (f"{field} (in the '{field.split('.')[0]}' group above): " if "." in field else "") + message
                for field, message in errors.items()
            )
        )
    )
