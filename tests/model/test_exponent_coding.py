"""Exponent-coded bfloat16: lossless, three quarters of the bytes, multiplied by the CPU kernel."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional

from deepseek_ocr import load_model, plan_runtime
from deepseek_ocr.cpu import library
from deepseek_ocr.cpu import linear as kernel_linear
from deepseek_ocr.cpu.exponent_coding import (
    ExponentCodedLinear,
    can_code,
    code_linears,
    decode_exponent_coded,
    exponent_coded_bytes,
)
from deepseek_ocr.cpu.int4 import quantize_linears_int4
from deepseek_ocr.decoder import MoeRouter
from deepseek_ocr.loading import estimate_weight_bytes

from .test_quantization import case_inputs

pytestmark = pytest.mark.skipif(library.load() is None, reason="the CPU kernel cannot be built here (no C compiler)")
needs_vector_product = pytest.mark.skipif(
    not can_code(), reason="this kernel variant has no vector coded product (portable): bfloat16 stays uncoded"
)


def normal_weight(out_features: int, in_features: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (0.02 * torch.randn(out_features, in_features, generator=generator)).to(torch.bfloat16)


def awkward_weight() -> torch.Tensor:
    """Rows no 16 exponents can cover, and every special value a bfloat16 can hold."""
    weight = normal_weight(6, 1280)
    weight[0] = torch.logspace(-120, 120, 1280, base=2).to(torch.bfloat16) * torch.sign(torch.randn(1280))
    weight[1, :8] = torch.tensor([0.0, -0.0, float("inf"), -float("inf"), float("nan"), 1e-40, -1e-39, 3e38])
    weight[2] = 0.0
    weight[3, ::5] = 2.0**-100
    return weight


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(a.view(torch.int16), b.view(torch.int16))


@pytest.mark.parametrize("shape", [(896, 1280), (1280, 896), (33, 200), (5, 32), (3, 6848)])
def test_coding_gives_back_every_bit(shape):
    weight = normal_weight(*shape)
    layer = ExponentCodedLinear.from_weight(weight)
    assert same_bits(layer.decoded_weight(), weight)
    assert same_bits(decode_exponent_coded(layer.codes, layer.tables, layer.exception_rows, layer.exceptions, shape[1]), weight)


def test_rows_beyond_sixteen_exponents_and_special_values_survive_coding():
    weight = awkward_weight()
    layer = ExponentCodedLinear.from_weight(weight)
    assert layer.exceptions.shape[0] > 1000  # row 0 spans ~240 exponents, of both signs
    assert same_bits(layer.decoded_weight(), weight)
    torch_decoded = decode_exponent_coded(layer.codes, layer.tables, layer.exception_rows, layer.exceptions, 1280)
    assert same_bits(torch_decoded, weight)


def test_a_decoder_weight_takes_three_quarters_of_its_bytes():
    """12 bits a weight, a 16-byte table and a 4-byte exception offset per row, 4 bytes an exception."""
    for shape in [(896, 1280), (1280, 896), (1280, 6848)]:
        layer = ExponentCodedLinear.from_weight(normal_weight(*shape))
        exceptions = layer.exceptions.shape[0]
        assert exceptions < shape[0], shape  # rows of more than 16 distinct exponents are rare
        assert layer.coded_bytes == 1.5 * shape[0] * shape[1] + 20 * shape[0] + 4 + 4 * exceptions, shape
        assert layer.coded_bytes < 0.765 * 2 * shape[0] * shape[1]
        assert layer.coded_bytes == exponent_coded_bytes(*shape, exceptions), shape
    odd = ExponentCodedLinear.from_weight(normal_weight(5, 100))  # inputs past 100 padded to 128
    assert odd.coded_bytes == exponent_coded_bytes(5, 100, odd.exceptions.shape[0])


@needs_vector_product
def test_the_memory_estimate_counts_the_coded_model_to_the_byte():
    model, _ = coded_model(dtype="bfloat16", quant="none")
    held = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    # loading keeps the routers' small weights in float32 (exact), which the estimate counts as bf16
    routers = sum(m.weight.numel() * 2 for m in model.modules() if isinstance(m, MoeRouter))
    held_bytes = sum(t.numel() * t.element_size() for t in held.values()) - routers
    assert held_bytes == estimate_weight_bytes(model.config, torch.bfloat16, coded=True)


def test_only_bfloat16_weights_are_coded():
    with pytest.raises(ValueError, match="bfloat16"):
        ExponentCodedLinear.from_weight(torch.randn(4, 64))


def float_reference(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """What the kernel computes: x as it is (float32 or bfloat16) times the exact weight."""
    return x.double() @ weight.double().T


def within_float32_summation(out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> bool:
    """out is x @ weight.T with exact products, up to float32 summation error."""
    scale = x.double().abs() @ weight.double().abs().T
    return bool(((out.double() - float_reference(x, weight)).abs() <= 1e-6 * scale + 1e-30).all())


def kernel_products(x: torch.Tensor, layer: ExponentCodedLinear) -> dict[str, torch.Tensor]:
    """x @ W.T in float32 through the kernel's vector path (where this variant has one) and its plain C loops."""
    kernel = library.load()
    paths = {"portable": True, "vectors": False} if can_code() else {"portable": True}
    return {
        name: kernel.linear(x, layer.descriptor(), layer.out_features, portable=portable, out_dtype=torch.float32)
        for name, portable in paths.items()
    }


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 3, 4, 5, 9, ExponentCodedLinear.kernel_max_rows])
@pytest.mark.parametrize(("out_features", "in_features"), [(50, 1280), (7, 64), (33, 96), (1280, 896)])
def test_products_equal_the_exact_weights_product_to_float32_rounding(rows, out_features, in_features, dtype):
    """float32 activations are multiplied as they are (a float32 model's), bfloat16 ones exactly."""
    weight = normal_weight(out_features, in_features, seed=rows)
    layer = ExponentCodedLinear.from_weight(weight)
    x = torch.randn(rows, in_features, generator=torch.Generator().manual_seed(rows)).to(dtype)
    for path, out in kernel_products(x, layer).items():
        assert out.shape == (rows, out_features)
        assert within_float32_summation(out, x, weight), path
    if dtype == torch.float32:  # the layer itself: float32 in, float32 out, no rounding anywhere
        out = layer(x)
        assert out.dtype == torch.float32 and within_float32_summation(out, x, weight)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_exceptions_and_special_values_are_multiplied_too(dtype):
    weight = awkward_weight()[[0, 2, 3]]  # the rows with exceptions, zeros and tiny values (no inf or nan)
    layer = ExponentCodedLinear.from_weight(weight)
    x = torch.randn(2, 1280, generator=torch.Generator().manual_seed(5)).to(dtype)
    for path, out in kernel_products(x, layer).items():
        assert within_float32_summation(out, x, weight), path
    special = ExponentCodedLinear.from_weight(awkward_weight()[1:2])
    for out in kernel_products(x, special).values():
        assert torch.isnan(out).all()  # inf - inf + nan


