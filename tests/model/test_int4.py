"""Int4Linear: the grouped 4-bit weight, the CPU kernel's int4 product and the torch fallback."""

from __future__ import annotations

import ctypes
from pathlib import Path

import pytest
import torch
from torch import nn

from deepseek_ocr.cpu import library
from deepseek_ocr.cpu.int4 import Int4Linear, dequantize_int4, int4_group_size, quantize_linears_int4
from deepseek_ocr.cpu.linear import linear_many

KERNEL_MAX_ROWS = Int4Linear.kernel_max_rows

needs_vector_int4 = pytest.mark.skipif(
    library.load() is None or not library.load().int4_fast,
    reason="this kernel variant has no vector int4 path (portable): int4 layers take PyTorch's int4 kernel",
)


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
    error = (layer.decoded_weight().float().reshape(out_features, -1, group) - weight).abs()
    # Rounding costs half a step; the bfloat16 scale, zero and output add up to ~4% of a step.
    assert (error <= step * 0.56 + 1e-6).all()


def test_forward_matches_the_dequantized_weight_for_any_batch_shape():
    torch.manual_seed(1)
    linear = nn.Linear(128, 64, bias=True, dtype=torch.bfloat16)
    layer = quantized_copy(linear)
    x = torch.randn(2, 3, 128, dtype=torch.bfloat16)
    expected = x.float() @ layer.decoded_weight().float().T + linear.bias.float()
    out = layer(x)
    assert out.shape == (2, 3, 64) and out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected, atol=0.05, rtol=0.02)


def test_float32_activations_come_back_as_float32():
    layer = quantized_copy(nn.Linear(64, 32, bias=False))
    assert layer(torch.randn(4, 64)).dtype == torch.float32


@pytest.mark.parametrize(
    ("out_features", "in_features", "group"), [(32, 1280, 64), (32, 96, 32), (32, 40, None), (24, 64, 64)]
)
def test_group_size_follows_the_kernel_constraints(out_features, in_features, group):
    assert int4_group_size(nn.Linear(in_features, out_features, device="meta")) == group


def test_the_kernel_builds_on_a_machine_with_a_c_compiler():
    # CI and the quickstart machines have gcc; a silent fallback there would cost the int4 speed.
    kernel = library.load()
    assert kernel is not None
    assert library._cache_dir() in Path(kernel.library._name).parents


def test_the_c_dequantization_matches_the_torch_one():
    layer = quantized_copy(nn.Linear(192, 40, bias=False))
    unpacked = dequantize_int4(layer.packed_weight, layer.scale_and_zero, layer.group_size)
    torch.testing.assert_close(layer.decoded_weight(), unpacked, atol=0, rtol=2**-7)


@pytest.mark.parametrize("rows", [1, 3, 4, 5, 9, KERNEL_MAX_ROWS])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("out_features", "in_features"), [(50, 1280), (7, 64), (33, 96)])
def test_kernel_vector_and_portable_paths_match_the_float_product(rows, dtype, out_features, in_features):
    """Activations are quantized to int8 per group, so the product is close to, not equal to, the float one."""
    torch.manual_seed(rows)
    layer = quantized_copy(nn.Linear(in_features, out_features, bias=False))
    x = torch.randn(rows, in_features).to(dtype)
    expected = x.float() @ layer.decoded_weight().float().T
    kernel = library.load()
    for portable in (False, True):
        out = kernel.linear(x, layer.descriptor(), out_features, portable=portable)
        assert out.dtype == dtype and out.shape == (rows, out_features)
        error = (out.float() - expected).norm() / expected.norm()
        assert error < 0.02, (portable, error)


