"""Power planned before the run: the plan's arithmetic checked independently, its pilot taken from the stored
per-prompt differences of earlier runs, and a run that cannot reach its target refused when its config says so."""

import math

import pytest
from scipy.stats import norm

from pipeline.core.configs import preset
from pipeline.core.power import plan
from pipeline.planning import planned_heldout_prompts


def test_the_plan_is_the_normal_power_formula_and_the_prompts_needed_reach_the_target():
    pilot = [1.0, -1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0] * 10
    sd = (sum((x - sum(pilot) / len(pilot)) ** 2 for x in pilot) / (len(pilot) - 1)) ** 0.5
    result = plan("correct", 100, 0.95, 0.1, pilot, "runs 1, 2")
    z = norm.ppf(0.975) + norm.ppf(0.8)
    assert result.sd == pytest.approx(sd)
    assert result.min_detectable == pytest.approx(z * sd / 10)
    assert result.prompts_needed == math.ceil((z * sd / 0.1) ** 2)
    assert plan("correct", result.prompts_needed, 0.95, 0.1, pilot).reaches_target
    assert not plan("correct", result.prompts_needed - 5, 0.95, 0.1, pilot).reaches_target
    assert "measured on 80 per-prompt differences of runs 1, 2" in result.text()
    assert "ASSUMED" in plan("correct", 100, 0.95, 0.1).text()  # no pilot: said as such


def test_the_planned_power_holds_on_planted_data():
    """At the planned n, a planted difference of the target size is found about 80% of the time by the comparison's
    own test (the sign-flip test on per-prompt differences drawn like the pilot's)."""
    import numpy as np

    from pipeline.core.stats import paired_difference

    rng = np.random.default_rng(4)
    target, sd = 0.3, 1.0
    n = plan("x", 10, 0.95, target, list(rng.normal(0, sd, 500))).prompts_needed
    found = 0
    for trial in range(120):
        diffs = rng.normal(target, sd, n)
        found += paired_difference({str(i): d for i, d in enumerate(diffs)}, {str(i): 0.0 for i in range(n)},
                                   seed=trial)["verdict"] == "better"  # fmt: skip
    assert 0.65 <= found / 120 <= 0.93, (n, found)


def test_the_held_out_size_is_read_off_the_data_as_the_split_stage_will():
    answer = preset("smol-answer")
    assert planned_heldout_prompts(answer) >= 200  # every held-out verifiable task
    capped = preset("smol-cpu")
    assert planned_heldout_prompts(capped) == min(capped.eval.max_prompts, planned_heldout_prompts(capped) or 0)


def test_submit_refuses_an_underpowered_run_when_its_config_says_refuse(redis_conn, engine, capsys, monkeypatch):
    from sqlalchemy import func, select

    from db.models import Run
    from db.session import read_session
    from workers.cli import main

    monkeypatch.setenv("DATABASE_URL", str(engine.url))
    args = ["submit", "--preset", "tiny-ci", "--compare.target_difference", "0.001", "--compare.underpowered", "refuse"]
    assert main(args) == 2
    captured = capsys.readouterr()
    assert "CANNOT detect the target 0.001" in captured.out and "nothing was queued" in captured.err
    with read_session(engine) as s:
        assert s.scalar(select(func.count()).select_from(Run)) == 0
    assert main(["plan", "--preset", "tiny-ci"]) == 0
    assert "minimum detectable difference" in capsys.readouterr().out


def test_the_pilot_is_the_stored_per_prompt_differences_of_earlier_runs_of_the_model_and_data(filled):
    from db.queries import pilot_prompt_means

    spec = preset("tiny-ci")
    means, source = pilot_prompt_means(spec.base_model.name_or_path, spec.data.instructions, "preference_accuracy",
                                       filled["engine"])  # fmt: skip
    assert source == f"runs {filled['run_id']}" and len(means) >= 2
    assert not pilot_prompt_means("another-model", spec.data.instructions, "preference_accuracy", filled["engine"])[0]
