"""Power planned before the run: what a run of this size can detect on its primary metric, and how many held-out
prompts a target difference needs.

The planning variance is the spread of the per-prompt differences SFT→DPO − DPO-only on the primary metric. It comes
from a pilot (earlier runs of the same model and data, whose compare stored every per-prompt difference), and only
without one from a stated assumption. The formula is the paired test's normal approximation, (z_{1−α/2} + z_{0.8})
· sd / √n; the sign-flip test the comparison uses has the same power up to a few percent (tests/test_stats.py checks
that on planted data).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

POWER = 0.8
# Without a pilot, a share metric (correct / not, per prompt): the per-prompt difference is -1, 0 or +1, and its
# variance is the share of prompts on which the two arms differ. A quarter differing is typical of two fine-tunes of
# one model; it is an assumption, said as such wherever it is used.
ASSUMED_DISCORDANT_SHARE = 0.25


@dataclass(frozen=True)
class PowerPlan:
    metric: str
    n_prompts: int
    sd: float
    sd_source: str  # where the spread came from: a pilot (which runs, how many prompts) or the assumption
    confidence: float
    target: float
    min_detectable: float
    prompts_needed: int
    reaches_target: bool

    def text(self) -> str:
        verdict = (
            f"reaches the target {self.target:g}; {self.prompts_needed} prompts would do"
            if self.reaches_target
            else f"CANNOT detect the target {self.target:g}: that needs {self.prompts_needed} held-out prompts"
        )
        return (
            f"{self.metric}, SFT→DPO − DPO-only at n = {self.n_prompts} held-out prompts: minimum detectable "
            f"difference {self.min_detectable:.3g} at {POWER:.0%} power, α = {1 - self.confidence:.2g} two-sided "
            f"({verdict}). Spread of the per-prompt differences: sd {self.sd:.3g}, {self.sd_source}."
        )

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "text": self.text()}


def _z(confidence: float) -> float:
    from scipy.stats import norm

    return float(norm.ppf(1 - (1 - confidence) / 2) + norm.ppf(POWER))


def pilot_sd(prompt_means: list[float]) -> float | None:
    return statistics.stdev(prompt_means) if len(prompt_means) >= 2 else None


def plan(
    metric: str,
    n_prompts: int,
    confidence: float,
    target: float,
    pilot: list[float] | None = None,
    pilot_source: str = "",
) -> PowerPlan:
    """The plan for `n_prompts` held-out prompts, from a pilot's per-prompt differences when there is one."""
    sd = pilot_sd(pilot or [])
    if sd is not None and sd > 0:
        source = f"measured on {len(pilot or [])} per-prompt differences of {pilot_source}"
    else:
        sd = math.sqrt(ASSUMED_DISCORDANT_SHARE)
        source = (
            f"ASSUMED (no pilot: {ASSUMED_DISCORDANT_SHARE:.0%} of prompts differing between the arms; run preflight "
            "or an earlier run of this model and data for a measured one)"
        )
    z = _z(confidence)
    detectable = z * sd / math.sqrt(max(n_prompts, 1))
    needed = math.ceil((z * sd / target) ** 2)
    return PowerPlan(metric, n_prompts, sd, source, confidence, target, detectable, needed, detectable <= target)
