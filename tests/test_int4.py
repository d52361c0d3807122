"""Int4Linear: the grouped 4-bit weight on PyTorch's CPU kernel."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from deepseek_ocr.quantization import Int4Linear, dequantize_int4, int4_group_size, quantize_linears_int4


def quantized_copy(linear: nn.Linear) -> Int4Linear:
    holder = nn.Module()
    holder.layer = linear
    quantize_linears_int4(holder, ["layer"])
    return holder.layer


@pytest.mark.parametrize(("out_features", "in_features"), [(896, 1280), (1280, 896), (48, 32)])
def test_each_weight_is_within_half_a_step_of_its_group(out_features, in_features):
    torch.manual_seed(0)
    linear = nn.Linear(in_features, out_features, bias=False, dtype=torch.bfloat16)
    nn.init.normal_(linear.weight, std=0.02)
    layer = quantized_copy(linear)
    group = layer.group_size
    weight = linear.weight.float().reshape(out_features, -1, group)
    step = (weight.amax(-1, keepdim=True) - weight.amin(-1, keepdim=True)) / 15
    error = (dequantize_int4(layer).float().reshape(out_features, -1, group) - weight).abs()
    # Rounding costs half a step; the bfloat16 scale, zero and output add up to ~4% of a step.
    assert (error <= step * 0.56 + 1e-6).all()


def test_forward_matches_the_dequantized_weight_for_any_batch_shape():
    torch.manual_seed(1)
    linear = nn.Linear(128, 64, bias=True, dtype=torch.bfloat16)
    layer = quantized_copy(linear)
    x = torch.randn(2, 3, 128, dtype=torch.bfloat16)
    expected = x.float() @ dequantize_int4(layer).float().T + linear.bias.float()
    out = layer(x)
    assert out.shape == (2, 3, 64) and out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected, atol=0.05, rtol=0.02)


def test_float32_activations_come_back_as_float32():
    layer = quantized_copy(nn.Linear(64, 32, bias=False))
    assert layer(torch.randn(4, 64)).dtype == torch.float32


@pytest.mark.parametrize(
    ("out_features", "in_features", "group"), [(32, 1280, 64), (32, 96, 32), (32, 40, None), (24, 64, None)]
)
def test_group_size_follows_the_kernel_constraints(out_features, in_features, group):
    assert int4_group_size(nn.Linear(in_features, out_features, device="meta")) == group
