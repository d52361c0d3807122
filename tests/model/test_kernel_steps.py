"""A decoder layer's one-token step in two CPU-kernel calls gives what the torch path gives."""

from __future__ import annotations

import ctypes

import pytest
import torch
from torch import nn
from transformers import DynamicCache

from deepseek_ocr import DeepseekOcrConfig
from deepseek_ocr.cache import GrowingCache
from deepseek_ocr.cpu import library
from deepseek_ocr.cpu.decoder import CpuDecoderLayer, mlp_step
from deepseek_ocr.cpu.dispatch import attach_fast_paths
from deepseek_ocr.cpu.exponent_coding import can_code, code_linears
from deepseek_ocr.cpu.int4 import quantize_linears_int4
from deepseek_ocr.decoder import DecoderLayer, rotary_cos_sin

PROMPT = 37

pytestmark = pytest.mark.skipif(library.load() is None, reason="the CPU kernel cannot be built here (no C compiler)")

_NO_CODING = pytest.mark.skipif(not can_code(), reason="this kernel variant has no vector coded product (portable)")
_NO_INT4 = pytest.mark.skipif(
    library.load() is None or not library.load().int4_fast,
    reason="this kernel variant has no vector int4 path (portable): int4 runs on PyTorch's int4 kernel, without steps",
)
FORMATS = [
    pytest.param("int4", torch.bfloat16, id="int4-bf16", marks=_NO_INT4),
    pytest.param("int4", torch.float32, id="int4-fp32", marks=_NO_INT4),
    pytest.param("coded", torch.bfloat16, id="coded-bf16", marks=_NO_CODING),
    pytest.param("coded", torch.float32, id="coded-fp32", marks=_NO_CODING),
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
    attach_fast_paths(layer)
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


@_NO_INT4
@pytest.mark.parametrize("normalize", [False, True], ids=["top-k as routed", "top-k renormalised"])
@pytest.mark.parametrize("shared", [2, 0], ids=["shared experts", "no shared experts"])
def test_routing_options_decode_the_same_token(normalize, shared):
    layer = kernel_layer("int4", torch.bfloat16, 1, small_config(normalize, shared))
    assert layer.kernel_weights is not None
    assert relative_error(decode_one_token(layer, torch.bfloat16)[0], torch_path(layer, torch.bfloat16)[0]) < 0.02


@_NO_INT4
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
        separate = hidden + layer.mlp(norm(hidden))
    assert relative_error(together - hidden, separate - hidden) < 0.02
    assert relative_error(together - hidden, one_by_one - hidden) < 0.01
    assert not mlp_step(torch.zeros(17, 1, 128, dtype=dtype), norm, router, routed, shared)  # the kernel's limit


def test_the_step_needs_every_projection_in_a_kernel_format():
    config = small_config()
    config.moe_intermediate_size = 32  # down_proj in int4 groups of 32: no fused path
    assert type(kernel_layer("int4", torch.bfloat16, 1, config)) is DecoderLayer
    plain = DecoderLayer(small_config(), 1)
    assert "a decoding step in two kernel calls" not in attach_fast_paths(plain)
    assert type(plain) is DecoderLayer


@_NO_INT4
def test_moving_the_layer_forgets_the_kernel_tables():
    layer = kernel_layer("int4", torch.float32, 1, small_config())
    layer.float()
    assert layer.kernel_weights is None
    attach_fast_paths(layer)  # attached again, the layer reads its weights' new addresses
    assert isinstance(layer, CpuDecoderLayer) and layer.kernel_weights is not None


@_NO_INT4
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


def lower_variants() -> list[str]:
    """Every variant this CPU runs below the one in use (the suite itself runs on that one)."""
    supported = library.supported_variants()
    return list(supported[supported.index(library.load().variant) + 1 :])


@pytest.mark.parametrize("variant", library.VARIANTS)
@pytest.mark.parametrize(("weights", "dtype"), FORMATS)
def test_every_lower_variant_this_cpu_runs_computes_the_same_steps(variant, weights, dtype):
    """A CPU without AVX-512 (or without AVX2) builds a lower variant: its products and whole
    decoding steps give what this machine's variant gives, to float32 rounding (int4: to the
    rounding of its per-group activation scales)."""
    if variant not in lower_variants():
        pytest.skip(f"{variant} is not below this run's variant on this CPU ({library.load().variant})")
    lower = library.CpuKernel(ctypes.CDLL(str(library.build(variant))))
    assert lower.variant == variant
    assert lower.int4_fast == lower.coded_bf16 == (variant != "portable")
    layer = kernel_layer(weights, dtype, 1, small_config())
    attention, routed, shared = layer.kernel_weights
    torch.manual_seed(6)
    hidden = (3 * torch.randn(3, 128)).to(dtype)
    norm = (layer.post_attention_layernorm.weight, 1e-6)
    router = (layer.mlp.gate.weight, 3, False, 1.0)
    stepped = {}
    for name, kernel in (("lower", lower), ("this", library.load())):
        stepped[name] = hidden.clone()
        assert kernel.mlp_step(stepped[name], norm, router, routed.descriptors, shared.descriptors)
    assert relative_error(stepped["lower"] - hidden, stepped["this"] - hidden) < 0.01
    q_proj = layer.self_attn.q_proj
    x = torch.randn(5, 128).to(dtype)
    torch.testing.assert_close(
        lower.linear(x, q_proj.descriptor(), 128), library.load().linear(x, q_proj.descriptor(), 128),
        atol=1e-2, rtol=1e-2,
    )  # fmt: skip
