"""The model package beyond the parity cases: checkpoint layout, batching, the repetition guard."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from deepseek_ocr import (
    DeepseekOcrConfig,
    DeepseekOcrForConditionalGeneration,
    DeepseekOcrProcessor,
    GenerationSettings,
    SlidingWindowNoRepeatNGram,
    generate_pages,
    load_model,
    plan_runtime,
)
from deepseek_ocr.cpu.dispatch import attach_fast_paths

from ..conftest import PARITY

MD_PROMPT = "<image>\n<|grounding|>Convert the document to markdown."
FREE_PROMPT = "<image>\nFree OCR."


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    model = load_model(tiny_model_dir, plan_runtime(device="cpu", dtype="float32", quant="none"))
    return model, DeepseekOcrProcessor.from_pretrained(tiny_model_dir)


def test_official_config_has_exactly_the_checkpoint_parameters(reference_dir):
    reference = json.loads((reference_dir / "checkpoint_shapes.json").read_text())["tensors"]
    config = DeepseekOcrConfig.from_pretrained(reference_dir)
    with torch.device("meta"):
        model = DeepseekOcrForConditionalGeneration(config)
    ours = {name: list(param.shape) for name, param in model.named_parameters()}
    assert ours == {name: entry["shape"] for name, entry in reference.items()}
    assert sum(p.numel() for p in model.parameters()) == 3_336_106_240


def test_official_config_defaults_match_the_reference_code(reference_dir):
    config = DeepseekOcrConfig.from_pretrained(reference_dir)
    assert (config.rms_norm_eps, config.rope_theta, config.norm_topk_prob) == (1e-6, 10000.0, False)
    assert config.image_token_id == 128815
    assert (config.sam.width, config.sam.global_attn_indexes, config.clip.layers) == (768, (2, 5, 8, 11), 24)
    assert config.projector_input_dim == 2048


def test_ngram_guard_bans_only_repeats_inside_the_window():
    guard = SlidingWindowNoRepeatNGram(ngram_size=3, window_size=6, prompt_length=2, exempt_ids=[9])
    scores = torch.zeros(1, 10)
    # generated: 1 2 3 1 2 -> the 2-gram prefix "1 2" was followed by 3 within the window: ban 3.
    banned = guard(torch.tensor([[7, 7, 1, 2, 3, 1, 2]]), scores.clone())
    assert torch.isinf(banned[0, 3]) and torch.isfinite(banned[0]).sum() == 9
    # Outside the window (6 generated tokens back) the earlier n-gram no longer counts.
    far = guard(torch.tensor([[7, 7, 1, 2, 3, 5, 5, 5, 5, 1, 2]]), scores.clone())
    assert torch.isfinite(far).all()
    # Exempt tokens (table cells) are never banned.
    exempt = guard(torch.tensor([[7, 7, 1, 2, 9, 1, 2]]), scores.clone())
    assert torch.isfinite(exempt).all()
    # The prompt does not count: it holds hundreds of identical image placeholders.
    assert torch.isfinite(guard(torch.tensor([[1, 2, 3, 1, 2]]), scores.clone())).all()


def test_ngram_guard_breaks_a_loop_the_model_would_repeat(tiny):
    model, processor = tiny
    inputs = dict(processor([PARITY / "images" / "page_1700x2200.png"], MD_PROMPT, "tiny"))
    free = generate_pages(model, _model_inputs(inputs), GenerationSettings(64, 0, 90), 1, 2)[0].token_ids
    guarded = generate_pages(model, _model_inputs(inputs), GenerationSettings(64, 8, 64), 1, 2)[0].token_ids
    assert _has_repeated_ngram(free, 8, 64), "the tiny model loops without the guard"
    assert not _has_repeated_ngram(guarded, 8, 64)


def test_batch_equals_one_page_at_a_time(tiny):
    """Left padding, masks and positions are right: batched pages decode exactly as alone."""
    model, processor = tiny
    images = [PARITY / "images" / "small_600x400.png", PARITY / "images" / "square_1024x1024.png"]
    prompts = [FREE_PROMPT, MD_PROMPT]  # different lengths: the first page is left-padded
    settings = GenerationSettings(max_new_tokens=12, ngram_size=0)
    batched = generate_pages(model, _model_inputs(dict(processor(images, prompts, "gundam"))), settings, 1, 2)
    for image, prompt, together in zip(images, prompts, batched, strict=True):
        alone = generate_pages(
            model, _model_inputs(dict(processor([image], prompt, "gundam"))), settings, 1, 2
        )[0]
        assert together.token_ids == alone.token_ids

    batch = _model_inputs(dict(processor(images, prompts, "gundam")))
    with torch.inference_mode():
        batch_logits = model(**batch, logits_to_keep=1).logits[:, -1]
        for row, (image, prompt) in enumerate(zip(images, prompts, strict=True)):
            single = model(
                **_model_inputs(dict(processor([image], prompt, "gundam"))), logits_to_keep=1
            ).logits
            torch.testing.assert_close(batch_logits[row], single[0, -1], atol=1e-4, rtol=1e-4)


def test_stop_reason_and_token_callback(tiny):
    model, processor = tiny
    # s19_small_small_free stops on EOS after 29 tokens in the reference; the seed15 model does not stop.
    seen: dict[int, int] = {}
    inputs = _model_inputs(
        dict(processor([PARITY / "images" / "small_600x400.png"] * 2, FREE_PROMPT, "small"))
    )
    pages = generate_pages(
        model, inputs, GenerationSettings(10, 0), 1, 2, on_token=lambda row, n: seen.__setitem__(row, n)
    )
    assert [p.stop_reason for p in pages] == ["max_tokens", "max_tokens"]
    assert seen == {0: 10, 1: 10}

    seed19 = PARITY / "models" / "seed19"
    stopping = load_model(seed19, plan_runtime(device="cpu", dtype="float32", quant="none"))
    processor19 = DeepseekOcrProcessor.from_pretrained(seed19)
    inputs = _model_inputs(dict(processor19([PARITY / "images" / "small_600x400.png"], FREE_PROMPT, "small")))
    page = generate_pages(stopping, inputs, GenerationSettings(96, 0), 1, 2)[0]
    assert page.stop_reason == "eos" and page.token_ids[-1] == 1 and len(page.token_ids) == 29


def _model_inputs(features: dict) -> dict:
    return {k: v for k, v in features.items() if k not in ("vision_tokens", "valid_vision_tokens")}


def _has_repeated_ngram(tokens: list[int], n: int, window: int) -> bool:
    for end in range(n, len(tokens) + 1):
        gram = tokens[end - n : end]
        start = max(0, end - 1 - window)
        earlier = tokens[start : end - 1]
        if any(earlier[i : i + n] == gram for i in range(len(earlier) - n + 1)):
            return True
    return False


def test_from_pretrained_loads_the_official_layout_without_key_mismatches(tiny_model_dir):
    model, info = DeepseekOcrForConditionalGeneration.from_pretrained(tiny_model_dir, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert model.model.view_seperator.shape == (model.config.hidden_size,)


@pytest.mark.parametrize("shape", [(1, 8, 8, 96), (25, 14, 14, 96), (3, 96)])
def test_sam_linears_on_onednn_give_the_bits_of_the_torch_linear(shape):
    from deepseek_ocr.cpu import sam

    if sam.onednn_linear() is None:
        pytest.skip(f"oneDNN's fused linear is not used here: {sam.onednn_unavailable_reason}")
    torch.manual_seed(0)
    layer = torch.nn.Linear(96, 288).to(torch.bfloat16)
    x = torch.randn(*shape).to(torch.bfloat16)
    with torch.inference_mode():
        assert torch.equal(sam.linear(layer, x), layer(x))
        transposed = torch.randn(8, 8, 96).to(torch.bfloat16).transpose(0, 1)  # keeps torch's own path
        assert torch.equal(sam.linear(layer, transposed), layer(transposed))


def test_sam_mlp_gelu_fused_on_onednn_is_closer_to_float32_than_torch_rounding_twice():
    from deepseek_ocr.cpu import sam

    if sam.onednn_linear() is None:
        pytest.skip(f"oneDNN's fused linear is not used here: {sam.onednn_unavailable_reason}")
    torch.manual_seed(0)
    layer = torch.nn.Linear(96, 384).to(torch.bfloat16)
    x = torch.randn(4, 16, 16, 96).to(torch.bfloat16)
    with torch.inference_mode():
        exact = torch.nn.functional.gelu(torch.nn.functional.linear(x.float(), layer.weight.float(), layer.bias.float()))
        fused = sam.linear(layer, x, gelu=True)
        twice = torch.nn.functional.gelu(layer(x))  # torch: the linear's output rounded, then the GELU's
    assert not torch.equal(fused, twice)  # the fused path ran
    fused_error, twice_error = [(out.float() - exact).abs().mean() for out in (fused, twice)]
    assert fused_error < twice_error
    assert (fused.float() - exact).abs().max() <= 2**-8 * exact.abs().max()  # one bfloat16 rounding


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_relative_position_bias_is_the_same_added_or_multiplied(dtype):
    from deepseek_ocr.sam import relative_position_bias

    torch.manual_seed(0)
    rel_h = torch.randn(2, 3, 4, 6, 5).to(dtype)  # (b, heads, rows, w, h)
    rel_w = torch.randn(2, 3, 4, 6, 6).to(dtype)
    added = relative_position_bias(rel_h, rel_w, multiply=False)
    multiplied = relative_position_bias(rel_h, rel_w, multiply=True)
    assert added.shape == (2, 3, 24, 30)
    # key (ky, kx) = (3, 2) of query row 1, column 4, is rel_h[..., 3] + rel_w[..., 2]
    assert added[1, 2, 1 * 6 + 4, 3 * 6 + 2] == (rel_h[1, 2, 1, 4, 3].float() + rel_w[1, 2, 1, 4, 2].float()).to(dtype)
    assert torch.equal(added, multiplied)


def test_sam_attention_in_bfloat16_follows_float32(tiny):
    """The bfloat16 path (bias by product, large chunks) computes the float32 attention, rounded."""
    model, _ = tiny
    block = next(b for b in model.model.sam_model.blocks if not b.window_size)
    attention = copy.deepcopy(block.attn)  # the module-scoped model stays as loaded
    grid = 12
    torch.manual_seed(1)
    x = torch.randn(2, grid, grid, attention.qkv.in_features)
    with torch.inference_mode():
        for p in (attention.rel_pos_h, attention.rel_pos_w):
            p.copy_(torch.randn_like(p))  # a visible bias (the tiny checkpoint's is near zero)
        reference = attention(x)
        halved_attention = copy.deepcopy(attention).to(torch.bfloat16)
        attach_fast_paths(halved_attention)  # the CPU path a bfloat16 load takes, where this machine has one
        halved = halved_attention(x.to(torch.bfloat16)).float()
    cosine = torch.nn.functional.cosine_similarity(halved.flatten(), reference.flatten(), dim=0)
    assert cosine > 0.999
