"""The CPU fast paths: attached by the loader through one dispatch point, outside the modeling files."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from torch import nn

from deepseek_ocr import DeepseekOcrForConditionalGeneration, load_model, plan_runtime
from deepseek_ocr.cpu.decoder import CpuMoeMlp, GemvLinear
from deepseek_ocr.cpu.dispatch import CPU_VARIANTS, attach_fast_paths
from deepseek_ocr.loading import load_config

MODEL = Path(__file__).resolve().parents[2] / "model"
#: The files that say what the model computes: plain torch, whatever the machine.
MODELING_FILES = ["modeling.py", "decoder.py", "sam.py", "clip.py", "cache.py"]


@pytest.mark.parametrize("name", MODELING_FILES)
def test_the_modeling_files_never_reach_for_the_cpu_fast_paths(name):
    tree = ast.parse((MODEL / name).read_text())
    imported = [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    assert not [module for module in imported if module == "cpu" or module.startswith("cpu.")], imported


def test_every_variant_subclasses_its_modeling_class_and_adds_no_parameters(tiny_model_dir):
    for base, variant in CPU_VARIANTS.items():
        assert issubclass(variant, base)
    model = DeepseekOcrForConditionalGeneration.from_pretrained(tiny_model_dir)
    names = list(model.state_dict())
    assert attach_fast_paths(model)
    assert list(model.state_dict()) == names


@pytest.fixture(scope="module")
def float32_pair(tiny_model_dir):
    """The tiny checkpoint loaded (fast paths attached) and as from_pretrained builds it (none)."""
    loaded = load_model(tiny_model_dir, plan_runtime(device="cpu", dtype="float32", quant="none"))
    plain = DeepseekOcrForConditionalGeneration.from_pretrained(tiny_model_dir).eval()
    return loaded, plain


def test_the_loader_attaches_the_variants_that_apply_and_says_which(float32_pair):
    loaded, plain = float32_pair
    attached = attach_fast_paths(loaded)  # attaching again decides the same
    assert any(line.startswith("one-row products on torch.mv") for line in attached)
    assert any(line.startswith("one token's experts issued together") for line in attached)
    assert type(loaded.lm_head) is GemvLinear and type(loaded.model.layers[1].mlp) is CpuMoeMlp
    # The vision tower's linears keep torch's product; float32 SAM has no CPU variant.
    assert type(loaded.model.projector.layers) is nn.Linear
    assert type(loaded.model.vision_model.transformer.layers[0].mlp.fc1) is nn.Linear
    assert type(loaded.model.sam_model.blocks[0].attn).__name__ == "SamAttention"
    assert type(plain.lm_head) is nn.Linear


def test_the_variants_compute_what_the_modeling_classes_compute(float32_pair):
    from .test_quantization import case_inputs, greedy

    loaded, plain = float32_pair
    _, inputs = case_inputs("s15_tiny_page_ref")
    loaded_ids, loaded_logits = greedy(loaded, inputs, tokens=6)
    plain_ids, plain_logits = greedy(plain, inputs, tokens=6)
    assert loaded_ids == plain_ids
    torch.testing.assert_close(loaded_logits, plain_logits, rtol=1e-5, atol=1e-5)


def test_nothing_is_attached_off_the_cpu(tiny_model_dir):
    with torch.device("meta"):  # as on a GPU: no weight on the CPU
        model = DeepseekOcrForConditionalGeneration(load_config(tiny_model_dir))
    assert attach_fast_paths(model) == []
    assert not any(type(module) in CPU_VARIANTS.values() for module in model.modules())
