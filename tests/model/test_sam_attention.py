"""SAM's bfloat16 attention on AMX (cpu/kernels/cpu_attention.c) against exact float32 attention and torch's path."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from deepseek_ocr.configuration import SamConfig
from deepseek_ocr.cpu import library
from deepseek_ocr.cpu.dispatch import attach_fast_paths
from deepseek_ocr.cpu.sam import CpuSamAttention
from deepseek_ocr.sam import SamAttention


@pytest.fixture
def kernel():
    kernel = library.load()
    if kernel is None or not kernel.amx_attention:
        pytest.skip("no AMX on this CPU (or DEEPSEEK_OCR_CPU_AMX=0, or no kernel)")
    yield kernel
    kernel.use_amx(True)


def attention_module(heads: int, size: int, seed: int) -> CpuSamAttention:
    """A SAM attention of head_dim 64 (SAM-B's) with weights and relative-position tables that
    matter, in bfloat16 with its CPU variant attached as the loader attaches it."""
    torch.manual_seed(seed)
    attention = SamAttention(SamConfig(width=64 * heads, heads=heads), rel_pos_size=size)
    with torch.no_grad():
        for table in (attention.rel_pos_h, attention.rel_pos_w):
            table.normal_(std=0.3)  # bias terms of a few units, like the real checkpoint's global blocks
    attention = attention.to(torch.bfloat16)
    assert any("SAM attention on AMX" in line for line in attach_fast_paths(attention))
    return attention


def exact_attention(attention: SamAttention, x: torch.Tensor) -> torch.Tensor:
    """The module's attention in float32 from the same bfloat16 q, k, v and bias terms (bias rounded as torch's)."""
    b, h, w, width = x.shape
    qkv = attention.qkv(x)
    q, k, v = qkv.reshape(b, h * w, 3, attention.num_heads, attention.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    rel_h, rel_w = attention.relative_terms(qkv)
    bias = (rel_h.float().unsqueeze(-1) + rel_w.float().unsqueeze(-2)).to(torch.bfloat16).float()
    out = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=bias.reshape(b, -1, h * w, h * w))
    return out.transpose(1, 2).reshape(b, h, w, width)


@pytest.mark.parametrize(
    ("batch", "heads", "h", "w"),
    [
        pytest.param(1, 3, 32, 32, id="global-1024-keys"),
        pytest.param(5, 2, 14, 14, id="windows-196-keys"),  # 196 = 6 x 32 + 4: a partial block of queries
        pytest.param(2, 2, 10, 13, id="non-square"),
        pytest.param(1, 1, 1, 1, id="one-token"),
    ],
)
def test_kernel_attention_is_exact_attention_to_bfloat16_rounding(kernel, batch, heads, h, w):
    attention = attention_module(heads, max(h, w), seed=h * w)
    x = torch.randn(batch, h, w, attention.qkv.in_features).to(torch.bfloat16)
    with torch.inference_mode():
        qkv = attention.qkv(x)
        exact = exact_attention(attention, x)
        on_amx = attention._attend_on_amx(qkv, *attention.relative_terms(qkv))
        on_torch = attention._attend(qkv, *attention.relative_terms(qkv))
    assert on_amx is not None and on_amx.shape == on_torch.shape == (batch, h, w, 64 * heads)
    amx_error, torch_error = [(out.float() - exact).abs() for out in (on_amx, on_torch)]
    # bfloat16 output rounding is 2^-9 relative; both paths stay within a few of those, alike.
    scale = exact.abs().max()
    assert amx_error.max() <= 0.02 * scale and amx_error.mean() <= 1.2 * torch_error.mean() + 1e-6
    if h * w > 1:  # the sums run in other orders: identical outputs would mean the kernel never ran
        assert not torch.equal(on_amx, on_torch)


def test_the_module_follows_float32_on_amx_and_amx_can_be_switched_off(kernel):
    attention = attention_module(heads=4, size=24, seed=3)
    x = torch.randn(1, 24, 24, attention.qkv.in_features)
    with torch.inference_mode():
        reference = copy.deepcopy(attention).float()(x)
        on_amx = attention(x.to(torch.bfloat16))
        kernel.use_amx(False)
        assert not kernel.amx_attention
        on_torch = attention(x.to(torch.bfloat16))
    for out in (on_amx, on_torch):
        assert F.cosine_similarity(out.float().flatten(), reference.flatten(), dim=0) > 0.9999
    assert not torch.equal(on_amx, on_torch)


def test_head_dims_other_than_64_and_float32_stay_on_torch(kernel):
    attention = SamAttention(SamConfig(width=64, heads=2), rel_pos_size=8).to(torch.bfloat16)  # head_dim 32
    assert not any("AMX" in line for line in attach_fast_paths(attention))
    attention.__class__ = CpuSamAttention  # as if attached: the kernel itself refuses these too
    qkv = torch.randn(1, 8, 8, 192).to(torch.bfloat16)
    rel = attention.relative_terms(qkv)
    with torch.inference_mode():
        assert attention._attend_on_amx(qkv, *rel) is None
        assert attention.float()._attend_on_amx(qkv.float(), *(t.float() for t in rel)) is None
