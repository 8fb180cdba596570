"""Forms generated from the config dataclasses: labels and help come from field metadata, so the form, the CLI
flags and the saved config file cannot drift apart."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

import streamlit as st
import yaml

from pipeline.core.configs import RunSpec


def _key(section: str, name: str) -> str:
    return f"form.{section}.{name}"


def _edited_as_text(tp: Any, choices: Any) -> bool:
    """Fields without a widget of their own (dicts, optional values, unions) are edited as YAML text."""
    return not (tp in (bool, int, float, str) or choices)


def _fields() -> list[tuple[str, dataclasses.Field, Any]]:
    """(section, field, type) of every RunSpec field; section "run" for the top-level ones."""
    hints = typing.get_type_hints(RunSpec)
    out = []
    for f in dataclasses.fields(RunSpec):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            sub_hints = typing.get_type_hints(tp)
            out += [(f.name, sub, sub_hints[sub.name]) for sub in dataclasses.fields(tp)]
        else:
            out.append(("run", f, tp))
    return out


def _value(spec: dict[str, Any], section: str, name: str) -> Any:
    return spec[name] if section == "run" else spec[section][name]


def fill_form(spec: dict[str, Any]) -> None:
    """Put `spec` into the form's widgets: the one way the form changes other than a person typing. The widgets
    take their values from session state only, so what they show is what `spec_form` returns."""
    for section, f, tp in _fields():
        value = _value(spec, section, f.name)
        if _edited_as_text(tp, f.metadata.get("choices")):
            value = yaml.safe_dump(value, default_flow_style=True).strip()
        elif tp is float:
            value = float(value)
        st.session_state[_key(section, f.name)] = value


def set_field(section: str, name: str, value: Any) -> None:
    st.session_state[_key(section, name)] = value


def _widget(section: str, f: dataclasses.Field, tp: Any, error: str | None) -> Any:
    key = _key(section, f.name)
    label = f.name.replace("_", " ")
    help_text = f.metadata.get("help")
    choices = f.metadata.get("choices")
    origin = typing.get_origin(tp)
    if tp is bool:
        result = st.checkbox(label, help=help_text, key=key)
    elif origin is list and choices:
        result = st.multiselect(label, list(choices), help=help_text, key=key)
    elif choices:
        result = st.selectbox(label, list(choices), help=help_text, key=key)
    elif tp is int:
        result = st.number_input(label, step=1, help=help_text, key=key)
    elif tp is float:
        result = st.number_input(label, format="%g", help=help_text, key=key)
    elif tp is str:
        result = st.text_input(label, help=help_text, key=key)
    else:  # dicts, optional values, unions: edited as YAML, parsed and checked by the dataclass
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
    helps = {f.name: f.metadata.get("help", "") for f in dataclasses.fields(RunSpec)}
    edited: dict[str, Any] = {}
    sections: dict[str, list[tuple[dataclasses.Field, Any]]] = {}
    for section, f, tp in _fields():
        sections.setdefault(section, []).append((f, tp))
    for section, fields in sections.items():
        if section == "run":
            for f, tp in fields:
                edited[f.name] = _widget("run", f, tp, errors.get(f.name))
            continue
        with st.expander(
            f"{section.replace('_', ' ')} — {helps[section]}", expanded=any(k.startswith(f"{section}.") for k in errors)
        ):
            edited[section] = {f.name: _widget(section, f, tp, errors.get(f"{section}.{f.name}")) for f, tp in fields}
    return edited


def error_field(message: str) -> str:
    """The dotted field a ConfigError names ("GenerationConfig.temperature: ..." -> "generation.temperature")."""
    head = message.split(":", 1)[0].strip()
    for f in dataclasses.fields(RunSpec):
        tp = typing.get_type_hints(RunSpec)[f.name]
        if dataclasses.is_dataclass(tp) and head.startswith(f"{tp.__name__}."):
            return f"{f.name}.{head.split('.', 1)[1].split('.')[0]}"
        if head.startswith(f"RunSpec.{f.name}"):
            rest = head[len("RunSpec.") :]
            return rest if "." in rest else f.name
    return "_form"
