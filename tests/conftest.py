"""Shared fixtures: an isolated ALIGNLAB_HOME, offline Hugging Face settings, the tiny model built once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Offline and quiet before anything imports huggingface_hub / TRL.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session", autouse=True)
def alignlab_home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("alignlab_home")
    os.environ["ALIGNLAB_HOME"] = str(home)
    return home


@pytest.fixture(scope="session")
def tiny_model_dir(alignlab_home) -> Path:
    """The offline tiny model, built once per test run (also what `alignlab-tiny` resolves to)."""
    from pipeline.tiny import ensure_tiny

    return ensure_tiny()


@pytest.fixture(scope="session")
def tiny_ci_spec():
    from pipeline.configs import preset

    return preset("tiny-ci")


@pytest.fixture(scope="session")
def dag_run(tiny_model_dir, tiny_ci_spec, alignlab_home):
    """The whole DAG on the tiny-ci preset, run once per test session (in-process, one model at a time)."""
    from pipeline.dag import run_dag

    events = []
    result = run_dag(tiny_ci_spec, alignlab_home, events.append)
    result.events = events
    return result
