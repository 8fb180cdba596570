"""Experiments with a known answer: did the planted effect come out, in the direction it was planted?

A control names a metric, two methods and the direction their difference must take (`ControlConfig`); `compare`
measures that difference like any other (paired by prompt, cluster-bootstrap CI) and `control_status` reads it:
detected only when the CI excludes 0 on the expected side. Torch-free (the report and the dashboard use it).
"""

from __future__ import annotations

from typing import Any

from pipeline.core.metrics import METRICS

STATUS_WORDS = {
    "detected": "detected",
    "wrong_direction": "NOT detected: the effect came out the other way",
    "not_detected": "NOT detected: the interval includes 0",
    "no_estimate": "no estimate: too few prompts",
}


def control_status(control: Any, diff: dict[str, Any] | None, baseline_mean: float | None) -> dict[str, Any]:
    """The control's status and its sentence ("positive control detected: new tokens sft_dpo − sft = −5.1 (−38%)
    [−6.0, −4.2], n = 40 prompts")."""
    low, high = (diff or {}).get("ci_low"), (diff or {}).get("ci_high")
    if diff is None or diff.get("mean") is None or low is None:
        status = "no_estimate"
    elif (high < 0) if control.expect == "lower" else (low > 0):
        status = "detected"
    elif (low > 0) if control.expect == "lower" else (high < 0):
        status = "wrong_direction"
    else:
        status = "not_detected"
    label = METRICS[control.metric].label if control.metric in METRICS else control.metric
    head = f"{control.name} {STATUS_WORDS[status]}: {label} {control.a} − {control.b}"
    if status == "no_estimate":
        text = f"{head}, expected {control.expect}"
    else:
        relative = f" ({diff['mean'] / baseline_mean:+.0%})" if baseline_mean else ""
        text = (
            f"{head} = {diff['mean']:+.3g}{relative} [{low:.3g}, {high:.3g}], n = {diff['n_prompts']} prompts "
            f"(expected {control.expect})"
        )
    return {
        "name": control.name,
        "metric": control.metric,
        "a": control.a,
        "b": control.b,
        "expect": control.expect,
        "status": status,
        "passed": status == "detected",
        "mean": (diff or {}).get("mean"),
        "ci_low": low,
        "ci_high": high,
        "n_prompts": (diff or {}).get("n_prompts", 0),
        "text": text,
    }
