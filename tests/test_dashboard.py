"""Dashboard pages under Streamlit's AppTest, on a database filled by a real (queued) tiny run."""

import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select
from streamlit.testing.v1 import AppTest

from app.forms import GROUP_KEY
from app.text import shown as displayed
from db.models import Run, Sample
from db.session import read_session, write_session
from pipeline.core.configs import KEY_SETTINGS, field_table, preset, to_dict
from pipeline.core.durations import human_duration
from pipeline.core.prices import prices_path, set_price
from tests.test_queue import drain_queues
from workers import commands, scheduler
from workers.recorder import Recorder

MAIN = "../app/main.py"


def app(**query):
    at = AppTest.from_file(MAIN, default_timeout=60)
    for key, value in query.items():
        at.query_params[key] = value
    return at


def test_runs_table_shows_the_database_values(filled):
    at = app().run()
    assert not at.exception
    frame = at.dataframe[0].value
    with read_session(filled["engine"]) as s:
        run = s.get(Run, filled["run_id"])
        assert list(frame["id"]) == [run.id] and list(frame["status"]) == [run.status] == ["succeeded"]
        assert list(frame["name"]) == [run.name] and list(frame["tags"]) == ["demo"]
        assert list(frame["progress"]) == [1.0]


def test_run_page_shows_stages_and_resume_and_cancel_act(filled):
    at = app(run=str(filled["run_id"])).run()
    assert not at.exception
    stages = at.dataframe[0].value
    assert list(stages["stage"])[:3] == ["split", "generate_sft", "train_sft"]
    assert set(stages["status"]) == {"cached"}
    assert at.get("vega_lite_chart"), "the training curves chart is missing"
    (dag,) = at.get("graphviz_chart")
    assert '"train_sft" -> "dpo_sft"' in dag.proto.spec and '"eval_dpo_only" -> "compare"' in dag.proto.spec
    assert 'label="compare\\ncached"' in dag.proto.spec
    loads = at.dataframe[1].value
    assert set(loads["device"]) == {"cpu"} and not loads.isna().any().any()
    assert "None" not in stages.astype(str).to_numpy() and not stages.isna().any().any()
    with read_session(filled["engine"]) as s:  # durations as people read them, from the recorded times
        stage = next(st for st in s.get(Run, filled["run_id"]).stages if st.node == "train_sft")
        seconds = (stage.finished_at - stage.started_at).total_seconds()
        beta = s.get(Run, filled["run_id"]).spec["dpo"]["beta"]
    assert stages.set_index("stage").loc["train_sft", "time"] == human_duration(seconds)
    # the ledger: every stage charged when it ended; with no price table its cost is unknown, never free
    assert set(stages["cost"]) == {"no price"}
    (cost,) = [t.value for t in at.text if t.value.startswith("Cost:")]
    assert cost.startswith("Cost: at least 0.00 USD; unknown for queue cpu, gpu (no price when those stages ended")
    key_settings = at.dataframe[2].value.set_index("setting")["value"]  # the run's key settings, from its spec
    assert key_settings["DPO β"] == str(beta)
    # a queued run (no worker drains it) can be cancelled from its page, after saying yes
    queued = scheduler.submit(preset("tiny-ci"), filled["conn"], filled["engine"])
    at = app(run=str(queued)).run()
    at.button(key="cancel").click().run()
    assert not at.exception and any(f"Cancel run {queued}?" in displayed(w.value) for w in at.warning)
    at.button(key="cancel_keep").click().run()
    with read_session(filled["engine"]) as s:
        assert s.get(Run, queued).status == "queued"
    at.button(key="cancel").click().run()
    at.button(key="cancel_confirm").click().run()
    assert not at.exception
    with read_session(filled["engine"]) as s:
        assert s.get(Run, queued).status == "cancelled"
    resume = next(displayed(c.value) for c in at.caption if displayed(c.value).startswith("Resume re-enqueues"))
    assert resume.startswith("Resume re-enqueues split, generate_sft,") and "compare;" in resume


