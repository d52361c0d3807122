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
    assert "not enough memory" in message and "GB is free" in message and "--quant int4" in message


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
    with pytest.raises(CheckpointError, match="--quant int4 runs on the CPU only; on cuda use --quant 4bit"):
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
