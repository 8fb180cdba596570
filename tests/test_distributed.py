"""A training stage on several devices (pipeline.distributed): the tiny SFT on 2 CPU ranks (gloo) under
`accelerate launch`, against the same SFT in one process; preemption, SIGTERM and a killed rank, then the resume.

Tolerance: at every step the 2-rank loss is within 2% of the one-process loss. The two runs see the same examples
at each step (the same permutation, each rank half of every global batch; the same token count per step, checked);
what differs is the order of float sums and each rank's own dropout draws (measured: ≤ 0.1%)."""

from __future__ import annotations

import copy
import json
import os
import signal
import threading
from pathlib import Path

import pytest

from pipeline.core.errors import StopRequested
from pipeline.core.registry import node_by_name
from pipeline.dag import artifact_keys, default_store, run_node
from pipeline.distributed import RANKS_DIR, RankFailed

RUN_BOUND_S = 600  # generous: a stage that has not ended by then is hung


@pytest.fixture(scope="module")
def sft_inputs(tiny_ci_spec, tiny_model_dir, alignlab_home):
    """The split and the SFT records the tiny-ci SFT trains on (shared with the session's DAG when it ran)."""
    store = default_store(alignlab_home)
    keys = artifact_keys(tiny_ci_spec)
    for node in ("split", "generate_sft"):
        run_node(tiny_ci_spec, store, node_by_name(node), keys)
    return store


def sft_spec(base, **changes):
    spec = copy.deepcopy(base)
    for name, value in changes.items():
        setattr(spec.sft, name, value)
    return spec


def run_bounded(spec, store, on_event):
    """Run train_sft in a thread, waiting on its end with a generous bound; (result, exception)."""
    outcome: dict = {}

    def target():
        try:
            outcome["result"] = run_node(spec, store, node_by_name("train_sft"), artifact_keys(spec), on_event)
        except BaseException as exc:  # noqa: BLE001
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(RUN_BOUND_S)
    assert not thread.is_alive(), f"train_sft did not end within {RUN_BOUND_S} s"
    return outcome.get("result"), outcome.get("error")


def log_of(result) -> list[dict]:
    return [json.loads(line) for line in (Path(result.out_dir) / "train_log.jsonl").read_text().splitlines()]


def test_two_ranks_run_the_same_steps_at_the_same_global_batch_as_one_process(sft_inputs, tiny_ci_spec):
    store = sft_inputs
    one = run_bounded(sft_spec(tiny_ci_spec, max_steps=3, devices=1), store, None)[0]
    events: list[dict] = []
    two, error = run_bounded(sft_spec(tiny_ci_spec, max_steps=3, devices=2), store, events.append)
    assert error is None, error
    assert one.metrics["steps"] == two.metrics["steps"] == 3
    alone, ranked = log_of(one), log_of(two)
    assert [r["step"] for r in alone] == [r["step"] for r in ranked] == [1, 2, 3]  # each step logged once
    # the same global batch: the tokens the optimizer saw by each step, summed over the ranks, are the same
    assert [r["num_tokens"] for r in alone] == [r["num_tokens"] for r in ranked]
    for a, b in zip(alone, ranked, strict=True):
        assert abs(a["loss"] - b["loss"]) <= 0.02 * a["loss"], (a["step"], a["loss"], b["loss"])
    # rank 0 alone reported: one metric event per step, forwarded through the job's on_progress
    assert [e["step"] for e in events if e["kind"] == "metric"] == [1, 2, 3]
    assert any(e["kind"] == "validation" for e in events)
    assert two.checks["masking_verified"]["passed"] and two.metrics["parameters_changed"] > 0
    assert (Path(two.out_dir) / "model" / "adapter_model.safetensors").exists()


def rank_pids(out_dir: Path) -> dict[int, int]:
    return {int(p.stem.split("-")[1]): int(p.read_text()) for p in (out_dir / RANKS_DIR).glob("rank-*.pid")}


class Recorded:
    """The steps a recorder keeps: a `resumed` event drops what came after its step (workers/recorder.py)."""

    def __init__(self):
        self.steps: list[int] = []

    def __call__(self, event: dict) -> None:
        if event["kind"] == "resumed":
            self.steps = [s for s in self.steps if s <= event["step"]]
        elif event["kind"] == "metric":
            self.steps.append(event["step"])


