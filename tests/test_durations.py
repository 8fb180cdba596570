"""Durations, elapsed time and what is left, as the Runs page shows them (pipeline.core.durations)."""

from datetime import UTC, datetime, timedelta

from pipeline.core.durations import elapsed_seconds, estimate_run, human_duration, remaining_seconds


def test_durations_read_as_people_write_them():
    assert human_duration(1012.7037) == "16 min 53 s"
    assert human_duration(5.43) == "5.4 s"
    assert human_duration(59.96) == "60.0 s"
    assert human_duration(60.4) == "1 min 0 s"
    assert human_duration(7385) == "2 h 03 min"
    assert human_duration(None) == ""


def test_elapsed_runs_to_now_until_the_stage_finishes_and_naive_times_are_utc():
    start = datetime(2026, 1, 1, 12, 0, 0)  # naive, as SQLite returns it
    now = datetime(2026, 1, 1, 12, 2, 30, tzinfo=UTC)
    assert elapsed_seconds(start, None, now) == 150
    assert elapsed_seconds(start, start + timedelta(seconds=42), now) == 42
    assert elapsed_seconds(None, None, now) is None


def test_remaining_is_the_rate_so_far_and_unknown_before_any_progress():
    assert remaining_seconds(100.0, 25, 100) == 300.0
    assert remaining_seconds(100.0, 0, 100) is None
    assert remaining_seconds(None, 5, 10) is None
    assert remaining_seconds(10.0, 10, 10) == 0.0


def test_a_run_estimate_sums_each_stage_median_and_says_when_it_has_no_basis():
    recorded = {("train_sft", "gpu"): [10.0, 30.0, 20.0], ("compare", "cpu"): [2.0]}
    total, basis = estimate_run([("train_sft", "gpu"), ("compare", "cpu")], recorded)
    assert total == 22.0 and basis.startswith("about 22.0 s") and "from 1 to 3 earlier runs" in basis
    total, basis = estimate_run([("train_sft", "gpu-80gb"), ("compare", "cpu")], recorded)
    assert total is None
    assert basis == "unknown: no earlier run of this model at a comparable workload has timed train_sft on gpu-80gb"


def test_earlier_times_are_scaled_to_this_runs_work_and_left_out_where_not_comparable():
    from pipeline.core.configs import preset, to_dict
    from pipeline.core.durations import scaled_to

    earlier = to_dict(preset("tiny-ci"))  # 40 instructions, SFT 1 epoch
    this = preset("tiny-ci")
    this.data.max_instructions, this.sft.num_epochs = 80, 3.0
    recorded = {
        ("train_sft", "gpu"): [(100.0, earlier)],
        ("generate_sft", "gpu"): [(50.0, earlier)],
        ("compare", "cpu"): [(2.0, earlier)],  # declares no work: a fixed cost
    }
    scaled = scaled_to(this, recorded)
    assert scaled[("train_sft", "gpu")] == [100.0 * (80 * 3.0) / (40 * 1.0)]
    assert scaled[("generate_sft", "gpu")] == [50.0 * 80 / 40]
    assert scaled[("compare", "cpu")] == [2.0]
    this.sft.max_steps = 10  # max_steps × batch × accumulation examples, whatever the instructions
    assert scaled_to(this, recorded)[("train_sft", "gpu")] == [100.0 * (10 * 8 * 1) / (40 * 1.0)]

    everything = preset("tiny-ci")
    everything.data.max_instructions = 0  # all of the source: its count is unknown here
    assert ("train_sft", "gpu") not in scaled_to(everything, recorded)  # not comparable with 40: left out
    total, basis = estimate_run([("train_sft", "gpu")], scaled_to(everything, recorded))
    assert total is None and "no earlier run of this model at a comparable workload has timed train_sft" in basis
    all_before = {**earlier, "data": {**earlier["data"], "max_instructions": 0}}
    everything.sft.num_epochs = 2.0  # all of the same source both times: the count cancels, the epochs remain
    assert scaled_to(everything, {("train_sft", "gpu"): [(100.0, all_before)]})[("train_sft", "gpu")] == [200.0]
