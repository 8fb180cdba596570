"""`alignlab preflight`: the go/no-go checklist on this machine, stored for the dashboard."""

import json
import os
import re
import shutil
import subprocess
import sys

from streamlit.testing.v1 import AppTest

from app.text import shown
from tests.test_cli_up import ROOT


def preflight(args, home, redis_url, db_url):
    env = {**os.environ, "ALIGNLAB_HOME": str(home), "REDIS_URL": redis_url, "DATABASE_URL": db_url}
    return subprocess.run(
        [sys.executable, "-m", "workers.cli", "preflight", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_preflight_runs_the_checks_and_the_tiny_dag_and_records_a_go(
    tiny_model_dir, redis_server_url, tmp_path, monkeypatch
):
    home = tmp_path / "home"
    shutil.copytree(tiny_model_dir, home / "models" / tiny_model_dir.name)
    db_url = f"sqlite:///{tmp_path / 'pf.db'}"
    out = preflight(["--preset", "tiny-ci", "--out", str(tmp_path / "pf.json")], home, redis_server_url, db_url)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    result = json.loads((tmp_path / "pf.json").read_text())
    items = {c["item"]: c for c in result["checklist"]}
    assert result["go"] is True
    assert items["Redis reachable with auth"]["passed"] and items["model reachable"]["passed"]
    assert items["whole DAG at tiny scale"]["passed"] and "12 stages" in items["whole DAG at tiny scale"]["reason"]
    assert items["GPU, driver and CUDA visible"]["required"] is False  # the config asks for the CPU
    memory = items["memory for the largest stage"]  # the planner's largest stage, against free memory
    loading = "generate_sft|train_sft|negatives|dpo_sft|dpo_base|eval_base|eval_sft|eval_sft_dpo|eval_dpo_only"
    largest = rf"~[\d.,]+ [MG]iB planned for ({loading}) \(weights 12 MiB"
    assert memory["passed"] and re.match(largest, memory["reason"]), memory["reason"]
    assert "GO" in out.stdout.splitlines()[-2] and "recorded as run 1" in out.stdout

    monkeypatch.setenv("DATABASE_URL", db_url)
    at = AppTest.from_file("../app/main.py", default_timeout=60)
    at.query_params["run"] = "1"
    at.run()
    assert not at.exception
    assert any(shown(h.value) == "Preflight: GO" for h in at.subheader)
    assert any("whole DAG at tiny scale" in t.value for t in at.text)


def test_a_missing_model_is_a_no_go_naming_the_path(redis_server_url, tmp_path):
    out = preflight(
        ["--preset", "tiny-ci", "--base_model.name_or_path", str(tmp_path / "no-model"), "--checks-only"],
        tmp_path / "home",
        redis_server_url,
        f"sqlite:///{tmp_path / 'pf.db'}",
    )
    assert out.returncode == 1
    assert (
        "FAIL model reachable" in out.stdout
        and "no-model" in out.stdout
        and out.stdout.strip().endswith("(tag preflight) for the dashboard")
    )
    assert "NO-GO" in out.stdout