def test_preemption_sigterm_and_a_killed_rank_each_end_cleanly_and_the_resume_completes(
    sft_inputs, tiny_ci_spec, alignlab_home
):
    store = sft_inputs
    spec = sft_spec(tiny_ci_spec, devices=2, num_epochs=8.0, checkpoint_every=2)  # 32 steps
    partial = store.partial_path(artifact_keys(spec)["train_sft"])
    recorded = Recorded()

    def acting_at(step_at_least: int, act):
        done = {"acted": False}

        def on_event(event):
            recorded(event)
            if event["kind"] == "metric" and event["step"] >= step_at_least and not done["acted"]:
                done["acted"] = True
                act()

        return on_event

    def preempt():  # the job's on_progress raises StopRequested when its worker is told to shut down
        raise StopRequested("worker is shutting down")

    result, error = run_bounded(spec, store, acting_at(3, preempt))
    assert isinstance(error, StopRequested), error
    first_stop = max(int(p.name.split("-")[1]) for p in (partial / "checkpoints").glob("checkpoint-*"))
    assert first_stop >= 3  # the agreed stop saved a checkpoint at the step every rank stopped on

    def sigterm_every_rank():
        for pid in rank_pids(partial).values():
            os.kill(pid, signal.SIGTERM)

    result, error = run_bounded(spec, store, acting_at(first_stop + 2, sigterm_every_rank))
    assert isinstance(error, StopRequested), error
    second_stop = max(int(p.name.split("-")[1]) for p in (partial / "checkpoints").glob("checkpoint-*"))
    assert second_stop > first_stop

    def kill_rank_1():
        os.kill(rank_pids(partial)[1], signal.SIGKILL)

    result, error = run_bounded(spec, store, acting_at(second_stop + 3, kill_rank_1))
    assert isinstance(error, RankFailed), error  # not a user's error: the job may retry, the run may resume
    assert "rank 1 ended without reporting an error" in str(error)
    assert not store.is_complete(artifact_keys(spec)["train_sft"])
    result, error = run_bounded(spec, store, recorded)
    assert error is None, error
    assert result.metrics["resumed_from"].startswith("checkpoint-") and result.metrics["steps"] == 32
    assert [r["step"] for r in log_of(result)] == list(range(1, 33))  # no step lost or logged twice
    assert recorded.steps == list(range(1, 33))  # nor recorded twice


def test_a_batch_that_does_not_split_over_the_devices_is_refused_naming_the_field():
    from pipeline.core.configs import RunSpec, from_dict, preset, to_dict
    from pipeline.core.errors import ConfigError

    data = to_dict(preset("tiny-ci"))
    data["sft"].update(batch_size=6, devices=4)
    with pytest.raises(ConfigError, match=r"at sft.batch_size\): 6 does not split evenly over devices \(4\)"):
        from_dict(RunSpec, data)
    data["sft"].update(batch_size=8)
    assert from_dict(RunSpec, data).sft.per_device_batch == 2


def test_a_version_4_spec_trained_on_one_device(tiny_ci_spec):
    from pipeline.core.configs import load_stored_spec, to_dict

    stored = to_dict(tiny_ci_spec)
    stored["spec_version"] = 4
    for section in ("sft", "dpo"):
        del stored[section]["devices"], stored[section]["distributed"]
    spec = load_stored_spec(stored)
    assert (spec.sft.devices, spec.dpo.devices, spec.sft.distributed) == (1, 1, "ddp")


@pytest.mark.parametrize(
    "strategy, cuda, expected",
    [
        ("ddp", False, ["--multi_gpu"]),
        ("fsdp", True, ["--use_fsdp", "--fsdp_state_dict_type", "FULL_STATE_DICT"]),
        ("deepspeed_zero3", True, ["--use_deepspeed", "--zero_stage", "3"]),
    ],
)
def test_the_launch_flags_follow_the_strategy(tiny_ci_spec, strategy, cuda, expected):
    from pipeline.distributed import launch_arguments

    config = tiny_ci_spec.sft.model_copy(update={"devices": 2, "distributed": strategy})
    flags = launch_arguments(config, cuda, "bf16")
    assert flags[flags.index("--num_processes") + 1] == "2"
    assert all(flag in flags for flag in expected)
    from accelerate.commands.launch import launch_command_parser

    parsed = launch_command_parser().parse_args([*flags, "-m", "pipeline.distributed", "plan.json"])
    assert parsed.num_processes == 2 and parsed.module  # accelerate reads every flag as meant


def test_sharding_on_a_cpu_worker_is_refused_before_anything_loads(tiny_ci_spec):
    from pipeline.core.errors import ConfigError
    from pipeline.distributed import check_devices

    config = tiny_ci_spec.sft.model_copy(update={"devices": 2, "distributed": "fsdp"})
    with pytest.raises(ConfigError, match=r"sft.distributed: fsdp shards over GPUs and this worker has none"):
        check_devices(config, "sft")
    check_devices(config.model_copy(update={"distributed": "ddp"}), "sft")  # DDP on CPU ranks: allowed


def test_the_memory_plan_is_per_device(tiny_ci_spec, tiny_model_dir, alignlab_home):
    from pipeline.core.memory_plan import BASE_MODEL, planned_peaks, read_shapes

    def sft_terms(**changes):
        spec = copy.deepcopy(tiny_ci_spec)
        spec.sft = spec.sft.model_copy(update={"batch_size": 8, "use_lora": False, **changes})
        peaks = planned_peaks(read_shapes(spec, alignlab_home), spec, "cuda")
        return next(p for p in peaks if p.node == "train_sft").terms

    assert BASE_MODEL
    one, ddp, fsdp = sft_terms(), sft_terms(devices=2), sft_terms(devices=2, distributed="fsdp")
    assert ddp["activations"] * 2 == one["activations"] and ddp["weights"] == one["weights"]
    assert fsdp["weights"] * 2 == one["weights"] and fsdp["adapter and optimizer"] * 2 == one["adapter and optimizer"]
    assert "gathered layer" in fsdp and "gathered layer" not in ddp