def test_prefill_sized_inputs_and_the_fallback_agree_with_the_kernel(monkeypatch):
    torch.manual_seed(3)
    layer = quantized_copy(nn.Linear(256, 96, bias=False, dtype=torch.bfloat16))
    decode = torch.randn(1, 256, dtype=torch.bfloat16)
    prefill = torch.randn(KERNEL_MAX_ROWS + 1, 256, dtype=torch.bfloat16)
    with_kernel = layer(decode).float(), layer(prefill).float()
    monkeypatch.setattr(library, "load", lambda: None)
    without_kernel = layer(decode).float(), layer(prefill).float()
    torch.testing.assert_close(without_kernel[0], with_kernel[0], atol=0.02, rtol=0.02)
    torch.testing.assert_close(without_kernel[1], with_kernel[1], atol=1e-2, rtol=1e-2)


def test_kernel_refuses_a_width_its_groups_do_not_divide():
    layer = quantized_copy(nn.Linear(64, 8, bias=False))
    descriptor = layer.descriptor().clone()
    descriptor[3] = 48  # groups of 48 do not divide 64 inputs
    with pytest.raises(ValueError, match="CPU kernel refused"):
        library.load().linear(torch.randn(1, 64), descriptor, 8)


@needs_vector_int4
def test_grouped_products_equal_one_call_each():
    """A decoding step's projections issued together give what each layer gives alone."""
    torch.manual_seed(4)
    shared_input = torch.randn(1, 1, 128, dtype=torch.bfloat16)
    own_input = torch.randn(1, 1, 64, dtype=torch.bfloat16)
    layers = [quantized_copy(nn.Linear(128, n, bias=False)) for n in (96, 5, 128)]
    narrow = quantized_copy(nn.Linear(64, 40, bias=False))
    pairs = [(layer, shared_input) for layer in layers] + [(narrow, own_input)]
    grouped = linear_many(pairs)
    assert [out.shape for out in grouped] == [(1, 1, 96), (1, 1, 5), (1, 1, 128), (1, 1, 40)]
    for out, (layer, x) in zip(grouped, pairs, strict=True):
        assert torch.equal(out, layer(x))


@pytest.mark.parametrize(
    "pairs",
    [
        pytest.param(lambda: [(quantized_copy(nn.Linear(64, 8, bias=False)), torch.randn(2, 64))], id="two rows"),
        pytest.param(lambda: [(quantized_copy(nn.Linear(64, 8)), torch.randn(1, 64))], id="bias"),
        pytest.param(lambda: [(nn.Linear(64, 8), torch.randn(1, 64))], id="not int4"),
        pytest.param(
            lambda: [
                (quantized_copy(nn.Linear(64, 8, bias=False)), torch.randn(1, 64)),
                (quantized_copy(nn.Linear(96, 8, bias=False)), torch.randn(1, 96, dtype=torch.bfloat16)),
            ],
            id="mixed dtypes",
        ),
    ],
)
def test_products_the_grouped_call_cannot_take_are_left_to_the_caller(pairs):
    assert linear_many(pairs()) is None


@needs_vector_int4
@pytest.mark.parametrize("kernel", ["none", "portable"])
def test_without_a_vector_int4_path_layers_use_pytorchs_kernel_on_the_same_values(monkeypatch, kernel):
    torch.manual_seed(9)
    linear = nn.Linear(256, 48, bias=False, dtype=torch.bfloat16)
    ours = quantized_copy(linear)
    if kernel == "none":
        monkeypatch.setattr(library, "load", lambda: None)
    else:
        portable = library.CpuKernel(ctypes.CDLL(str(library.build("portable"))))
        monkeypatch.setattr(library, "load", lambda: portable)
    theirs = quantized_copy(linear)
    assert theirs.pytorch_layout and not ours.pytorch_layout
    assert torch.equal(theirs.decoded_weight(), ours.decoded_weight())
    x = torch.randn(2, 1, 256)
    torch.testing.assert_close(theirs(x), x @ ours.decoded_weight().float().T, atol=0.03, rtol=0.02)
    assert theirs(x).dtype == torch.float32
    assert linear_many([(theirs, x[0])]) is None  # the C kernel cannot read PyTorch's layout
    assert quantized_copy(nn.Linear(256, 40, bias=False)).pytorch_layout is False  # rows not in blocks of 16
