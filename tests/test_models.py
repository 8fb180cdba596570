import weakref

import pytest
import torch

from pipeline import models
from pipeline.core.configs import ModelConfig
from pipeline.core.errors import ModelLoadError
from pipeline.models import current_rss_bytes, load_model, loaded
from pipeline.tiny import build_tiny


def test_tiny_loads_through_the_hf_path_with_load_info(tiny_model_dir):
    with loaded(ModelConfig(name_or_path="alignlab-tiny", device="cpu")) as m:
        info = m.info
        assert info.resolved == str(tiny_model_dir)
        assert (info.device, info.dtype, info.quantization, info.fallback) == ("cpu", "float32", "none", None)
        assert info.parameter_count == sum(p.numel() for p in m.model.parameters())
        assert any("load_in_8bit=auto" in n and "16-bit" in n for n in info.notes)
        assert m.tokenizer.eos_token_id == m.model.config.eos_token_id
    assert info.peak_memory_bytes >= info.memory_before_bytes > 0
    assert info.peak_memory_kind == "process_peak_rss"


def test_real_8bit_loading_generation_and_lora_backward_on_cpu(tiny_model_dir):
    pytest.importorskip("bitsandbytes")
    from bitsandbytes.nn import Linear8bitLt
    from peft import LoraConfig, get_peft_model

    model, tok, info = load_model(ModelConfig(name_or_path=str(tiny_model_dir), load_in_8bit=True, device="cpu"))
    assert info.quantization == "8bit" and info.fallback is None
    assert isinstance(model.model.layers[0].self_attn.q_proj, Linear8bitLt)
    enc = tok(["Instruction: What is the capital of Peru?\nResponse:"], return_tensors="pt")
    out = model.generate(**enc, max_new_tokens=6, do_sample=False)
    assert out.shape[1] > enc["input_ids"].shape[1]
    lora = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    lora.train()
    batch = tok(["Instruction: hi\nResponse: hello"], return_tensors="pt")
    loss = lora(**batch, labels=batch["input_ids"]).loss
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for n, p in lora.named_parameters() if "lora_B" in n]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_an_8bit_model_on_cpu_keeps_no_view_of_its_float_checkpoint(tiny_model_dir, tmp_path):
    """Unquantized weights (embeddings, norms) left as views of the memory-mapped float checkpoint kept the whole
    file resident beside the int8 copy: 8-bit then took more memory than float32 (measured on the real model)."""
    pytest.importorskip("bitsandbytes")
    import shutil
    from pathlib import Path

    own_copy = tmp_path / "tiny"  # a file no other test's model maps
    shutil.copytree(tiny_model_dir, own_copy)
    checkpoint = next(own_copy.glob("*.safetensors"))
    model, _, info = load_model(ModelConfig(name_or_path=str(own_copy), load_in_8bit=True, device="cpu"))
    assert info.quantization == "8bit"
    assert str(checkpoint) not in Path("/proc/self/maps").read_text()
    assert model.model.embed_tokens.weight.untyped_storage().resizable()  # memory of its own, not a file's map


def test_8bit_fallback_is_recorded_with_its_reason(tiny_model_dir, monkeypatch):
    monkeypatch.setattr(models, "bitsandbytes_available", lambda: False)
    _, _, info = load_model(ModelConfig(name_or_path=str(tiny_model_dir), load_in_8bit=True, device="cpu"))
    assert info.quantization == "none"
    assert "bitsandbytes is not installed" in info.fallback


def test_auto_8bit_goes_8bit_when_16bit_would_not_fit(monkeypatch):
    monkeypatch.setattr(models, "free_memory_bytes", lambda device: 10 * 2**20)
    use_8bit, fallback, note = models.decide_8bit(ModelConfig(load_in_8bit="auto"), "cpu", 500_000_000)
    assert use_8bit is models.bitsandbytes_available()
    assert "-> 8-bit" in note


