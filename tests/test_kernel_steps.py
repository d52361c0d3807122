"""A decoder layer's one-token step in two CPU-kernel calls gives what the torch path gives."""

from __future__ import annotations

import ctypes
import shutil
import subprocess

import pytest
import torch
from torch import nn
from transformers import DynamicCache

from deepseek_ocr import DeepseekOcrConfig, cpu_kernel
from deepseek_ocr.cache import GrowingCache
from deepseek_ocr.decoder import DecoderLayer, rotary_cos_sin
from deepseek_ocr.exponent_coding import can_code, code_linears
from deepseek_ocr.kernel_linear import mlp_step
from deepseek_ocr.quantization import quantize_linears_int4

PROMPT = 37

FORMATS = [
    pytest.param("int4", torch.bfloat16, id="int4-bf16"),
    pytest.param("int4", torch.float32, id="int4-fp32"),
    pytest.param(
        "coded", torch.bfloat16, id="coded-bf16", marks=pytest.mark.skipif(not can_code(), reason="no AVX512-BF16")
    ),
]


def small_config(normalize: bool = False, shared: int = 2) -> DeepseekOcrConfig:
    return DeepseekOcrConfig(
        hidden_size=128, intermediate_size=192, moe_intermediate_size=64, num_attention_heads=4,
        num_key_value_heads=4, n_routed_experts=8, num_experts_per_tok=3, n_shared_experts=shared,
        norm_topk_prob=normalize, routed_scaling_factor=1.5, first_k_dense_replace=1,
    )  # fmt: skip


def kernel_layer(weights: str, dtype: torch.dtype, layer_idx: int, config: DeepseekOcrConfig) -> DecoderLayer:
    torch.manual_seed(layer_idx)
    layer = DecoderLayer(config, layer_idx).to(dtype)
    for module in layer.modules():
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.08)
    for norm in (layer.input_layernorm, layer.post_attention_layernorm):
        nn.init.normal_(norm.weight, mean=1.0, std=0.2)
    if hasattr(layer.mlp, "gate"):
        nn.init.normal_(layer.mlp.gate.weight, std=0.1)
        layer.mlp.gate.weight.data = layer.mlp.gate.weight.data.float()
    names = [name for name, module in layer.named_modules() if isinstance(module, nn.Linear)]
    if weights == "int4":
        quantize_linears_int4(layer, names)
    else:
        code_linears(layer, names)
    layer.prepare_kernel_step()
    return layer


