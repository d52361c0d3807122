"""SAM's attention in docconv's kernel (cpu/kernels/cpu_attention.c), bfloat16 on AMX and float32 on the
variant's vectors, against exact attention and torch's path; and the windows' padding."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from deepseek_ocr.configuration import SamConfig
from deepseek_ocr.cpu import library
from deepseek_ocr.cpu.dispatch import attach_fast_paths
from deepseek_ocr.cpu.sam import CpuSamAttention, CpuSamMlp
from deepseek_ocr.sam import SamAttention, SamMlp, window_partition, window_unpartition


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


def test_head_dims_other_than_64_stay_on_torch(kernel):
    attention = SamAttention(SamConfig(width=64, heads=2), rel_pos_size=8).to(torch.bfloat16)  # head_dim 32
    assert not any("AMX" in line for line in attach_fast_paths(attention))
    float32 = SamAttention(SamConfig(width=64, heads=2), rel_pos_size=8)
    assert not any("attention" in line for line in attach_fast_paths(float32))
    attention.__class__ = CpuSamAttention  # as if attached: the kernel itself refuses these too
    qkv = torch.randn(1, 8, 8, 192).to(torch.bfloat16)
    rel = attention.relative_terms(qkv)
    with torch.inference_mode():
        assert attention._attend_on_amx(qkv, *rel) is None
        assert attention.float()._attend_float32(qkv.float(), 0) is None


# ---- float32 ---------------------------------------------------------------------------------


@pytest.fixture
def float32_kernel():
    kernel = library.load()
    if kernel is None or kernel.float32_isa is None:
        pytest.skip("the kernel's portable variant (or no kernel): SAM's float32 attention stays on torch")
    return kernel


def float32_module(heads: int, size: int, seed: int) -> SamAttention:
    torch.manual_seed(seed)
    attention = SamAttention(SamConfig(width=64 * heads, heads=heads), rel_pos_size=size)
    with torch.no_grad():
        for table in (attention.rel_pos_h, attention.rel_pos_w):
            table.normal_(std=0.3)
    return attention


def test_float32_attention_is_attached_exactly_where_the_kernel_has_vectors():
    kernel = library.load()
    attached = attach_fast_paths(float32_module(heads=2, size=8, seed=0))
    if kernel is not None and kernel.variant != "portable":
        assert attached == [f"SAM attention in float32 on {kernel.float32_isa}"]
        assert kernel.float32_isa in ("AVX2", "AVX-512", "NEON")
    else:
        assert attached == []


@pytest.mark.parametrize(
    ("batch", "heads", "h", "w"),
    [
        pytest.param(1, 3, 48, 48, id="global-2304-keys"),
        pytest.param(5, 2, 14, 14, id="windows-196-keys"),  # 196 = 8 x 24 + 4: a partial block of queries
        pytest.param(2, 2, 10, 13, id="non-square"),  # 13 keys a row: vector and scalar bias columns
        pytest.param(1, 1, 1, 1, id="one-token"),
    ],
)
def test_float32_kernel_attention_is_exact_attention_to_float32_rounding(float32_kernel, batch, heads, h, w):
    attention = float32_module(heads, max(h, w), seed=h * w)
    attach_fast_paths(attention)
    x = torch.randn(batch, h, w, attention.qkv.in_features)
    with torch.inference_mode():
        qkv = attention.qkv(x)
        in_kernel = attention._attend_float32(qkv, 0)
        on_torch = attention._attend(qkv, *attention.relative_terms(qkv))
        exact = float64_attention(qkv, attention)
    assert in_kernel is not None and in_kernel.shape == on_torch.shape == (batch, h, w, 64 * heads)
    kernel_error, torch_error = [(out.double() - exact).abs() for out in (in_kernel, on_torch)]
    # float32 rounds to 2^-24 relative; over thousands of keys both paths stay within ~10 of those.
    scale = exact.abs().max()
    assert kernel_error.max() <= 1e-5 * scale and kernel_error.mean() <= 3 * torch_error.mean() + 1e-9
    if h * w > 1:
        assert not torch.equal(in_kernel, on_torch)


def float64_attention(qkv: torch.Tensor, attention: SamAttention) -> torch.Tensor:
    """The attention of the float32 projections ``qkv``, in float64."""
    b, h, w, _ = qkv.shape
    qkv = qkv.double()
    q, k, v = qkv.reshape(b, h * w, 3, attention.num_heads, attention.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    rel_h, rel_w = copy.deepcopy(attention).double().relative_terms(qkv)
    bias = (rel_h.unsqueeze(-1) + rel_w.unsqueeze(-2)).reshape(b, -1, h * w, h * w)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias).transpose(1, 2).reshape(b, h, w, -1)


def official_windowed_attention(attention: SamAttention, x: torch.Tensor, window: int) -> torch.Tensor:
    """SAM's own order (segment_anything's Block): zero-pad the normalised map to whole windows,
    run the attention module (projections included) over each window, crop."""
    size = (x.shape[1], x.shape[2])
    windows, padded = window_partition(x, window)
    return window_unpartition(attention(windows), window, padded, size)


@pytest.mark.parametrize("size", [20, 14, 9])  # padded to 28 (6 a side), not padded, one padded window
def test_windows_fill_the_padding_with_the_projections_of_zero_positions(size):
    """The padded positions' projections are filled in from the qkv bias, not computed: the same
    attention as SAM's zero padding, to float64 rounding."""
    attention = float32_module(heads=2, size=7, seed=size).double()
    with torch.no_grad():
        attention.qkv.bias.normal_()  # a bias that matters: the padded keys are exactly it
    x = torch.randn(2, size, size, attention.qkv.in_features, dtype=torch.float64)
    with torch.inference_mode():
        official = official_windowed_attention(attention, x, window=7)
        ours = attention(x, window=7)
        torch.testing.assert_close(ours, official, rtol=1e-12, atol=1e-12)
        if size % 7:  # the padded keys take part: zeros there would change the edge windows
            attention.qkv.bias.zero_()
            assert not torch.allclose(attention(x, window=7), official)


