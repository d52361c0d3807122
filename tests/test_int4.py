"""Int4Linear: the grouped 4-bit weight, its C kernel and the torch fallback."""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from deepseek_ocr import decoder, int4_kernel
from deepseek_ocr.cache import GrowingCache
from deepseek_ocr.decoder import DecoderAttention, MoeMlp, SwiGluMlp, rotary_cos_sin
from deepseek_ocr.quantization import (
    KERNEL_MAX_ROWS,
    Int4Linear,
    dequantize_int4,
    int4_group_size,
    int4_linear_many,
    quantize_linears_int4,
    stack_int4_experts,
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
    error = (layer.dequantized_weight().float().reshape(out_features, -1, group) - weight).abs()
    # Rounding costs half a step; the bfloat16 scale, zero and output add up to ~4% of a step.
    assert (error <= step * 0.56 + 1e-6).all()


def test_forward_matches_the_dequantized_weight_for_any_batch_shape():
    torch.manual_seed(1)
    linear = nn.Linear(128, 64, bias=True, dtype=torch.bfloat16)
    layer = quantized_copy(linear)
    x = torch.randn(2, 3, 128, dtype=torch.bfloat16)
    expected = x.float() @ layer.dequantized_weight().float().T + linear.bias.float()
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
    kernel = int4_kernel.load()
    assert kernel is not None
    assert int4_kernel._cache_dir() in Path(kernel.library._name).parents


def test_the_c_dequantization_matches_the_torch_one():
    layer = quantized_copy(nn.Linear(192, 40, bias=False))
    unpacked = dequantize_int4(layer.packed_weight, layer.scale_and_zero, layer.group_size)
    torch.testing.assert_close(layer.dequantized_weight(), unpacked, atol=0, rtol=2**-7)


@pytest.mark.parametrize("rows", [1, 3, 4, 5, 9, KERNEL_MAX_ROWS])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("out_features", "in_features"), [(50, 1280), (7, 64), (33, 96)])
def test_kernel_vector_and_portable_paths_match_the_float_product(rows, dtype, out_features, in_features):
    """Activations are quantized to int8 per group, so the product is close to, not equal to, the float one."""
    torch.manual_seed(rows)
    layer = quantized_copy(nn.Linear(in_features, out_features, bias=False))
    x = torch.randn(rows, in_features).to(dtype)
    expected = x.float() @ layer.dequantized_weight().float().T
    kernel = int4_kernel.load()
    for portable in (False, True):
        out = kernel.linear(x, layer.packed_weight, layer.scale_and_zero, layer.group_size, portable=portable)
        assert out.dtype == dtype and out.shape == (rows, out_features)
        error = (out.float() - expected).norm() / expected.norm()
        assert error < 0.02, (portable, error)


def test_prefill_sized_inputs_and_the_fallback_agree_with_the_kernel(monkeypatch):
    torch.manual_seed(3)
    layer = quantized_copy(nn.Linear(256, 96, bias=False, dtype=torch.bfloat16))
    decode = torch.randn(1, 256, dtype=torch.bfloat16)
    prefill = torch.randn(KERNEL_MAX_ROWS + 1, 256, dtype=torch.bfloat16)
    with_kernel = layer(decode).float(), layer(prefill).float()
    monkeypatch.setattr(int4_kernel, "load", lambda: None)
    without_kernel = layer(decode).float(), layer(prefill).float()
    torch.testing.assert_close(without_kernel[0], with_kernel[0], atol=0.02, rtol=0.02)
    torch.testing.assert_close(without_kernel[1], with_kernel[1], atol=1e-2, rtol=1e-2)


def test_kernel_refuses_a_width_its_groups_do_not_divide():
    layer = quantized_copy(nn.Linear(64, 8, bias=False))
    with pytest.raises(ValueError, match="int4 kernel refused"):
        int4_kernel.load().linear(torch.randn(1, 64), layer.packed_weight, layer.scale_and_zero, 48)