def decode_one_token(layer: DecoderLayer, dtype: torch.dtype, cache=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer's output for one token after a prompt, and the keys it cached."""
    torch.manual_seed(99)
    # Inputs far from unit RMS, so that a norm left out could not pass for one applied.
    prompt, token = (3 * torch.randn(1, PROMPT, 128)).to(dtype), (3 * torch.randn(1, 1, 128)).to(dtype)
    cache = cache if cache is not None else GrowingCache()
    for index in range(layer.self_attn.layer_idx):  # earlier layers' entries, so that the indices line up
        cache.update(torch.zeros(1, 4, PROMPT, 32, dtype=dtype), torch.zeros(1, 4, PROMPT, 32, dtype=dtype), index)
    causal = torch.full((PROMPT, PROMPT), -float("inf")).triu(1).to(dtype)[None, None]
    with torch.inference_mode():
        layer(prompt, rotary_cos_sin(torch.arange(PROMPT)[None], 32, 10000.0, dtype), causal, cache)
        out = layer(token, rotary_cos_sin(torch.tensor([[PROMPT]]), 32, 10000.0, dtype), None, cache)
    return out, cache.layers[layer.self_attn.layer_idx].keys.clone()


def torch_path(layer: DecoderLayer, dtype: torch.dtype, cache=None) -> tuple[torch.Tensor, torch.Tensor]:
    saved, layer.kernel_weights = layer.kernel_weights, None
    try:
        return decode_one_token(layer, dtype, cache)
    finally:
        layer.kernel_weights = saved


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.mark.parametrize(("weights", "dtype"), FORMATS)
@pytest.mark.parametrize("layer_idx", [0, 1], ids=["dense layer", "MoE layer"])
def test_a_layer_decodes_the_same_token_in_two_kernel_calls(weights, dtype, layer_idx):
    layer = kernel_layer(weights, dtype, layer_idx, small_config())
    assert layer.kernel_weights is not None
    fused, fused_keys = decode_one_token(layer, dtype)
    separate, separate_keys = torch_path(layer, dtype)
    assert fused.shape == separate.shape == (1, 1, 128) and fused.dtype == dtype
    assert not torch.equal(fused, separate)  # the kernel ran: it rounds differently
    assert fused_keys.shape == separate_keys.shape == (1, 4, PROMPT + 1, 32)
    assert relative_error(fused_keys[..., -1, :], separate_keys[..., -1, :]) < 0.02  # the appended key
    # Quantized activations (int4) and float32 intermediates differ from torch's rounding by ~1%.
    assert relative_error(fused, separate) < 0.02


@pytest.mark.parametrize("normalize", [False, True], ids=["top-k as routed", "top-k renormalised"])
@pytest.mark.parametrize("shared", [2, 0], ids=["shared experts", "no shared experts"])
def test_routing_options_decode_the_same_token(normalize, shared):
    layer = kernel_layer("int4", torch.bfloat16, 1, small_config(normalize, shared))
    assert layer.kernel_weights is not None
    assert relative_error(decode_one_token(layer, torch.bfloat16)[0], torch_path(layer, torch.bfloat16)[0]) < 0.02


def test_a_cache_that_cannot_grow_in_place_leaves_attention_to_torch():
    layer = kernel_layer("int4", torch.bfloat16, 1, small_config())
    fused, fused_keys = decode_one_token(layer, torch.bfloat16, DynamicCache())
    separate, separate_keys = torch_path(layer, torch.bfloat16, DynamicCache())
    assert torch.equal(fused_keys, separate_keys)  # torch's attention in both
    assert not torch.equal(fused, separate)  # the MLP block in the kernel
    assert relative_error(fused, separate) < 0.02


@pytest.mark.parametrize(("weights", "dtype"), FORMATS)
def test_several_sequences_go_through_the_mlp_step_together(weights, dtype):
    """Batch decoding: each expert reads its weights once for every row routed to it."""
    layer = kernel_layer(weights, dtype, 1, small_config())
    torch.manual_seed(5)
    hidden = (3 * torch.randn(5, 1, 128)).to(dtype)
    norm, router = layer.post_attention_layernorm, layer.mlp.gate
    _, routed, shared = layer.kernel_weights
    together = hidden.clone()
    assert mlp_step(together, norm, router, routed, shared)
    one_by_one = hidden.clone()
    for row in one_by_one:
        assert mlp_step(row[None], norm, router, routed, shared)
    with torch.inference_mode():
        separate = hidden + layer.mlp(hidden, norm=norm)
    assert relative_error(together - hidden, separate - hidden) < 0.02
    assert relative_error(together - hidden, one_by_one - hidden) < 0.01
    assert not mlp_step(torch.zeros(17, 1, 128, dtype=dtype), norm, router, routed, shared)  # the kernel's limit


def test_the_step_needs_every_projection_in_a_kernel_format():
    config = small_config()
    config.moe_intermediate_size = 32  # down_proj in int4 groups of 32: no fused path
    assert kernel_layer("int4", torch.bfloat16, 1, config).kernel_weights is None
    plain = DecoderLayer(small_config(), 1)
    plain.prepare_kernel_step()
    assert plain.kernel_weights is None


def test_moving_the_layer_forgets_the_kernel_tables():
    layer = kernel_layer("int4", torch.float32, 1, small_config())
    layer.float()
    assert layer.kernel_weights is None


def test_the_cache_grows_when_the_kernel_appends_past_its_room():
    layer = kernel_layer("int4", torch.bfloat16, 0, small_config())
    cache = GrowingCache()
    dtype = torch.bfloat16
    with torch.inference_mode():
        layer(torch.randn(1, 3, 128, dtype=dtype), rotary_cos_sin(torch.arange(3)[None], 32, 10000.0, dtype), None, cache)
        buffer = cache.layers[0]._key_buffer
        for position in range(3, 3 + buffer.shape[-2]):
            rotary = rotary_cos_sin(torch.tensor([[position]]), 32, 10000.0, dtype)
            layer(torch.randn(1, 1, 128, dtype=dtype), rotary, None, cache)
    assert cache.get_seq_length() == 3 + buffer.shape[-2]
    assert cache.layers[0]._key_buffer.data_ptr() != buffer.data_ptr()
    assert torch.equal(cache.layers[0].keys[..., : buffer.shape[-2], :], buffer)


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
def test_a_build_without_avx512_declines_the_steps_and_keeps_int4_products(tmp_path):
    """What a machine without AVX-512 compiles: int4's portable loops, and no whole-step paths."""
    library = tmp_path / "portable.so"
    subprocess.run(
        ["cc", "-O2", "-fopenmp", "-fPIC", "-shared", "-o", str(library), *map(str, cpu_kernel.SOURCES), "-lm"], check=True
    )
    portable = cpu_kernel.CpuKernel(ctypes.CDLL(str(library)))
    assert not portable.int4_vnni and not portable.coded_bf16
    layer = kernel_layer("int4", torch.bfloat16, 1, small_config())
    attention, routed, shared = layer.kernel_weights
    hidden = torch.randn(128, dtype=torch.bfloat16)
    norm = (layer.post_attention_layernorm.weight, 1e-6)
    router = (layer.mlp.gate.weight, 3, False, 1.0)
    assert not portable.mlp_step(hidden, norm, router, routed.descriptors, shared.descriptors)
    x = torch.randn(3, 128, dtype=torch.bfloat16)
    q_proj = layer.self_attn.q_proj
    expected = cpu_kernel.load().linear(x, q_proj.descriptor(), 128)
    torch.testing.assert_close(portable.linear(x, q_proj.descriptor(), 128), expected, atol=1e-2, rtol=1e-2)
