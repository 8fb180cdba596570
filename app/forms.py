"""Forms generated from the config dataclasses: labels and help come from field metadata, so the form, the CLI
flags and the saved config file cannot drift apart."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

import streamlit as st
import yaml

from pipeline.configs import RunSpec


def _widget(section: str, f: dataclasses.Field, value: Any, tp: Any, error: str | None) -> Any:
    key = f"form.{section}.{f.name}"
    label = f.name.replace("_", " ")
    help_text = f.metadata.get("help")
    choices = f.metadata.get("choices")
    origin = typing.get_origin(tp)
    if tp is bool:
        result = st.checkbox(label, value=value, help=help_text, key=key)
    elif origin is list and choices:
        result = st.multiselect(label, list(choices), default=value, help=help_text, key=key)
    elif choices and not isinstance(value, list):
        options = list(choices)
        result = st.selectbox(label, options, index=options.index(value), help=help_text, key=key)
    elif tp is int:
        result = st.number_input(label, value=value, step=1, help=help_text, key=key)
    elif tp is float:
        result = st.number_input(label, value=float(value), format="%g", help=help_text, key=key)
    elif tp is str:
        result = st.text_input(label, value=value, help=help_text, key=key)
    else:  # dicts, optional values, unions: edited as YAML, parsed and checked by the dataclass
        text = st.text_input(
            label, value=yaml.safe_dump(value, default_flow_style=True).strip(), help=help_text, key=key
        )
        try:
            result = yaml.safe_load(text)
        except yaml.YAMLError:
            result = text
    if error:
        st.error(error)
    return result


def spec_form(spec: dict[str, Any], errors: dict[str, str]) -> dict[str, Any]:
    """Widgets for every RunSpec field, prefilled from `spec`; returns the edited dict (unchecked)."""
    hints = typing.get_type_hints(RunSpec)
    edited: dict[str, Any] = {}
    for f in dataclasses.fields(RunSpec):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            sub_hints = typing.get_type_hints(tp)
            with st.expander(
                f"{f.name.replace('_', ' ')} — {f.metadata.get('help', '')}",
                expanded=any(k.startswith(f"{f.name}.") for k in errors),
            ):
                edited[f.name] = {
                    sub.name: _widget(
                        f.name, sub, spec[f.name][sub.name], sub_hints[sub.name], errors.get(f"{f.name}.{sub.name}")
                    )
                    for sub in dataclasses.fields(tp)
                }
        else:
            edited[f.name] = _widget("run", f, spec[f.name], tp, errors.get(f.name))
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
