"""The Launch form, generated from the RunSpec's JSON Schema (`configs.field_table`): labels, help, choices and
bounds come from the same pydantic models as the CLI flags and the saved config file, so they cannot drift apart."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import streamlit as st
import yaml

from pipeline.core.configs import KEY_SETTINGS, SPEC_VERSION, field_label, field_table, get_path, section_help, set_path
from pipeline.core.documents import DocumentError, parse_yaml

HIDDEN = {"spec_version"}  # the layout version is not a setting


def _key(dotted: str) -> str:
    """Widget key of a field; top-level fields sit in section "run" (form.run.name)."""
    return f"form.{dotted}" if "." in dotted else f"form.run.{dotted}"


def _fields() -> list[tuple[str, dict[str, Any]]]:
    return [(dotted, schema) for dotted, schema in field_table() if dotted not in HIDDEN]


def _choices(schema: dict[str, Any]) -> list[Any] | None:
    return schema.get("enum") or (schema.get("items") or {}).get("enum")


def _optional_text(schema: dict[str, Any]) -> bool:
    """An optional text (a hub revision, an adapter path): an empty field means none, never the string 'null'."""
    return sorted(t.get("type", "") for t in schema.get("anyOf", [])) == ["null", "string"]


def _edited_as_text(schema: dict[str, Any]) -> bool:
    """Fields without a widget of their own (mappings, lists of sections) are edited as YAML text."""
    return not (
        schema.get("type") in ("boolean", "integer", "number", "string") or _choices(schema) or _optional_text(schema)
    )


def _choice_text(choice: Any) -> str:
    """How a choice reads: true / false choices (8-bit: auto, yes, no) as words, never as 'True' or 'false'."""
    return {True: "yes", False: "no"}.get(choice, str(choice)) if isinstance(choice, bool) else str(choice)


def fill_form(spec: dict[str, Any]) -> None:
    """Put `spec` into the form's widgets: the one way the form changes other than a person typing. The widgets
    take their values from session state only, so what they show is what `spec_form` returns."""
    for dotted, schema in _fields():
        value = get_path(spec, dotted)
        if _optional_text(schema):
            value = value or ""
        elif _edited_as_text(schema):
            value = yaml.safe_dump(value, default_flow_style=True).strip()
        elif schema.get("type") == "number":
            value = float(value)
        st.session_state[_key(dotted)] = value


def set_field(section: str, name: str, value: Any) -> None:
    st.session_state[_key(f"{section}.{name}")] = value


def _value(schema: dict[str, Any], raw: Any) -> Any:
    """The spec value a field's widget state stands for: an empty optional text is none, YAML text is parsed (a
    string the model then refuses, with its field, when it does not parse)."""
    if _optional_text(schema):
        return (raw or "").strip() or None
    if _edited_as_text(schema):
        try:
            return parse_yaml(raw)
        except DocumentError:
            return raw
    return raw


def _widget(dotted: str, schema: dict[str, Any], error: str | None, label: str | None = None) -> Any:
    key = _key(dotted)
    label = label or field_label(dotted, schema)
    help_text = schema.get("description")
    choices = _choices(schema)
    kind = schema.get("type")
    if kind == "boolean":
        raw = st.checkbox(label, help=help_text, key=key)
    elif kind == "array" and choices:
        raw = st.multiselect(label, list(choices), help=help_text, key=key)
    elif choices:
        raw = st.selectbox(label, list(choices), format_func=_choice_text, help=help_text, key=key)
    elif kind == "integer":
        raw = st.number_input(label, step=1, help=help_text, key=key)
    elif kind == "number":
        raw = st.number_input(label, format="%g", help=help_text, key=key)
    elif kind == "string" and schema.get("multiline"):  # its line breaks shown as line breaks
        raw = st.text_area(label, help=help_text, key=key, height="content")
    elif kind == "string":
        raw = st.text_input(label, help=help_text, key=key)
    elif _optional_text(schema):
        raw = st.text_input(label, help=help_text, key=key, placeholder="none")
    else:  # mappings, lists of sections: edited as YAML
        raw = st.text_input(label, help=help_text, key=key)
    if error:
        st.error(error)
    return _value(schema, raw)


GROUP_KEY = "form_group"


def spec_form(errors: dict[str, str], after_key_settings: Callable[[], None] | None = None) -> dict[str, Any]:
    """Widgets for the RunSpec's fields, showing what `fill_form` and the person put there; returns the spec dict
    the form holds (unchecked). The run's own fields and the key settings (`configs.KEY_SETTINGS`) come first, then
    `after_key_settings` (the page's seeds and estimate), then one group of the other fields at a time (the one
    chosen, and any group with an error): a browser draws a few widgets, not seventy. The groups not shown keep
    their values in session state, and the spec returned holds every field either way."""
    for key in [_key(dotted) for dotted, _ in _fields()]:
        if key in st.session_state:  # a widget not drawn in a run loses its state; a value set here keeps it
            st.session_state[key] = st.session_state[key]
    helps = section_help()
    edited: dict[str, Any] = {"spec_version": SPEC_VERSION}
    sections: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    schemas = dict(_fields())
    for dotted, schema in _fields():
        if dotted not in KEY_SETTINGS:
            sections.setdefault(dotted.split(".")[0] if "." in dotted else "run", []).append((dotted, schema))
    for dotted, schema in sections.pop("run"):
        edited[dotted] = _widget(dotted, schema, errors.get(dotted))
    st.subheader("Key settings")
    sections_shown = list(dict.fromkeys(dotted.split(".")[0] for dotted in KEY_SETTINGS))
    columns = dict(zip(sections_shown, st.columns(len(sections_shown)), strict=True))  # one column per section
    for dotted, label in KEY_SETTINGS.items():
        with columns[dotted.split(".")[0]]:
            set_path(edited, dotted, _widget(dotted, schemas[dotted], errors.get(dotted), label))
    if after_key_settings is not None:
        after_key_settings()
    st.subheader("Every other setting, by stage")
    chosen = st.selectbox(
        "Group",
        list(sections),
        format_func=lambda section: f"{section.replace('_', ' ')} — {helps[section]}",
        key=GROUP_KEY,
        help="One group at a time; the others keep their values. A group with an error is shown as well.",
    )
    for section, fields in sections.items():
        drawn = section == chosen or any(k.startswith(f"{section}.") for k in errors)
        if drawn and section != chosen:
            st.text(f"{section.replace('_', ' ')} (a field there needs fixing)")
        for dotted, schema in fields:
            if drawn:
                set_path(edited, dotted, _widget(dotted, schema, errors.get(dotted)))
            else:
                set_path(edited, dotted, _value(schema, st.session_state[_key(dotted)]))
    return edited


def error_field(message: str) -> str:
    """The dotted field a ConfigError names: its "(at generation.sampling.temperature)" path, or for a top-level
    field "RunSpec.name"; "_form" when it names none."""
    import re

    head = message.split(": ", 1)[0]
    at = re.search(r"\(at ([\w.]+)", head)
    if at:  # the field's widget: "negatives.types[0]" -> negatives.types, "execution.queues.x" -> execution.queues
        known = {dotted for dotted, _ in _fields()}
        candidate = re.sub(r"\[.*?\]", "", at.group(1))
        while candidate not in known and "." in candidate:
            candidate = candidate.rsplit(".", 1)[0]
        return candidate
    section, _, field = head.strip().partition(".")
    if section == "RunSpec" and field:
        return field.split(".")[0].split("[")[0]
    return "_form"