def test_grouped_products_equal_one_call_each():
    """A decoding step's projections issued together give what each layer gives alone."""
    torch.manual_seed(4)
    shared_input = torch.randn(1, 1, 128, dtype=torch.bfloat16)
    own_input = torch.randn(1, 1, 64, dtype=torch.bfloat16)
    layers = [quantized_copy(nn.Linear(128, n, bias=False)) for n in (96, 5, 128)]
    narrow = quantized_copy(nn.Linear(64, 40, bias=False))
    pairs = [(layer, shared_input) for layer in layers] + [(narrow, own_input)]
    grouped = int4_linear_many(pairs)
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
                (quantized_copy(nn.Linear(96, 8, bias=False)), torch.randn(1, 96)),
            ],
            id="mixed group sizes",
        ),
    ],
)
def test_products_the_grouped_call_cannot_take_are_left_to_the_caller(pairs):
    assert int4_linear_many(pairs()) is None


def int4_mlp(hidden: int, intermediate: int) -> SwiGluMlp:
    mlp = SwiGluMlp(hidden, intermediate)
    for linear in (mlp.gate_proj, mlp.up_proj, mlp.down_proj):
        nn.init.normal_(linear.weight, std=0.05)
    quantize_linears_int4(mlp, ["gate_proj", "up_proj", "down_proj"])
    return mlp


def test_experts_stack_only_when_every_projection_can_take_the_fused_path():
    assert stack_int4_experts([int4_mlp(128, 32), int4_mlp(128, 32)]) is None  # down_proj in groups of 32
    assert stack_int4_experts([int4_mlp(128, 64), int4_mlp(128, 128)]) is None  # shapes differ
    assert stack_int4_experts([SwiGluMlp(128, 64)]) is None  # not int4
    experts = [int4_mlp(128, 64) for _ in range(3)]
    before = [mlp.up_proj.packed_weight.clone() for mlp in experts]
    stacks = stack_int4_experts(experts)
    assert [t.shape[0] for t in stacks] == [3] * 6
    for index, mlp in enumerate(experts):  # each expert now reads its slice of the stack
        assert torch.equal(mlp.up_proj.packed_weight, before[index])
        assert mlp.up_proj.packed_weight.data_ptr() == stacks[2][index].data_ptr()


