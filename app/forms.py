"""The Launch form, generated from the RunSpec's JSON Schema (`configs.field_table`): labels, help, choices and
bounds come from the same pydantic models as the CLI flags and the saved config file, so they cannot drift apart."""

from __future__ import annotations

from typing import Any

import streamlit as st
import yaml

from pipeline.core.configs import SPEC_VERSION, field_table, get_path, section_help, set_path

HIDDEN = {"spec_version"}  # the layout version is not a setting


def _key(dotted: str) -> str:
    """Widget key of a field; top-level fields sit in section "run" (form.run.name)."""
    return f"form.{dotted}" if "." in dotted else f"form.run.{dotted}"


def _fields() -> list[tuple[str, dict[str, Any]]]:
    return [(dotted, schema) for dotted, schema in field_table() if dotted not in HIDDEN]


def _choices(schema: dict[str, Any]) -> list[Any] | None:
    return schema.get("enum") or (schema.get("items") or {}).get("enum")


def _edited_as_text(schema: dict[str, Any]) -> bool:
    """Fields without a widget of their own (mappings, optional values, unions) are edited as YAML text."""
    return not (schema.get("type") in ("boolean", "integer", "number", "string") or _choices(schema))


def fill_form(spec: dict[str, Any]) -> None:
    """Put `spec` into the form's widgets: the one way the form changes other than a person typing. The widgets
    take their values from session state only, so what they show is what `spec_form` returns."""
    for dotted, schema in _fields():
        value = get_path(spec, dotted)
        if _edited_as_text(schema):
            value = yaml.safe_dump(value, default_flow_style=True).strip()
        elif schema.get("type") == "number":
            value = float(value)
        st.session_state[_key(dotted)] = value


def set_field(section: str, name: str, value: Any) -> None:
    st.session_state[_key(f"{section}.{name}")] = value


def _widget(dotted: str, schema: dict[str, Any], error: str | None) -> Any:
    key = _key(dotted)
    label = dotted.rsplit(".", 1)[-1].replace("_", " ")
    help_text = schema.get("description")
    choices = _choices(schema)
    kind = schema.get("type")
    if kind == "boolean":
        result = st.checkbox(label, help=help_text, key=key)
    elif kind == "array" and choices:
        result = st.multiselect(label, list(choices), help=help_text, key=key)
    elif choices:
        result = st.selectbox(label, list(choices), help=help_text, key=key)
    elif kind == "integer":
        result = st.number_input(label, step=1, help=help_text, key=key)
    elif kind == "number":
        result = st.number_input(label, format="%g", help=help_text, key=key)
    elif kind == "string":
        result = st.text_input(label, help=help_text, key=key)
    else:  # mappings, optional values, unions: edited as YAML, parsed and checked by the model
        text = st.text_input(label, help=help_text, key=key)
        try:
            result = yaml.safe_load(text)
        except yaml.YAMLError:
            result = text
    if error:
        st.error(error)
    return result


def spec_form(errors: dict[str, str]) -> dict[str, Any]:
    """Widgets for every RunSpec field, showing what `fill_form` and the person put there; returns the spec dict
    they show (unchecked)."""
    helps = section_help()
    edited: dict[str, Any] = {"spec_version": SPEC_VERSION}
    sections: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for dotted, schema in _fields():
        sections.setdefault(dotted.split(".")[0] if "." in dotted else "run", []).append((dotted, schema))
    for section, fields in sections.items():
        if section == "run":
            for dotted, schema in fields:
                edited[dotted] = _widget(dotted, schema, errors.get(dotted))
            continue
        expanded = any(k.startswith(f"{section}.") for k in errors)
        with st.expander(f"{section.replace('_', ' ')} — {helps[section]}", expanded=expanded):
            for dotted, schema in fields:
                set_path(edited, dotted, _widget(dotted, schema, errors.get(dotted)))
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
