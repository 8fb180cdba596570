"""End to end: the whole DAG on the tiny model, the report, reuse of identical stages, the CLI."""

import json
import math
import subprocess
import sys
from pathlib import Path

from pipeline.artifacts import COMPLETE
from pipeline.core.registry import selected_nodes
from pipeline.dag import default_store, run_dag


def test_every_node_completes_and_writes_its_artifacts(dag_run, tiny_ci_spec):
    assert list(dag_run.results) == [n.name for n in selected_nodes(tiny_ci_spec.stages)]
    assert "judge" not in dag_run.results  # optional: runs only when a spec selects it
    for name, result in dag_run.results.items():
        out = Path(result.out_dir)
        assert (out / COMPLETE).is_file(), name
        for file_name in result.outputs.values():
            assert (out / file_name).exists(), f"{name}: {file_name}"
    report_dir = Path(dag_run.report_dir)
    report = json.loads((report_dir / "report.json").read_text())
    assert (report_dir / "report.md").read_text().startswith("# alignlab comparison")
    assert report["methods"] == ["base", "sft", "sft_dpo", "dpo_only"]
    checks = {c["item"]: c["passed"] for c in report["checklist"]}
    for item in (
        "every stage complete",
        "masking verified",
        "validation passed at every hand-off",
        "all four models evaluated",
        "DPO (sft init) reference equals its init at step 1",
        "DPO (base init) reference equals its init at step 1",
        "parity: same DPO settings for both variants",
        "memory released between models",
    ):
        assert checks[item], item
    assert report["parity"]["fair"] is True
    head = report["headline"]
    assert head["n"] > 0 and head["ci_low"] <= head["mean"] <= head["ci_high"]


def test_one_model_at_a_time_evaluation_peaks(dag_run):
    peaks = {m: dag_run.results[f"eval_{m}"].load_info for m in ("base", "sft", "sft_dpo", "dpo_only")}
    for info in peaks.values():
        assert info["memory_after_release_bytes"] - info["memory_before_bytes"] < info["parameter_count"] * 2


def test_identical_rerun_reuses_every_artifact(dag_run, tiny_ci_spec, alignlab_home):
    events = []
    again = run_dag(tiny_ci_spec, alignlab_home, events.append)
    assert again.keys == dag_run.keys
    assert all(result.reused for result in again.results.values())
    assert not [e for e in events if e["kind"] in ("progress", "metric", "log")]  # no stage did any work
    assert again.report_dir == dag_run.report_dir


def test_a_config_change_recomputes_only_downstream(dag_run, tiny_ci_spec):
    import copy

    from pipeline.dag import artifact_keys

    changed = copy.deepcopy(tiny_ci_spec)
    changed.dpo.beta = 0.2
    keys = artifact_keys(changed)
    same = {n for n in keys if keys[n] == dag_run.keys[n]}
    assert same == {"split", "generate_sft", "train_sft", "negatives", "pairs", "eval_base", "eval_sft"}


def test_cli_runs_the_dag_and_prints_the_verdict(dag_run, alignlab_home):
    out = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", "--preset", "tiny-ci", "--home", str(alignlab_home)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "reused" in out.stdout and "report.md" in out.stdout
    assert "answer: " in out.stdout and "SFT→DPO − DPO-only" in out.stdout and "pipeline health: " in out.stdout
    # one stage alone, by name, from the same store
    one = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline",
            "evaluate",
            "--method",
            "sft",
            "--preset",
            "tiny-ci",
            "--home",
            str(alignlab_home),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert one.returncode == 0, one.stderr[-2000:]
    assert json.loads(one.stdout.strip().splitlines()[-1])["node"] == "eval_sft"


def test_stage_needing_missing_inputs_says_what_to_run(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "pipeline", "compare", "--preset", "tiny-ci", "--home", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2
    assert "needs" in out.stderr and "generate_sft" in out.stderr
    assert default_store(tmp_path).keys() == []


def test_dpo_first_step_is_ln2_for_both_variants(dag_run):
    for name in ("dpo_sft", "dpo_base"):
        result = dag_run.results[name]
        assert math.isclose(result.metrics["step1_loss"], math.log(2), abs_tol=1e-4), name
        assert abs(result.metrics["step1_rewards_chosen"]) < 1e-4
        assert abs(result.metrics["step1_rewards_rejected"]) < 1e-4
        assert result.checks["reference_is_init"]["passed"]