@pytest.mark.parametrize(
    ("batch", "h", "w", "window", "qkv_bias"),
    [
        pytest.param(1, 20, 20, 14, True, id="padded-windows"),
        pytest.param(2, 17, 23, 7, True, id="non-square-padded"),
        pytest.param(1, 14, 14, 14, True, id="one-whole-window"),
        pytest.param(1, 9, 12, 7, False, id="no-qkv-bias"),  # the padded positions' projections are zeros
        pytest.param(2, 9, 11, 0, True, id="global"),
    ],
)
def test_float32_windows_in_the_kernel_follow_sams_own_order(float32_kernel, batch, h, w, window, qkv_bias):
    torch.manual_seed(h * w)
    attention = SamAttention(SamConfig(width=128, heads=2, qkv_bias=qkv_bias), rel_pos_size=window or max(h, w))
    with torch.no_grad():
        for table in (attention.rel_pos_h, attention.rel_pos_w):
            table.normal_(std=0.3)
        if qkv_bias:
            attention.qkv.bias.normal_()
    attach_fast_paths(attention)
    assert isinstance(attention, CpuSamAttention)
    x = torch.randn(batch, h, w, attention.qkv.in_features)
    with torch.inference_mode():
        reference = copy.deepcopy(attention).double()
        official = official_windowed_attention(reference, x.double(), window) if window else reference(x.double())
        assert attention._attend_float32(attention.qkv(x), window) is not None
        ours = attention(x, window)
    assert (ours.double() - official).abs().max() <= 1e-5 * official.abs().max()


# ---- the float32 MLP's bias and GELU ---------------------------------------------------------


def test_float32_bias_and_gelu_in_the_kernel_are_torchs_to_float32_precision(float32_kernel):
    x = torch.cat([torch.randn(64, 96) * 4, torch.linspace(-100, 100, 96)[None], torch.zeros(1, 96)])
    bias = torch.randn(96)
    exact = F.gelu(x.double() + bias.double())
    fused = float32_kernel.bias_gelu_(x.clone(), bias)
    torch_error = (F.gelu(x + bias).double() - exact).abs().max()
    # erfc's fit is good to 1.2e-7 relative: a few float32 ulps, as torch's own erf
    assert (fused.double() - exact).abs().max() <= max(4 * torch_error, 1e-6)
    with pytest.raises(ValueError):
        float32_kernel.bias_gelu_(x.clone(), bias[:-1])


def test_float32_mlp_fuses_lin1s_bias_and_gelu(float32_kernel):
    torch.manual_seed(0)
    mlp = SamMlp(SamConfig(width=64, heads=1))
    assert attach_fast_paths(mlp) == [f"SAM MLP's bias and GELU fused in float32 on {float32_kernel.float32_isa}"]
    x = torch.randn(2, 5, 7, 64)
    with torch.inference_mode():
        exact = copy.deepcopy(mlp).double()
        exact.__class__ = SamMlp
        reference = exact(x.double())
        ours = mlp(x)
    assert isinstance(mlp, CpuSamMlp)
    assert (ours.double() - reference).abs().max() <= 1e-5 * reference.abs().max()