@pytest.mark.parametrize("normalize", [False, True], ids=["top-k as routed", "top-k renormalised"])
def test_a_moe_layer_decodes_the_same_token_fused_or_not(monkeypatch, normalize):
    """Norm + router + routed and shared experts in one call, against the torch path."""
    torch.manual_seed(6)
    config = SimpleNamespace(
        hidden_size=128, moe_intermediate_size=64, n_routed_experts=8, n_shared_experts=2,
        num_experts_per_tok=3, norm_topk_prob=normalize, routed_scaling_factor=1.5,
    )  # fmt: skip
    layer = MoeMlp(config)
    nn.init.normal_(layer.gate.weight, std=0.1)
    layer.gate.weight.data = layer.gate.weight.data.float()
    names = [n for n, m in layer.named_modules() if isinstance(m, nn.Linear)]
    for name in names:
        nn.init.normal_(layer.get_submodule(name).weight, std=0.05)
    quantize_linears_int4(layer, names)
    layer.stack_int4_experts()
    assert layer.int4_stacks is not None and layer.int4_stacks[0].shape == (8, 64, 64)
    norm = decoder.RMSNorm(128, 1e-6).to(torch.bfloat16)
    nn.init.normal_(norm.weight, mean=1.0, std=0.2)
    token = (3 * torch.randn(1, 1, 128)).to(torch.bfloat16)
    fused = layer(token, norm=norm)
    monkeypatch.setattr(decoder, "int4_moe_step", lambda *args: None)
    separate = layer(token, norm=norm)
    assert fused.shape == separate.shape == (1, 1, 128) and fused.dtype == torch.bfloat16
    assert not torch.equal(fused, separate)  # the kernel ran: it rounds differently
    assert (fused.float() - separate.float()).norm() / separate.float().norm() < 0.02


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_attention_decodes_the_same_fused_or_not(monkeypatch, dtype):
    """Input norm + projections + rotary, then attention over the cache + o_proj, each in one kernel call."""
    torch.manual_seed(7)
    config = SimpleNamespace(
        hidden_size=128, num_attention_heads=4, head_dim=32, attention_bias=False, rope_theta=10000.0,
        _attn_implementation="sdpa",
    )  # fmt: skip
    attention = DecoderAttention(config, layer_idx=0)
    norm = decoder.RMSNorm(128, 1e-6).to(dtype)
    nn.init.normal_(norm.weight, mean=1.0, std=0.2)
    names = ["q_proj", "k_proj", "v_proj", "o_proj"]
    for name in names:
        nn.init.normal_(attention.get_submodule(name).weight, std=0.1)
    quantize_linears_int4(attention, names)
    # Inputs far from unit RMS, so that a norm left out could not pass for one applied.
    prompt, token = (3 * torch.randn(1, 37, 128)).to(dtype), (3 * torch.randn(1, 1, 128)).to(dtype)

    def decode_one_token() -> torch.Tensor:
        cache = GrowingCache()
        causal = torch.full((37, 37), -float("inf")).triu(1).to(dtype)[None, None]
        attention(prompt, rotary_cos_sin(torch.arange(37)[None], 32, 10000.0, dtype), causal, cache, norm)
        return attention(token, rotary_cos_sin(torch.tensor([[37]]), 32, 10000.0, dtype), None, cache, norm)

    fused = decode_one_token()
    monkeypatch.setattr(decoder, "int4_qkv_rotary", lambda *args: None)  # torch path, norm included
    monkeypatch.setattr(decoder, "int4_attend_project", lambda *args: None)
    separate = decode_one_token()
    assert fused.shape == separate.shape == (1, 1, 128) and fused.dtype == dtype
    assert not torch.equal(fused, separate)  # the kernel ran: it rounds differently
    assert (fused.float() - separate.float()).norm() / separate.float().norm() < 0.02


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
def test_a_build_for_a_cpu_without_vnni_computes_the_same_products(tmp_path):
    """What a machine without AVX-512 VNNI compiles: the portable loops, and no whole-step paths."""
    library = tmp_path / "portable.so"
    subprocess.run(
        ["cc", "-O2", "-fopenmp", "-fPIC", "-shared", "-o", str(library), str(int4_kernel.SOURCE), "-lm"], check=True
    )
    portable = int4_kernel.Int4Kernel(ctypes.CDLL(str(library)))
    assert not portable.vnni
    torch.manual_seed(8)
    layer = quantized_copy(nn.Linear(256, 72, bias=False))
    x = torch.randn(3, 256, dtype=torch.bfloat16)
    out = portable.linear(x, layer.packed_weight, layer.scale_and_zero, 64)
    torch.testing.assert_close(out, int4_kernel.load().linear(x, layer.packed_weight, layer.scale_and_zero, 64), atol=1e-2, rtol=1e-2)
    stacks = stack_int4_experts([int4_mlp(128, 64) for _ in range(4)])
    norm = (torch.ones(128), 1e-6)
    assert portable.moe_step(torch.randn(128), norm, torch.randn(4, 128), 2, False, 1.0, stacks, None) is None


@pytest.mark.parametrize("kernel", ["none", "no vnni"])
def test_without_the_vnni_kernel_layers_use_pytorchs_kernel_on_the_same_values(monkeypatch, tmp_path, kernel):
    torch.manual_seed(9)
    linear = nn.Linear(256, 48, bias=False, dtype=torch.bfloat16)
    ours = quantized_copy(linear)
    if kernel == "none":
        monkeypatch.setattr(int4_kernel, "load", lambda: None)
    else:
        library = tmp_path / "portable.so"
        subprocess.run(["cc", "-O2", "-fopenmp", "-fPIC", "-shared", "-o", str(library), str(int4_kernel.SOURCE), "-lm"], check=True)
        portable = int4_kernel.Int4Kernel(ctypes.CDLL(str(library)))
        monkeypatch.setattr(int4_kernel, "load", lambda: portable)
    theirs = quantized_copy(linear)
    assert theirs.pytorch_layout and not ours.pytorch_layout
    assert torch.equal(theirs.dequantized_weight(), ours.dequantized_weight())
    x = torch.randn(2, 1, 256)
    torch.testing.assert_close(theirs(x), x @ ours.dequantized_weight().float().T, atol=0.03, rtol=0.02)
    assert theirs(x).dtype == torch.float32
    assert int4_linear_many([(theirs, x[0])]) is None  # the C kernel cannot read PyTorch's layout
    assert quantized_copy(nn.Linear(256, 40, bias=False)).pytorch_layout is False  # rows not in blocks of 16
