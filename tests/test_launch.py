"""The Launch page launches what it shows: for every starting point, the fields, the config preview, the exported
YAML and the submitted spec are one and the same; a rejected input disables Launch; errors show at the button."""

import yaml
from sqlalchemy import func, select
from streamlit.runtime.media_file_storage import MediaFileKind
from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage

from app.forms import GROUP_KEY, _edited_as_text, _fields, _key, _optional_text
from app.text import shown as displayed
from db.models import Run
from db.session import read_session
from pipeline.core.configs import SPEC_VERSION, preset, set_path, to_dict
from pipeline.core.registry import variant_stages_onward
from tests.test_dashboard import app


def launch_page():
    at = app().run()
    at.switch_page("views/launch.py").run()
    assert not at.exception
    return at


def _widget_values(at) -> dict:
    """Every field's widget value, group by group: the form draws one group of settings at a time (what it shows
    first, then each group chosen in turn), and the group chosen before is chosen again at the end."""
    values: dict = {}
    before = at.selectbox(key=GROUP_KEY).value
    for group in [None, *at.selectbox(key=GROUP_KEY).options]:
        if group is not None:
            at.selectbox(key=GROUP_KEY).set_value(group.split(" — ")[0].replace(" ", "_")).run()
        for dotted, _ in _fields():
            if dotted not in values:
                try:
                    values[dotted] = at.get_by_key(_key(dotted)).value
                except KeyError:  # in a group not drawn now
                    pass
    at.selectbox(key=GROUP_KEY).set_value(before).run()
    return values


def shown(at) -> dict:
    """The spec as the widgets show it, read widget by widget."""
    spec: dict = {"spec_version": SPEC_VERSION}  # the layout version is no widget
    values = _widget_values(at)
    for dotted, schema in _fields():
        value = values[dotted]
        if _optional_text(schema):  # an empty field is none
            value = value.strip() or None
        elif _edited_as_text(schema):
            value = yaml.safe_load(value)
        set_path(spec, dotted, value)
    return spec


def previewed(at) -> dict:
    (code,) = [c for c in at.code if c.language == "yaml"]
    return yaml.safe_load(code.value)


def exported_url_matches(at, text: str) -> bool:
    """The export button serves exactly `text` (its media URL is the hash of the bytes it serves)."""
    storage = MemoryMediaFileStorage("/mock/media")
    file_id = storage.load_and_get_id(text.encode(), "text/plain", MediaFileKind.DOWNLOADABLE, "run.yaml")
    return at.download_button(key="export").proto.url == storage.get_url(file_id)


def launch(at, engine) -> dict:
    at.button(key="launch").click().run()
    assert not at.exception
    with read_session(engine) as s:
        return s.scalars(select(Run).order_by(Run.id.desc())).first().spec


def assert_one_spec(at, expected: dict, engine) -> None:
    assert shown(at) == expected
    assert previewed(at) == expected
    (code,) = [c for c in at.code if c.language == "yaml"]
    assert exported_url_matches(at, code.value.rstrip("\n") + "\n")  # st.code drops the final newline
    assert launch(at, engine) == expected


def test_switching_the_preset_shows_and_launches_that_preset(filled):
    at = launch_page()
    assert shown(at) == to_dict(preset("tiny-cpu"))
    at.selectbox(key="launch_preset").set_value("tiny-ci").run()
    expected = to_dict(preset("tiny-ci"))
    assert expected != to_dict(preset("tiny-cpu"))
    assert_one_spec(at, expected, filled["engine"])


def test_an_edit_shows_in_the_preview_and_is_what_launches(filled):
    at = launch_page()
    at.number_input(key="form.dpo.beta").set_value(0.37).run()
    at.text_input(key="form.run.name").set_value("edited").run()
    expected = to_dict(preset("tiny-cpu"))
    expected["dpo"]["beta"], expected["name"] = 0.37, "edited"
    assert_one_spec(at, expected, filled["engine"])


def test_an_imported_file_shows_and_launches_its_values(filled):
    at = launch_page()
    spec = to_dict(preset("tiny-ci"))
    spec["name"], spec["dpo"]["beta"], spec["sft"]["learning_rate"] = "imported", 0.42, 3e-4
    at.radio(key="launch_source").set_value("config file").run()
    at.file_uploader(key="launch_import").set_value(("mine.yaml", yaml.safe_dump(spec).encode(), "x")).run()
    assert not at.exception
    assert_one_spec(at, spec, filled["engine"])


def test_an_earlier_run_with_and_without_only_the_dpo_stages(filled):
    earlier = filled["spec"]
    at = launch_page()
    at.radio(key="launch_source").set_value("earlier run").run()
    assert_one_spec(at, {**earlier, "stages": variant_stages_onward()}, filled["engine"])
    at = launch_page()
    at.radio(key="launch_source").set_value("earlier run").run()
    at.selectbox(key="launch_parent").set_value(filled["run_id"]).run()  # not the run launched just above
    at.checkbox(key="launch_dpo_only").uncheck().run()
    assert_one_spec(at, earlier, filled["engine"])


def test_a_rejected_upload_disables_launch_until_it_is_removed(filled):
    at = launch_page()
    bad = b'{"instruction": "Name a colour."}\n{"prompt": "no instruction field"}\nnot json\n'
    at.file_uploader(key="launch_dataset").set_value(("mine.jsonl", bad, "application/jsonl")).run()
    assert at.button(key="launch").disabled and at.button(key="preflight").disabled
    assert any("Launch is disabled" in displayed(e.value) and "mine.jsonl" in displayed(e.value) for e in at.error)
    at.file_uploader(key="launch_dataset").clear().run()
    assert not at.button(key="launch").disabled
    assert shown(at)["data"]["instructions"] == "demo"  # the demo data, as the field says


def test_a_rejected_config_file_disables_launch(filled):
    at = launch_page()
    at.radio(key="launch_source").set_value("config file").run()
    at.file_uploader(key="launch_import").set_value(("bad.yaml", b"[]\n", "x")).run()
    assert not at.exception
    assert any("bad.yaml" in displayed(e.value) and "not a mapping" in displayed(e.value) for e in at.error)
    assert at.button(key="launch_disabled").disabled
    with read_session(filled["engine"]) as s:
        assert s.scalar(select(func.count()).select_from(Run)) == 1


def test_a_field_error_is_summarised_at_the_button(filled):
    at = launch_page()
    at.selectbox(key=GROUP_KEY).set_value("generation").run()
    at.number_input(key="form.generation.sampling.temperature").set_value(0.0).run()
    at.button(key="launch").click().run()
    assert not at.exception
    messages = [displayed(e.value) for e in at.error]
    # once on its field, once at the button naming its group
    assert sum("SamplingConfig.temperature (at generation.sampling.temperature)" in m for m in messages) == 2
    assert any(m.startswith("Nothing was queued") and "'generation' group" in m for m in messages)
    with read_session(filled["engine"]) as s:
        assert s.scalar(select(func.count()).select_from(Run)) == 1