def test_runs_table_opens_a_clicked_row_filters_tags_by_part_and_clone_and_edit_fills_launch(filled):
    other = scheduler.submit(preset("tiny-ci"), filled["conn"], filled["engine"])
    commands.annotate(other, ["beta-sweep"], "")
    at = app().run()
    at.text_input(key="runs_tag").set_value("SWEEP").run()  # part of a tag, case folded
    assert list(at.dataframe[0].value["id"]) == [other]
    at.text_input(key="runs_tag").set_value("").run()
    at.session_state["runs_df"] = {"selection": {"rows": [1], "columns": [], "cells": []}}  # a click on row 2
    at.run()
    assert at.query_params["run"] == [str(filled["run_id"])] or at.query_params["run"] == str(filled["run_id"])
    assert displayed(at.subheader[0].value).startswith(f"Run {filled['run_id']} ·")
    at.button(key="clone").click().run()
    assert not at.exception and displayed(at.title[0].value) == "Launch a run"
    assert (
        at.radio(key="launch_source").value == "earlier run"
        and at.selectbox(key="launch_parent").value == filled["run_id"]
    )
    with read_session(filled["engine"]) as s:
        spec = s.get(Run, filled["run_id"]).spec
    assert at.text_input(key="form.run.name").value == spec["name"]
    assert at.number_input(key="form.dpo.beta").value == spec["dpo"]["beta"]
    assert at.multiselect(key="form.run.stages").value == spec["stages"]  # every stage: a clone, not a DPO rerun


def test_tags_and_notes_are_saved(filled):
    at = app(run=str(filled["run_id"])).run()
    at.text_input(key="tags").set_value("demo, baseline")
    at.text_area(key="notes").set_value("first tiny run")
    at.button[[b.label for b in at.button].index("Save tags and notes")].click().run()
    with read_session(filled["engine"]) as s:
        run = s.get(Run, filled["run_id"])
        assert run.tags == ["baseline", "demo"] and run.notes == "first tiny run"


def test_launch_invalid_field_shows_its_error_and_queues_nothing(filled):
    at = app().run()
    at.switch_page("views/launch.py").run()
    assert not at.exception
    at.selectbox(key=GROUP_KEY).set_value("generation").run()
    at.number_input(key="form.generation.sampling.temperature").set_value(0.0)
    at.button[[b.label for b in at.button].index("Launch")].click().run()
    errors = [displayed(e.value) for e in at.error]
    assert any("SamplingConfig.temperature (at generation.sampling.temperature)" in e for e in errors)
    with read_session(filled["engine"]) as s:
        assert s.scalar(select(func.count()).select_from(Run)) == 1
    assert filled["conn"].llen("rq:queue:gpu") == 0


def test_launch_valid_config_queues_a_run_and_opens_it(filled):
    at = app().run()
    at.switch_page("views/launch.py").run()
    at.text_input(key="form.run.name").set_value("from-the-form")
    at.button[[b.label for b in at.button].index("Launch")].click().run()
    assert not at.exception
    with read_session(filled["engine"]) as s:
        run = s.scalars(select(Run).where(Run.name == "from-the-form")).one()
        assert len(run.stages) == 12 and run.status == "queued"
    assert filled["conn"].llen("rq:queue:gpu") >= 1
    assert str(run.id) in str(at.query_params["run"])


def test_empty_database_offers_the_tiny_demo(redis_conn, tmp_path, monkeypatch):
    from db.migrate import upgrade

    url = f"sqlite:///{tmp_path / 'empty.db'}"
    upgrade(url)
    monkeypatch.setenv("DATABASE_URL", url)
    at = app().run()
    assert not at.exception
    assert any("No runs yet" in displayed(i.value) for i in at.info)
    assert [b.label for b in at.button] == ["Launch the tiny demo"]