@pytest.fixture
def kernel_with_amx():
    kernel = library.load()
    if not kernel.amx_bf16:
        pytest.skip("no AMX on this CPU (or DEEPSEEK_OCR_CPU_AMX=0)")
    yield kernel
    kernel.use_amx(True)


@pytest.mark.parametrize("rows", [2, 4, 16, 17, 24])
def test_batched_products_on_amx_equal_the_exact_product(kernel_with_amx, rows):
    # 100 outputs: three blocks of 32 on AMX and 4 left to the vector blocks; 21 chunks of 64 inputs.
    weight = normal_weight(100, 1344, seed=rows)
    weight[:, :40] = torch.logspace(-30, -4, 40, base=2).to(torch.bfloat16)  # too many exponents for 16
    layer = ExponentCodedLinear.from_weight(weight)
    assert (layer.exception_rows.diff() > 0).all()  # every row's exceptions are added back on AMX too
    x = torch.randn(rows, 1344, generator=torch.Generator().manual_seed(rows)).to(torch.bfloat16)
    on_amx = kernel_with_amx.linear(x, layer.descriptor(), 100, out_dtype=torch.float32)
    kernel_with_amx.use_amx(False)
    assert not kernel_with_amx.amx_bf16
    on_vectors = kernel_with_amx.linear(x, layer.descriptor(), 100, out_dtype=torch.float32)
    for out in (on_amx, on_vectors):
        assert within_float32_summation(out, x, weight)
    # The two sum in different orders: equal outputs would mean the AMX path never ran.
    assert not torch.equal(on_amx, on_vectors)


