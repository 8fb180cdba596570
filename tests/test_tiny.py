import hashlib
import json
import subprocess
import sys

from pipeline.tiny import build_tiny, demo_records


def weights_digest(directory):
    return hashlib.sha256((directory / "model.safetensors").read_bytes()).hexdigest()


def test_demo_data_has_200_varied_instructions():
    records = demo_records()
    assert len(records) >= 200
    assert len({r["instruction"] for r in records}) == len(records)
    assert len({r["category"] for r in records}) >= 8
    assert all(r["instruction"].strip() and r["response"].strip() for r in records)


def test_same_seed_builds_the_same_model_and_another_seed_does_not(tmp_path):
    a = build_tiny(tmp_path / "a", seed=3, pretrain_steps=3)
    b = build_tiny(tmp_path / "b", seed=3, pretrain_steps=3)
    c = build_tiny(tmp_path / "c", seed=4, pretrain_steps=3)
    assert weights_digest(a) == weights_digest(b) != weights_digest(c)
    assert (a / "tokenizer.json").read_text() == (b / "tokenizer.json").read_text()


def test_built_tiny_model_answers_in_the_prompt_format(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    meta = json.loads((tiny_model_dir / "alignlab_tiny.json").read_text())
    assert 1_000_000 < meta["parameters"] < 20_000_000
    assert meta["final_loss"] < 2.0  # pre-training on the demo corpus worked
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    enc = tok(["Instruction: What is the capital of Peru?\nResponse:"], return_tensors="pt")
    out = model.generate(**enc, max_new_tokens=12, do_sample=False)
    text = tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    assert text.strip() != "" and "capital" in text


def test_cli_builds_tiny(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "pipeline", "tiny", "--out", str(tmp_path / "t"), "--pretrain-steps", "2"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(out.stdout)["path"] == str(tmp_path / "t")
    assert (tmp_path / "t" / "config.json").exists() and (tmp_path / "t" / "tokenizer.json").exists()