def test_pages_never_import_torch():
    code = (
        "import sys\nfrom streamlit.testing.v1 import AppTest\n"
        "at = AppTest.from_file('app/main.py', default_timeout=60).run()\n"
        "for page in ('launch', 'data', 'compare', 'samples'):\n"
        "    at.switch_page(f'views/{page}.py').run()\n"
        "print('torch' in sys.modules, 'transformers' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert out.stdout.strip().splitlines()[-1] == "False False", out.stderr[-2000:]


def test_compare_page_shows_database_values_parity_and_checklist(filled):
    from db.models import Evaluation

    at = app().run()
    at.switch_page("views/compare.py").run()
    assert not at.exception
    table = at.dataframe[0].value
    with read_session(filled["engine"]) as s:  # the stored rows themselves, not the page's query
        expected = dict(
            s.execute(
                select(Evaluation.method, Evaluation.value).where(
                    Evaluation.run_id == filled["run_id"],
                    Evaluation.metric == "preference_accuracy",
                    Evaluation.negative_type.is_(None),
                )
            ).all()
        )
    assert len(expected) == 4
    assert dict(zip(table["method"], table["value"], strict=True)) == {m: round(v, 3) for m, v in expected.items()}
    assert any("Did SFT before DPO help?" in displayed(h.value) for h in at.subheader)
    assert any("SFT→DPO − DPO-only" in t.value for t in at.text)  # the answer, with its primary metric
    assert sum("leak-free" in t.value for t in at.text) == 3  # the held-out check of each training stage
    assert any("fair" in displayed(s.value) for s in at.success)
    assert any("masking verified" in t.value for t in at.text)


def test_compare_page_labels_a_zero_width_interval_and_a_metric_at_its_ceiling(filled):
    from sqlalchemy import update

    from db.models import Evaluation
    from db.session import write_session

    with write_session(filled["engine"]) as s:  # every method, base included, at 1.0 on every prompt
        s.execute(
            update(Evaluation)
            .where(Evaluation.metric == "preference_accuracy", Evaluation.negative_type.is_(None))
            .values(value=1.0, ci_low=1.0, ci_high=1.0)
        )
    at = app().run()
    at.switch_page("views/compare.py").run()
    assert not at.exception
    assert any("ceiling" in displayed(w.value) and "cannot separate" in displayed(w.value) for w in at.warning)
    intervals = at.dataframe[0].value["95% CI"].tolist()
    assert len(intervals) == 4 and all(text.startswith("all ") and " equal" in text for text in intervals)


def test_samples_page_side_by_side_and_blind_judgement_is_persisted(filled):
    from db.models import Judgement

    at = app().run()
    at.switch_page("views/samples.py").run()
    assert not at.exception
    assert [displayed(h.value) for h in at.subheader][:4] == ["base", "SFT", "SFT→DPO", "DPO-only"]  # in a fixed order
    assert "new tokens" in at.tabs[0].dataframe[0].value.index  # the stats as a table, not JSON
    assert "ab_a" not in [b.key for b in at.button]  # no judging without a reviewer's name
    at.text_input(key="reviewer").set_value("ana").run()
    (progress,) = [t.value for t in at.text if "judged by ana" in t.value]
    assert progress.startswith("0 of ")
    total = int(progress.split()[2])
    (offered,) = [c.value for c in at.tabs[1].caption if c.value.startswith("Prompt ")]
    at.button(key="ab_a").click().run()
    assert not at.exception
    with read_session(filled["engine"]) as s:
        (judgement,) = s.scalars(select(Judgement)).all()
        assert judgement.reviewer == "ana" and judgement.run_id == filled["run_id"]
        assert {judgement.method_a, judgement.method_b} == {"base", "sft"}  # the first pair offered
        assert judgement.winner == judgement.method_a  # "A" is whatever was shown on the left
        assert offered == f"Prompt {judgement.prompt_id}"
    assert any(t.value.startswith(f"1 of {total} judged by ana") for t in at.text)
    assert at.dataframe[-1].value["n"].tolist() == [1]  # the win-rate table counts it

    again = app().run()  # a reload: the queue continues where ana left off
    again.switch_page("views/samples.py").run()
    again.text_input(key="reviewer").set_value("ana").run()
    assert any(t.value.startswith(f"1 of {total} judged by ana") for t in again.text)
    (shown,) = [c.value for c in again.tabs[1].caption if c.value.startswith("Prompt ")]
    assert shown != offered


def test_samples_render_model_output_as_text_never_markdown(filled):
    from sqlalchemy import update

    from db.models import Sample
    from db.session import write_session

    injected = "![tracker](http://203.0.113.7/pixel.png) [click me](http://203.0.113.7/) **bold** <b>x</b>"
    with write_session(filled["engine"]) as s:
        s.execute(update(Sample).values(generation=injected, reference=injected))
    at = app().run()
    at.switch_page("views/samples.py").run()
    assert not at.exception
    assert sum(t.value == injected for t in at.text) >= 5  # reference + four methods, verbatim
    markdown = [displayed(m.value) for m in at.markdown] + [displayed(c.value) for c in at.caption]
    assert not any("203.0.113.7" in m for m in markdown)


def test_data_page_reports_records_and_mask_viewer(filled, dag_run):
    at = app().run()
    at.switch_page("views/data.py").run()
    assert not at.exception
    labels = [displayed(e.label) for e in at.expander if " rows valid · " in displayed(e.label)]
    assert any(label.startswith("instructions · passed") for label in labels)
    made, read = [label for label in labels if label.startswith("pairs · ")]  # once as made, once as read by all
    assert made.endswith("checked by pairs")
    assert read.endswith("checked by dpo_sft, dpo_base, eval_base, eval_sft, eval_sft_dpo, eval_dpo_only")
    files = [t.value for t in at.text if t.value.startswith("File: ")]
    assert files and not [f for f in files if ".partial" in f]  # where the file is, not where it was written
    paths = [Path(p) for f in files if "/artifacts/" in f for p in f.removeprefix("File: ").split(" + ")]
    assert paths and all(p.exists() for p in paths)
    records = at.dataframe[-1].value
    assert {"prompt", "completion"} <= set(records.columns) and len(records) > 0
    made = dag_run.results["generate_sft"]
    lines = (Path(made.out_dir) / made.outputs["sft"]).read_text().splitlines()
    assert f"The first {len(records)} of {len(lines)} rows" in [displayed(c.value) for c in at.caption]
    assert any("trained of" in displayed(c.value) for c in at.caption)
    assert any("rows per length bucket" in displayed(c.value) for c in at.caption)  # length histograms of the hand-offs


def test_launch_n_seeds_queues_one_group(filled):
    at = app().run()
    at.switch_page("views/launch.py").run()
    at.text_input(key="form.run.name").set_value("seeded")
    at.number_input(key="launch_seeds").set_value(3)
    at.button[[b.label for b in at.button].index("Launch")].click().run()
    assert not at.exception
    with read_session(filled["engine"]) as s:
        runs = s.scalars(select(Run).where(Run.name.like("seeded-seed%")).order_by(Run.id)).all()
        assert [r.name for r in runs] == ["seeded-seed0", "seeded-seed1", "seeded-seed2"]
        assert len({r.group_name for r in runs}) == 1 and runs[0].group_name
        assert [r.spec["dpo"]["seed"] for r in runs] == [0, 1, 2]
        assert str(runs[0].id) in str(at.query_params["run"])


def test_preflight_button_queues_the_whole_dag_at_tiny_scale(filled):
    at = app().run()
    at.switch_page("views/launch.py").run()
    at.text_input(key="form.run.name").set_value("big")
    at.button[[b.label for b in at.button].index("Preflight")].click().run()
    assert not at.exception
    with read_session(filled["engine"]) as s:
        run = s.scalars(select(Run).where(Run.name == "big-preflight")).one()
        assert run.tags == ["preflight"] and len(run.stages) == 12
        assert run.spec["sft"]["max_steps"] == run.spec["dpo"]["max_steps"] == 2
        assert run.spec["data"]["max_instructions"] <= 24


def test_relaunch_only_the_dpo_stages_of_an_earlier_run(filled):
    at = app().run()
    at.switch_page("views/launch.py").run()
    at.radio(key="launch_source").set_value("earlier run").run()
    assert not at.exception
    assert at.multiselect(key="form.run.stages").value == ["train_dpo", "evaluate", "compare"]
    assert at.text_input(key="form.run.name").value == "tiny-ci"  # the earlier run's config fills the form
    at.number_input(key="form.dpo.beta").set_value(0.25)
    at.button[[b.label for b in at.button].index("Launch")].click().run()
    assert not at.exception
    with read_session(filled["engine"]) as s:
        run = s.scalars(select(Run).order_by(Run.id.desc())).first()
        assert run.parent_id == filled["run_id"] and run.spec["dpo"]["beta"] == 0.25
        assert sorted(st.node for st in run.stages) == [
            "compare",
            "dpo_base",
            "dpo_sft",
            "eval_base",
            "eval_dpo_only",
            "eval_sft",
            "eval_sft_dpo",
        ]


def test_launch_puts_key_settings_first_in_words_and_shows_changes_from_an_earlier_run_and_an_estimate(filled):
    with write_session(filled["engine"]) as s:  # the earlier run computed every stage in 10 s
        for stage in s.get(Run, filled["run_id"]).stages:
            stage.status, stage.started_at = "succeeded", datetime(2026, 1, 1, 12, 0, 0)
            stage.finished_at = stage.started_at + timedelta(seconds=10)
        n_nodes = len(s.get(Run, filled["run_id"]).stages)
        on_gpu = sum(stage.queue == "gpu" for stage in s.get(Run, filled["run_id"]).stages)
    prices = set_price("cpu", 0.0)
    prices = set_price("gpu", 0.60)
    try:
        _launch_form_checks(filled, n_nodes, prices.money(on_gpu * 10.0 / 3600 * 0.60))
    finally:
        prices_path().unlink()


def _launch_form_checks(filled, n_nodes: int, cost: str) -> None:
    at = app().run()
    at.switch_page("views/launch.py").run()
    numbers = [n.label for n in at.number_input]
    assert numbers[:6] == ["SFT learning rate", "SFT epochs", "DPO learning rate", "DPO epochs", "DPO β", "Seeds"]
    groups = list(dict.fromkeys(d.split(".")[0] for d, _ in field_table() if "." in d and d not in KEY_SETTINGS))
    assert len(at.selectbox(key=GROUP_KEY).options) == len(groups)
    for group in groups:  # one group drawn at a time: every group's labels are written for people
        at.selectbox(key=GROUP_KEY).set_value(group).run()
        labels = [n.label for n in at.number_input] + [t.label for t in at.text_input]
        assert not [label for label in labels if "_" in label or label != label.strip()], group
    at.selectbox(key=GROUP_KEY).set_value("base_model").run()
    assert "LoRA rank" in [n.label for n in at.number_input]
    assert at.text_input(key="form.base_model.revision").value == ""  # none, not "null"
    eight_bit = at.selectbox(key="form.base_model.load_in_8bit")
    assert [eight_bit.format_func(o) for o in eight_bit.options] == ["auto", "yes", "no"]
    at.selectbox(key=GROUP_KEY).set_value("format").run()
    (template,) = [t for t in at.text_area if t.label == "Prompt template"]
    assert "\n" in template.value  # the line break shown as one, in a text area
    at.radio(key="launch_source").set_value("earlier run").run()
    at.checkbox(key="launch_dpo_only").uncheck().run()
    assert any(t.value == f"None: this launches run {filled['run_id']}'s config as it was." for t in at.text)
    at.number_input(key="form.dpo.beta").set_value(0.33).run()
    assert not at.exception
    (changes,) = [frame.value for frame in at.dataframe if "that run" in frame.value.columns]  # beside the plan
    assert changes.to_dict("records") == [{"setting": "dpo.beta", "that run": "0.1", "this launch": "0.33"}]
    (estimate,) = [t.value for t in at.text if t.value.startswith("Duration:")]
    assert estimate.startswith(f"Duration: about {human_duration(10.0 * n_nodes)}: the median of each stage")
    (forecast,) = [t.value for t in at.text if t.value.startswith("Cost:")]
    assert forecast.startswith(f"Cost: about {cost} at today's prices (gpu 0.60 USD/h, cpu 0.00 USD/h), from 1")
    at.selectbox(key=GROUP_KEY).set_value("execution").run()
    at.selectbox(key="form.execution.default_queue").set_value("gpu-80gb").run()
    (estimate,) = [t.value for t in at.text if t.value.startswith("Duration:")]
    assert estimate.startswith(
        "Duration: unknown: no earlier run of this model at a comparable workload has timed split on gpu-80gb"
    )


def test_compare_across_runs_sweeps_the_differing_setting(filled):
    from pipeline.core.configs import RunSpec, from_dict
    from pipeline.core.registry import variant_stages_onward

    changed = to_dict(from_dict(RunSpec, filled["spec"]))
    changed["dpo"]["beta"], changed["stages"] = 0.3, variant_stages_onward()
    second = scheduler.submit(from_dict(RunSpec, changed), filled["conn"], filled["engine"])
    drain_queues(filled["conn"])
    Recorder(filled["conn"], filled["engine"]).drain()

    at = app().run()  # chosen on the Runs page
    at.multiselect(key="runs_to_compare").set_value([filled["run_id"], second]).run()
    at.button(key="compare_chosen").click().run()
    assert not at.exception and displayed(at.title[0].value) == "Compare methods"
    assert at.multiselect(key="compare_runs").value == [filled["run_id"], second]
    (differences,) = [  # setting | first run | second run
        d.value
        for d in at.dataframe
        if [str(c).split(":")[0] for c in d.value.columns] == ["setting", str(filled["run_id"]), str(second)]
    ]
    assert differences.set_index("setting").loc["dpo.beta"].tolist() == ["0.1", "0.3"]  # only what differs
    assert "sft.learning_rate" not in differences["setting"].tolist()
    assert at.selectbox(key="sweep_field").value == "dpo.beta"
    (sweep,) = [d.value for d in at.dataframe if "runs" in d.value.columns]
    assert sorted(set(sweep["dpo.beta"])) == [0.1, 0.3] and set(sweep["runs"]) == {1}
    specs = [c.proto.spec for c in at.get("vega_lite_chart")]
    assert len(specs) >= 4  # methods, curves of both runs overlaid, per negative type, sweep
    compact = [spec.replace(" ", "") for spec in specs]
    overlays = [s for s in compact if '"color":{"field":"run"' in s and '"strokeDash":{"field":"method"' in s]
    assert len(overlays) == 1 and '"x":{"field":"step"' in overlays[0]  # runs by colour, methods by dash, by step
    # Samples: the same prompt's outputs from the second run, under the first run's
    at.switch_page("views/samples.py").run()
    at.selectbox(key="samples_run").set_value(filled["run_id"]).run()
    at.selectbox(key="samples_beside").set_value(second).run()
    assert not at.exception
    prompt = at.tabs[0].text[0].value
    with read_session(filled["engine"]) as s:
        theirs = {
            x.method: x.generation
            for x in s.scalars(select(Sample).where(Sample.run_id == second, Sample.prompt == prompt))
        }
    assert theirs and any(displayed(h.value).startswith("The same prompt in run ") for h in at.subheader)
    shown = [t.value.strip() for t in at.tabs[0].text]  # st.text drops the leading space of a generation
    missing = {m: g for m, g in theirs.items() if (g.strip() or "(empty)") not in shown}
    assert not missing, (missing, shown)


def test_samples_filters_flagged_and_disagreeing_prompts(filled):
    from db.models import Sample
    from db.session import write_session

    clean = {"repetition": 0.0, "eos_rate": 1.0, "chars": 10.0, "length_ratio": 1.0, "template_leak_rate": 0.0}
    clean["refusal_rate"] = 0.0
    with write_session(filled["engine"]) as s:
        samples = s.scalars(select(Sample).where(Sample.run_id == filled["run_id"]).order_by(Sample.id)).all()
        prompts = sorted({x.prompt_id for x in samples})
        repeats, refused = prompts[0], prompts[1]
        for sample in samples:
            sample.stats = dict(clean)
            if sample.prompt_id == repeats and sample.method == "sft":
                sample.stats["repetition"] = 0.9  # one method's output flagged: flagged and disagreeing
            if sample.prompt_id == refused:
                sample.stats["refusal_rate"] = 1.0  # every method flagged alike: flagged, not disagreeing
    at = app().run()
    at.switch_page("views/samples.py").run()
    for only, expected in (("flagged", [repeats, refused]), ("disagreeing", [repeats])):
        at.radio(key="samples_filter").set_value(only).run()
        assert not at.exception
        assert at.number_input(key="prompt_index").max == len(expected)
        shown = []
        for index in range(1, len(expected) + 1):
            at.number_input(key="prompt_index").set_value(index).run()
            captions = [displayed(c.value) for c in at.caption]
            shown += [c.removeprefix("Prompt ") for c in captions if c.startswith("Prompt ")]
        assert shown == expected


def test_uploaded_instructions_are_checked_before_anything_is_stored(filled):
    at = app().run()
    at.switch_page("views/launch.py").run()
    bad = b'{"instruction": "Name a colour."}\n{"prompt": "no instruction field"}\nnot json\n'
    at.file_uploader(key="launch_dataset").set_value(("mine.jsonl", bad, "application/jsonl")).run()
    assert not at.exception
    (error,) = [displayed(e.value) for e in at.error if "mine.jsonl: " in displayed(e.value)]
    assert "row 2, field instruction" in error and "row 3" in error
    errors = [displayed(e.value) for e in at.error]
    assert any("Launch is disabled" in e and "Nothing was queued" in e for e in errors)
    assert not [k for k in filled["conn"].keys("alignlab:blob:*")]

    good = b"".join(b'{"instruction": "Name colour number %d."}\n' % i for i in range(30))
    at.file_uploader(key="launch_dataset").set_value(("mine.jsonl", good, "application/jsonl")).run()
    assert not at.exception
    assert any("30 valid instructions" in displayed(s.value) for s in at.success)
    assert at.text_input(key="form.data.instructions").value.startswith("blob:")


@pytest.fixture
def listening_everywhere(monkeypatch):
    from streamlit import config

    before = config.get_option("server.address")
    config.set_option("server.address", "0.0.0.0")
    monkeypatch.delenv("ALIGNLAB_DASHBOARD_PASSWORD", raising=False)
    yield
    config.set_option("server.address", before)


def test_off_loopback_without_a_login_configured_shows_nothing(filled, listening_everywhere):
    at = app()
    at.user = {"is_logged_in": False}
    at.run()
    assert not at.exception
    errors = [displayed(e.value) for e in at.error]
    assert any("not localhost" in e and "ALIGNLAB_DASHBOARD_PASSWORD" in e for e in errors)
    assert not at.dataframe and not at.button


def test_off_loopback_the_password_opens_the_dashboard(filled, listening_everywhere, monkeypatch):
    monkeypatch.setenv("ALIGNLAB_DASHBOARD_PASSWORD", "correct horse")
    at = app()
    at.user = {"is_logged_in": False}
    at.run()
    at.text_input(key="login_password").set_value("wrong").run()
    assert any("Wrong password" in displayed(e.value) for e in at.error) and not at.dataframe
    at.text_input(key="login_password").set_value("correct horse").run()
    assert not at.exception
    assert list(at.dataframe[0].value["id"]) == [filled["run_id"]]
    assert "login_password" not in at.session_state  # the password does not stay in the session


def test_retry_button_requeues_a_stage_and_its_dependents(filled):
    queued = scheduler.submit(preset("tiny-ci"), filled["conn"], filled["engine"])
    commands.cancel(queued, filled["conn"], filled["engine"])
    filled["conn"].delete("rq:queue:gpu", "rq:queue:cpu")
    at = app(run=str(queued)).run()
    assert not at.exception
    at.selectbox(key="retry_node").set_value("train_sft").run()
    at.button(key="retry").click().run()
    assert not at.exception
    with read_session(filled["engine"]) as s:
        stages = {x.node: x.status for x in s.get(Run, queued).stages}
    assert stages["train_sft"] == "queued" and stages["dpo_sft"] == "queued"
    assert stages["generate_sft"] == "cancelled"  # upstream of the retried stage: untouched
    assert filled["conn"].llen("rq:queue:gpu") + filled["conn"].llen("rq:queue:cpu") >= 1


@pytest.mark.parametrize("view", ["runs", "launch", "data", "compare", "samples"])
def test_off_loopback_every_view_shows_only_the_login(filled, listening_everywhere, monkeypatch, view):
    monkeypatch.setenv("ALIGNLAB_DASHBOARD_PASSWORD", "correct horse")
    at = app(run=str(filled["run_id"]))
    at.user = {"is_logged_in": False}
    at.run()
    at.switch_page(f"views/{view}.py").run()
    assert not at.exception
    assert [t.label for t in at.text_input] == ["Password"]
    assert not at.button and not at.dataframe and not at.selectbox and not at.get("vega_lite_chart")


def test_no_page_can_be_served_past_the_gate():
    """Streamlit serves every file of a `pages/` folder beside the main script as its own URL, past the router's
    login gate, and runs widget callbacks before the script (so before the gate): neither may exist."""
    import re

    app_dir = Path(__file__).resolve().parents[1] / "app"
    assert not (app_dir / "pages").exists()
    callbacks = [
        f"{view.name}:{n}"
        for view in (app_dir / "views").glob("*.py")
        for n, line in enumerate(view.read_text().splitlines(), 1)
        if re.search(r"\bon_(click|change|select)\s*=\s*(?![\"']rerun[\"'])", line)  # "rerun" is no callback
    ]
    assert callbacks == []


def test_compare_across_seeds_shows_the_seed_group_and_its_aa_control(filled):
    """Three runs of one config differing only in their training seeds: the page states the A/A control and the
    headline difference with intervals over seeds and prompts."""
    from db.models import Sample
    from pipeline.core.configs import RunSpec, from_dict, with_seed

    spec = from_dict(RunSpec, filled["spec"])
    others = [scheduler.submit(with_seed(spec, seed), filled["conn"], filled["engine"]) for seed in (1, 2)]
    drain_queues(filled["conn"])
    Recorder(filled["conn"], filled["engine"]).drain()
    run_ids = [filled["run_id"], *others]
    with read_session(filled["engine"]) as s:  # what the database holds, counted here
        prompts = set(s.scalars(select(Sample.prompt_id).where(Sample.run_id == filled["run_id"])))
        stats = s.scalars(select(Sample.stats).where(Sample.run_id == filled["run_id"], Sample.method == "sft")).first()
    metrics = [k for k, v in stats.items() if isinstance(v, int | float) and not isinstance(v, bool)]

    at = app().run()
    at.switch_page("views/compare.py").run()
    at.multiselect(key="compare_runs").set_value(run_ids).run()
    assert not at.exception
    assert any("differ only in their seeds" in displayed(h.value) for h in at.subheader)
    (aa,) = [t.value for t in at.text if t.value.startswith("A/A:")]
    assert f"of {3 * 3 * len(metrics)} seed-vs-seed comparisons" in aa  # 3 seed pairs × 3 trained methods
    (table,) = [d.value for d in at.dataframe if "ci (seeds × prompts)" in d.value.columns]
    assert set(table["seeds"]) == {3} and set(table["prompts"]) == {len(prompts)}
    assert set(table["metric"]) == set(metrics)