def test_the_environment_switch_keeps_batches_off_amx(kernel_with_amx, monkeypatch):
    monkeypatch.setenv(library.AMX_SWITCH, "0")
    assert not library.CpuKernel(kernel_with_amx.library).amx_bf16  # the library's switch is process-wide
    kernel_with_amx.use_amx(True)
    assert kernel_with_amx.amx_bf16


@needs_vector_product
@pytest.mark.parametrize("seed", range(4))
def test_bfloat16_outputs_are_rounded_once(seed):
    weight = normal_weight(96, 1280)
    layer = ExponentCodedLinear.from_weight(weight)
    x = torch.randn(3, 1280, generator=torch.Generator().manual_seed(seed)).to(torch.bfloat16)
    out = layer(x)
    assert out.dtype == torch.bfloat16
    exact = float_reference(x, weight)
    # One rounding: half a bfloat16 ulp (up to 2^-8 of the result), plus float32 summation error,
    # which is relative to the sum of |products|: a near-cancelling output may carry more than
    # 2^-8 of its own size (unseeded, this test once failed on one). Products rounded to bfloat16
    # before the sum would err by ~2^-9 / sqrt(1280), about 2^-14, of that sum: 64x the second term.
    bound = 2**-8 * exact.abs() + 2**-20 * (x.double().abs() @ weight.double().abs().T)
    assert ((out.double() - exact).abs() <= bound).all()


def test_prefill_sized_inputs_give_exactly_what_the_bfloat16_linear_gives():
    """Past kernel_max_rows the weight is decoded bit for bit for torch's matmul."""
    weight = normal_weight(64, 256)
    linear = nn.Linear(256, 64, dtype=torch.bfloat16)
    linear.weight.data = weight
    layer = ExponentCodedLinear.from_weight(weight, linear.bias.data)
    prefill = torch.randn(2, ExponentCodedLinear.kernel_max_rows, 256).to(torch.bfloat16)
    assert torch.equal(layer(prefill), linear(prefill))


def test_without_the_kernel_the_torch_decoder_serves(monkeypatch):
    weight = normal_weight(40, 320)
    layer = ExponentCodedLinear.from_weight(weight)
    x = torch.randn(1, 320).to(torch.bfloat16)
    monkeypatch.setattr(library, "load", lambda: None)
    assert not layer.takes_kernel()
    assert torch.equal(layer(x), functional.linear(x, weight))


@needs_vector_product
def test_grouped_products_mix_formats_and_equal_one_call_each():
    torch.manual_seed(4)
    holder = nn.Module()
    holder.int4 = nn.Linear(128, 96, bias=False)
    quantize_linears_int4(holder, ["int4"])
    coded = [ExponentCodedLinear.from_weight(normal_weight(n, 128, seed=n)) for n in (5, 128)]
    narrow = ExponentCodedLinear.from_weight(normal_weight(40, 64))
    shared_input = torch.randn(1, 1, 128, dtype=torch.bfloat16)
    pairs = [(coded[0], shared_input), (holder.int4, shared_input), (coded[1], shared_input)]
    pairs.append((narrow, torch.randn(1, 1, 64, dtype=torch.bfloat16)))
    grouped = kernel_linear.linear_many(pairs)
    assert [out.shape for out in grouped] == [(1, 1, 5), (1, 1, 96), (1, 1, 128), (1, 1, 40)]
    for out, (layer, x) in zip(grouped, pairs, strict=True):
        assert torch.equal(out, layer(x))


def coded_model(**plan):
    directory, inputs = case_inputs("s15_base_square_md")
    return load_model(directory, plan_runtime(device="cpu", **plan)), inputs


