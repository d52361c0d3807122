"""Loading failures a user can hit, each a one-line error that names the fix; runtime choices."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from deepseek_ocr import (
    CheckpointError,
    DeepseekOcrConfig,
    estimate_weight_bytes,
    load_model,
    loading,
    plan_runtime,
)
from deepseek_ocr.cpu import library
from deepseek_ocr.cpu.exponent_coding import ExponentCodedLinear
from deepseek_ocr.cpu.int4 import Int4Linear

from .test_quantization import case_inputs, greedy

CPU32 = dict(device="cpu", dtype="float32", quant="none")


@pytest.fixture
def checkpoint(tmp_path: Path, tiny_model_dir: Path) -> Path:
    copy = tmp_path / "ckpt"
    shutil.copytree(tiny_model_dir, copy)
    for path in copy.iterdir():
        path.chmod(0o644)
    return copy


def load_error(path: Path) -> str:
    with pytest.raises(CheckpointError) as caught:
        load_model(path, plan_runtime(**CPU32))
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_missing_directory_and_config(tmp_path: Path, checkpoint: Path):
    assert "not a directory" in load_error(tmp_path / "nope")
    (checkpoint / "config.json").unlink()
    assert "no config.json" in load_error(checkpoint)


def test_foreign_model_type(checkpoint: Path):
    config = json.loads((checkpoint / "config.json").read_text())
    config["model_type"] = "llama"
    (checkpoint / "config.json").write_text(json.dumps(config))
    assert "'llama' is not DeepSeek-OCR" in load_error(checkpoint)


@pytest.mark.parametrize(
    ("key", "value", "named"),
    [("use_mla", True, "multi-head latent attention"), ("topk_method", "group_limited_greedy", "greedy")],
)
def test_architecture_the_model_does_not_compute_fails_at_load(
    checkpoint: Path, key: str, value: object, named: str
):
    config = json.loads((checkpoint / "config.json").read_text())
    config[key] = value
    (checkpoint / "config.json").write_text(json.dumps(config))
    message = load_error(checkpoint)
    assert "invalid configuration" in message and key in message and named in message
    assert "--" not in message  # the model names no docconv flag


def test_truncated_and_missing_weights(checkpoint: Path):
    weights = checkpoint / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    message = load_error(checkpoint)
    assert "corrupt or truncated" in message and "download the model again" in message
    weights.unlink()
    assert "missing weight file" in load_error(checkpoint)


def test_tensor_with_wrong_shape_is_named(checkpoint: Path):
    tensors = load_file(checkpoint / "model.safetensors")
    tensors["model.projector.layers.weight"] = tensors["model.projector.layers.weight"][:, :100].contiguous()
    save_file(tensors, checkpoint / "model.safetensors")
    assert "model.projector.layers.weight has shape [64, 100], config expects [64, 128]" in load_error(
        checkpoint
    )


def test_missing_tensor_is_reported(checkpoint: Path):
    tensors = load_file(checkpoint / "model.safetensors")
    del tensors["lm_head.weight"]
    save_file(tensors, checkpoint / "model.safetensors")
    assert "1 missing" in load_error(checkpoint)


def test_refuses_to_load_without_enough_memory(checkpoint: Path, monkeypatch):
    monkeypatch.setattr(loading, "available_memory", lambda device: 1_000_000)
    message = load_error(checkpoint)
    assert "not enough memory" in message and "GB is free" in message and "try quant int4" in message and "--" not in message


def test_auto_quantizes_to_4bit_when_full_precision_does_not_fit(monkeypatch, reference_dir):
    config = DeepseekOcrConfig.from_pretrained(reference_dir)
    monkeypatch.setattr(loading, "available_memory", lambda device: 5_000_000_000)
    plan = plan_runtime(device="cpu", dtype="bfloat16", config=config)
    assert plan.quant == "int4" and "exceeds free memory on cpu" in plan.reason
    monkeypatch.setattr(loading, "available_memory", lambda device: 20_000_000_000)
    assert plan_runtime(device="cpu", dtype="bfloat16", config=config).quant == "none"


def test_auto_keeps_lossless_bfloat16_where_only_the_coded_weights_fit(monkeypatch, reference_dir):
    """7 GB free: the 6.7 GB bfloat16 checkpoint with headroom does not fit, exponent-coded it does."""
    config = DeepseekOcrConfig.from_pretrained(reference_dir)
    monkeypatch.setattr(loading, "available_memory", lambda device: 7_000_000_000)
    monkeypatch.setattr(loading, "can_code", lambda: True)
    assert plan_runtime(device="cpu", dtype="bfloat16", config=config).quant == "none"
    monkeypatch.setattr(loading, "can_code", lambda: False)  # a CPU without AVX512-BF16
    assert plan_runtime(device="cpu", dtype="bfloat16", config=config).quant == "int4"


def test_int4_is_refused_off_the_cpu(monkeypatch):
    monkeypatch.setattr(loading, "pick_device", lambda requested: "cuda")
    monkeypatch.setattr(loading, "pick_dtype", lambda device, requested: torch.bfloat16)
    with pytest.raises(CheckpointError, match="quant int4 runs on the CPU only; on cuda use quant 4bit"):
        plan_runtime(device="cuda", quant="int4")


def test_memory_estimates_for_the_real_model(reference_dir):
    config = DeepseekOcrConfig.from_pretrained(reference_dir)
    bf16 = estimate_weight_bytes(config, torch.bfloat16)
    assert bf16 == 6_672_212_480  # the checkpoint's own total_size
    assert 3.9e9 < estimate_weight_bytes(config, torch.bfloat16, "8bit") < 4.3e9
    assert 2.6e9 < estimate_weight_bytes(config, torch.bfloat16, "4bit") < 3.0e9
    assert 2.5e9 < estimate_weight_bytes(config, torch.bfloat16, "int4") < 2.8e9  # lm_head quantized too
    coded = estimate_weight_bytes(config, torch.bfloat16, coded=True)  # decoder and lm_head coded
    assert 0.79 * bf16 < coded < 0.81 * bf16


def test_runtime_plan_on_this_machine():
    plan = plan_runtime()
    assert plan.device == ("cuda" if torch.cuda.is_available() else "cpu") or plan.device == "mps"
    assert plan.quant == "none" and plan.attn in ("sdpa", "flash_attention_2")
    assert plan_runtime(**CPU32).dtype == torch.float32
    if not torch.cuda.is_available():
        with pytest.raises(CheckpointError, match="CUDA is not available"):
            plan_runtime(device="cuda")
        with pytest.raises(CheckpointError, match="flash-attn"):
            plan_runtime(device="cpu", attn="flash")


@pytest.fixture
def bfloat16_checkpoint(checkpoint: Path) -> Path:
    """The tiny checkpoint stored as the real one is: bfloat16 tensors, ``torch_dtype: bfloat16``."""
    for file in checkpoint.glob("*.safetensors"):
        tensors = load_file(file)
        save_file({k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in tensors.items()}, file)
    config = json.loads((checkpoint / "config.json").read_text())
    config["torch_dtype"] = "bfloat16"
    for section in config.values():
        if isinstance(section, dict) and "torch_dtype" in section:
            section["torch_dtype"] = "bfloat16"
    (checkpoint / "config.json").write_text(json.dumps(config))
    return checkpoint


@pytest.mark.skipif(not loading.can_code(), reason="this kernel variant has no vector coded product (portable)")
def test_a_float32_model_of_a_bfloat16_checkpoint_codes_its_decoder_and_computes_as_the_float32_load(
    bfloat16_checkpoint, monkeypatch
):
    """CPUs without bfloat16 arithmetic run float32: the decoder keeps the checkpoint's bfloat16
    weights, coded (lossless, never a full float32 copy), and the rest is widened to float32."""
    plan = plan_runtime(**CPU32)
    coded = load_model(bfloat16_checkpoint, plan)
    kinds = {type(m).__name__ for m in coded.modules()}
    assert isinstance(coded.lm_head, ExponentCodedLinear) and "ExponentCodedLinear" in kinds
    floating = [t for m in coded.modules() if not isinstance(m, ExponentCodedLinear) for t in m.parameters(recurse=False)]
    assert floating and all(t.dtype == torch.float32 for t in floating)
    monkeypatch.setattr(library, "load", lambda: None)  # the plain float32 load: every weight upcast
    plain = load_model(bfloat16_checkpoint, plan)
    monkeypatch.undo()
    assert not any(isinstance(m, ExponentCodedLinear) for m in plain.modules())
    _, inputs = case_inputs("s15_base_square_md")
    (coded_ids, coded_logits), (plain_ids, plain_logits) = greedy(coded, inputs), greedy(plain, inputs)
    assert coded_ids == plain_ids
    # Same weights, float32 activations in both: only the order of float32 sums differs.
    torch.testing.assert_close(coded_logits, plain_logits, atol=1e-4, rtol=1e-4)


def test_a_float32_int4_model_of_a_bfloat16_checkpoint_widens_only_what_int4_leaves(bfloat16_checkpoint):
    model = load_model(bfloat16_checkpoint, plan_runtime(device="cpu", dtype="float32", quant="int4"))
    assert isinstance(model.lm_head, Int4Linear)
    assert model.lm_head.scale_and_zero.dtype == torch.bfloat16  # the int4 format is left as it is
    for module in model.modules():
        if not isinstance(module, Int4Linear):
            assert all(t.dtype == torch.float32 for t in module.parameters(recurse=False)), type(module)


@pytest.mark.parametrize(("key", "value"), [("use_mla", True), ("topk_method", "group_limited_greedy")])
def test_an_architecture_the_model_does_not_compute_is_refused_before_loading(checkpoint: Path, key, value):
    config = json.loads((checkpoint / "config.json").read_text())
    config[key] = value
    (checkpoint / "config.json").write_text(json.dumps(config))
    message = load_error(checkpoint)
    assert "invalid configuration" in message and "--" not in message  # the model package names no CLI flag