def test_dtype_fallback_on_cpu_is_recorded(tiny_model_dir):
    _, _, info = load_model(ModelConfig(name_or_path=str(tiny_model_dir), dtype="float16", device="cpu"))
    assert info.dtype == "float32" and "float16" in info.fallback


def test_bad_model_references_are_clear_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="no such directory"):
        load_model(ModelConfig(name_or_path=str(tmp_path / "nope" / "model")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(ModelConfig(name_or_path=str(tmp_path / "empty")))
    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError, match="no CUDA device"):
            load_model(ModelConfig(device="cuda"))
    # a hub id that is not in the offline cache fails with the id in the message
    with pytest.raises(ModelLoadError, match="nobody/no-such-model"):
        load_model(ModelConfig(name_or_path="nobody/no-such-model"))


def test_lora_adapter_loads_on_its_base(tiny_model_dir, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model

    model, tok, _ = load_model(ModelConfig(name_or_path=str(tiny_model_dir), device="cpu"))
    lora = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    lora.save_pretrained(tmp_path / "adapter")
    batch = tok(["Instruction: hi\nResponse:"], return_tensors="pt")
    with torch.no_grad():
        expected = lora(**batch).logits
    del model, lora
    with loaded(ModelConfig(name_or_path=str(tiny_model_dir), device="cpu", adapter=str(tmp_path / "adapter"))) as m:
        assert isinstance(m.model, PeftModel)
        with torch.no_grad():
            assert torch.allclose(m.model(**batch).logits, expected, atol=1e-5)
    with pytest.raises(ModelLoadError, match="adapter_config.json"):
        load_model(ModelConfig(name_or_path=str(tiny_model_dir), adapter=str(tmp_path)))


def test_loaded_releases_the_model_on_exception(tiny_model_dir):
    refs = []
    with pytest.raises(RuntimeError, match="boom"):
        with loaded(ModelConfig(name_or_path=str(tiny_model_dir), device="cpu")) as m:
            refs.append(weakref.ref(m.model))
            raise RuntimeError("boom")
    assert refs[0]() is None


def test_a_model_kept_past_its_block_is_recorded_and_fails_the_memory_check(tiny_model_dir):
    from pipeline.stages.compare import _memory_released

    config = ModelConfig(name_or_path=str(tiny_model_dir), device="cpu")
    with loaded(config) as m:
        pass
    assert m.info.model_released is True
    with loaded(config) as m:
        leaked = m.model  # a stage that kept the model (the leak the go/no-go must catch)
    assert m.info.model_released is False and leaked is not None
    released = _memory_released({"base": {"load_info": {**m.info.to_dict(), "model_released": True}}})
    assert released[0]["passed"]
    (item,) = _memory_released({"base": {"load_info": m.info.to_dict()}})
    assert not item["passed"] and "still referenced" in item["reason"]


def test_four_models_in_sequence_return_memory_to_its_start(tmp_path):
    dirs = [build_tiny(tmp_path / f"m{i}", seed=i, pretrain_steps=0, hidden_size=512) for i in range(5)]
    batch = torch.tensor([[1, 2, 3, 4]])
    with loaded(ModelConfig(name_or_path=str(dirs[4]), device="cpu")) as m:  # warm-up: allocator, imports
        m.model(batch)
    start = current_rss_bytes()
    refs, infos = [], []
    for directory in dirs[:4]:
        with loaded(ModelConfig(name_or_path=str(directory), device="cpu")) as m:
            refs.append(weakref.ref(m.model))
            model_bytes = sum(p.numel() * p.element_size() for p in m.model.parameters())
            m.model(batch)
        infos.append(m.info)
    assert all(r() is None for r in refs), "a model outlived its `loaded` block"
    growth = current_rss_bytes() - start
    assert growth < 0.5 * model_bytes, (
        f"RSS grew {growth / 2**20:.1f} MiB over 4 loads of {model_bytes / 2**20:.1f} MiB"
    )
    for info in infos:  # each block's peak saw one model, not an accumulation
        assert info.peak_memory_bytes - start < 2.5 * model_bytes