@needs_vector_product
def test_bfloat16_checkpoints_load_with_the_decoder_coded_and_the_vision_tower_as_is():
    model, _ = coded_model(dtype="bfloat16", quant="none")
    coded = {name for name, module in model.named_modules() if isinstance(module, ExponentCodedLinear)}
    linears = {name for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    assert "lm_head" in coded and "model.layers.1.mlp.experts.7.down_proj" in coded
    assert all(name.startswith(("model.sam_model", "model.vision_model", "model.projector")) for name in linears)
    assert all(layer.kernel_weights is not None for layer in model.model.layers)


@pytest.mark.parametrize("plan", [{"dtype": "float32", "quant": "none"}, {"dtype": "bfloat16", "quant": "int4"}])
def test_other_settings_are_not_coded(plan):
    model, _ = coded_model(**plan)
    assert not any(isinstance(module, ExponentCodedLinear) for module in model.modules())


def test_without_the_kernel_bfloat16_stays_uncoded(monkeypatch):
    monkeypatch.setattr(library, "load", lambda: None)
    model, _ = coded_model(dtype="bfloat16", quant="none")
    assert not any(isinstance(module, ExponentCodedLinear) for module in model.modules())


@needs_vector_product
def test_a_coded_model_reads_a_page_as_the_uncoded_one(monkeypatch):
    """Same weights: the prompt's logits agree to bfloat16 rounding and greedy picks the same first tokens."""
    coded, inputs = coded_model(dtype="bfloat16", quant="none")
    monkeypatch.setattr(library, "load", lambda: None)
    uncoded, _ = coded_model(dtype="bfloat16", quant="none")
    monkeypatch.undo()
    with torch.inference_mode():
        logits = [model(**inputs, logits_to_keep=1).logits[0, -1] for model in (coded, uncoded)]
        tokens = [
            model.generate(**inputs, max_new_tokens=4, do_sample=False, eos_token_id=None, pad_token_id=2)
            for model in (coded, uncoded)
        ]
    assert functional.cosine_similarity(logits[0], logits[1], dim=0) > 0.999
    assert torch.equal(tokens[0], tokens[1])


def test_code_linears_replaces_only_the_named_layers():
    holder = nn.Module()
    holder.a, holder.b = nn.Linear(64, 32, dtype=torch.bfloat16), nn.Linear(64, 32, dtype=torch.bfloat16)
    weight = holder.a.weight.detach().clone()
    code_linears(holder, ["a"])
    assert isinstance(holder.a, ExponentCodedLinear) and type(holder.b) is nn.Linear
    assert same_bits(holder.a.decoded_weight(), weight) and holder.a.bias is not None


def test_subnormals_are_zero_on_the_bfloat16_dot_product_and_kept_when_widened():
    """AVX512-BF16's vdpbf16ps counts subnormal bfloat16 inputs as zero (README says so); the
    widened paths (AVX2, NEON, float32 models) and the plain C loops multiply them as they are."""
    tiny = 2.0**-130  # below bfloat16's (and float32's) smallest normal, 2^-126
    layer = ExponentCodedLinear.from_weight(torch.full((2, 64), tiny, dtype=torch.bfloat16))
    kernel = library.load()
    ones = torch.ones(1, 64)
    for x, widened in ((ones, True), (ones.to(torch.bfloat16), not kernel.bf16_dot)):
        for portable in (False, True):
            out = kernel.linear(x, layer.descriptor(), 2, portable=portable, out_dtype=torch.float32)
            expected = 64 * tiny if widened or portable else 0.0  # 2^-124: a normal float32
            assert out.tolist() == [[expected, expected]], (x.dtype, portable)
    # The same for subnormal activations against normal weights.
    layer = ExponentCodedLinear.from_weight(torch.ones(2, 64, dtype=torch.bfloat16))
    x = torch.full((1, 64), tiny).to(torch.bfloat16)
    out = kernel.linear(x, layer.descriptor(), 2, out_dtype=torch.float32)
    assert out.tolist() == [[0.0 if kernel.bf16_dot else 64 * tiny] * 2]
