"""The stage DAG of one run: nodes, artifact keys, and running nodes through the artifact store.

`plan()` (from the stage registry) names every node (train_dpo twice, evaluate once per method);
`artifact_keys` hashes each node's config slice with its inputs' keys, so an identical node is reused instead of
recomputed;
`run_node` runs one node (inputs must be complete) and `run_dag` runs the selected stages in order, in one
process, one model at a time. The CLI and the queue jobs both use these functions.
"""

from __future__ import annotations

import gc
import importlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.artifacts import ArtifactStore, artifact_key
from pipeline.core import registry
from pipeline.core.configs import RunSpec
from pipeline.core.errors import ArtifactError
from pipeline.core.home import alignlab_home
from pipeline.core.registry import Node, plan, selected_nodes
from pipeline.stages import RESULT_FILE, ProgressFn, StageResult, no_progress, read_json, write_json

MODEL_SECTION = "base_model"  # a stage that hashes this section loads the base model


def stage_module(stage: str) -> Any:
    return importlib.import_module(registry.stage(stage).module)


def config_slice(spec: RunSpec, node: Node) -> dict[str, Any]:
    return registry.stage(node.stage).config_slice(spec, node.role)


def artifact_keys(spec: RunSpec) -> dict[str, str]:
    """The artifact key of every node, computed in DAG order from config slices and input keys."""
    keys: dict[str, str] = {}
    for node in plan():
        inputs = {name: keys[dep] for name, dep in node.deps}
        keys[node.name] = artifact_key(node.stage, config_slice(spec, node), inputs)
    return keys


def default_store(home: str | Path | None = None) -> ArtifactStore:
    return ArtifactStore(Path(home or alignlab_home()) / "artifacts")


def at_final_path(value: Any, work: str, final: str) -> Any:
    """What a stage reports while it writes its artifact (a validation report's source, an issue's location) names
    the artifact's directory, where the files will be once the work directory is renamed into it."""
    if isinstance(value, str):
        return value.replace(work, final)
    if isinstance(value, dict):
        return {k: at_final_path(v, work, final) for k, v in value.items()}
    if isinstance(value, list):
        return [at_final_path(v, work, final) for v in value]
    return value


def run_node(
    spec: RunSpec,
    store: ArtifactStore,
    node: Node,
    keys: dict[str, str] | None = None,
    on_progress: ProgressFn | None = None,
) -> StageResult:
    """Run one node whose inputs are complete; an already complete identical node is reused, not recomputed."""
    keys = keys or artifact_keys(spec)
    on_progress = on_progress or no_progress
    key = keys[node.name]
    missing = [dep for _, dep in node.deps if not store.is_complete(keys[dep])]
    if missing:
        raise ArtifactError(
            f"{node.name} needs {', '.join(missing)} first: no complete artifact for them under {store.root}; "
            f"run those stages (or the whole DAG with `python -m pipeline run`)"
        )
    inputs = {name: store.get(keys[dep]) for name, dep in node.deps}
    started = time.perf_counter()
    on_progress({"kind": "stage_started", "stage": node.stage, "role": node.role, "node": node.name, "key": key})
    if MODEL_SECTION in registry.stage(node.stage).sections and not store.is_complete(key):
        from pipeline.models import prepare_model

        prepare_model(
            spec.base_model.name_or_path,
            lambda event: on_progress({"stage": node.stage, "role": node.role, "node": node.name, **event}),
        )
    meta = {
        "stage": node.stage,
        "role": node.role,
        "config": config_slice(spec, node),
        "inputs": {name: keys[dep] for name, dep in node.deps},
    }
    with store.writer(key, meta) as writer:
        if writer.reused:
            result = StageResult.from_dict(read_json(writer.dir / RESULT_FILE))
            result.reused = True
        else:
            argument = registry.stage(node.stage).role_argument
            kwargs = {argument: node.role} if node.role and argument else {}
            work, final = str(writer.dir), str(store.path(key))
            result = stage_module(node.stage).run(
                spec, inputs, writer.dir, lambda event: on_progress(at_final_path(event, work, final)), **kwargs
            )
            result.reports = at_final_path(result.reports, work, final)
            result.key = key
            write_json(writer.dir / RESULT_FILE, result.to_dict())
            writer.meta.update(checks=result.checks, load_info=result.load_info, seconds=result.seconds)
    result.out_dir = str(store.path(key))
    on_progress(
        {
            "kind": "stage_finished",
            "stage": node.stage,
            "role": node.role,
            "node": node.name,
            "key": key,
            "reused": result.reused,
            "seconds": round(time.perf_counter() - started, 3),
        }
    )
    return result


@dataclass
class DagResult:
    keys: dict[str, str]
    results: dict[str, StageResult] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    summary_path: str | None = None

    @property
    def report_dir(self) -> str | None:
        reports = [r for r in self.results.values() if r.outputs.get("report")]
        return reports[-1].out_dir if reports else None


def run_dag(spec: RunSpec, home: str | Path | None = None, on_progress: ProgressFn | None = None) -> DagResult:
    """Run the selected stages in DAG order, in this process, one model at a time; reuse what is complete."""
    # while the DAG runs, collections skip what exists now (the imported ML stack); unfrozen after, so nothing that
    # was already garbage, or dies later, is kept past this call in a long-lived process
    gc.freeze()
    try:
        store = default_store(home)
        keys = artifact_keys(spec)
        dag = DagResult(keys)
        for node in selected_nodes(spec.stages):
            started = time.perf_counter()
            dag.results[node.name] = run_node(spec, store, node, keys, on_progress)
            dag.seconds[node.name] = round(time.perf_counter() - started, 3)
    finally:
        gc.unfreeze()
    runs = Path(home or alignlab_home()) / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    summary = runs / f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.json"
    summary.write_text(
        json.dumps(
            {
                "name": spec.name,
                "keys": keys,
                "seconds": dag.seconds,
                "reused": {name: r.reused for name, r in dag.results.items()},
                "report": dag.report_dir,
            },
            indent=2,
        )
    )
    dag.summary_path = str(summary)
    return dag
