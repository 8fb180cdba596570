"""How intervals and a metric's spread are labelled for people (pipeline.core.intervals)."""

from pipeline.core.intervals import MIN_ITEMS, cannot_separate, interval_kind, interval_text, readable_rows


def test_an_interval_is_labelled_as_what_it_is():
    assert interval_text(-0.08912, 0.0, 40) == "[-0.089, 0.000]"
    assert interval_text(0.5, 0.5, 30).startswith("all 30 equal")
    assert interval_text(None, None, 1) == "n = 1: no estimate"
    assert interval_text(0.1, 0.2, 1) == "n = 1: no estimate"
    few = interval_text(0.2, 0.61, MIN_ITEMS - 1)
    assert few.startswith("[0.200, 0.610]") and "too few" in few
    assert [interval_kind(*x) for x in ((0, 1, 50), (1, 1, 50), (0, 1, 5), (None, None, 50))] == [
        "ok",
        "zero",
        "few",
        "none",
    ]


def test_a_metric_at_ceiling_or_floor_for_every_method_cannot_separate_them():
    everyone = {"base": 1.0, "sft": 1.0, "sft_dpo": 1.0, "dpo_only": 1.0}
    assert "ceiling" in cannot_separate("preference_accuracy", everyone)
    assert "floor" in cannot_separate("refusal_rate", dict.fromkeys(everyone, 0.0))
    assert "exactly" in cannot_separate("new_tokens", dict.fromkeys(everyone, 12.0))
    assert cannot_separate("preference_accuracy", {**everyone, "base": 0.9}) is None
    assert cannot_separate("new_tokens", {**dict.fromkeys(everyone, 12.0), "sft": 14.0}) is None


def test_readable_rows_round_and_label():
    (row,) = readable_rows([{"value": 0.123456, "ci_low": 0.1, "ci_high": 0.1, "n": 30}])
    assert (row["value"], row["interval"]) == (0.123, "zero") and row["95% CI"].startswith("all 30 equal")
