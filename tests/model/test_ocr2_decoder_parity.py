"""Is DeepSeek-OCR-2's text model the decoder ``deepseek_ocr`` already has?

OCR-2 keeps DeepSeek-OCR's DeepSeek-3B-MoE decoder; transformers implements it as its own
``DeepseekOcr2TextModel`` (experts stored as stacked ``gate_up_proj``/``down_proj`` tensors). If
``deepseek_ocr``'s decoder, given OCR-2's text weights, computes transformers' logits, the CPU
decoding work (int4, exponent-coded bfloat16, fused steps) can serve OCR-2 by loading its text
weights; this test is that proof, on the tiny checkpoints (same decoder sizes, same vocabulary).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import DeepseekOcr2ForConditionalGeneration

from deepseek_ocr import DeepseekOcrForConditionalGeneration
from deepseek_ocr.cpu.decoder import CpuMoeMlp
from deepseek_ocr.cpu.int4 import Int4Linear
from deepseek_ocr.loading import RuntimePlan
from deepseek_ocr.ocr2 import decoder_state_from_ocr2, load_ocr2_decoder


@pytest.fixture(scope="module")
def models(tiny_model_dir: Path, tiny_ocr2_dir: Path) -> tuple:
    ocr2 = DeepseekOcr2ForConditionalGeneration.from_pretrained(tiny_ocr2_dir, dtype=torch.float32).eval()
    v1 = DeepseekOcrForConditionalGeneration.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    # transformers' in-memory spelling: every layer's experts stacked in gate_up_proj / down_proj.
    state = decoder_state_from_ocr2(ocr2.state_dict(), v1.config)
    missing, unexpected = v1.load_state_dict(state, strict=False)
    assert not unexpected
    assert all(
        not name.startswith(("model.layers.", "model.norm.", "model.embed_tokens.")) for name in missing
    )
    return ocr2, v1


def test_deepseek_ocr_decoder_with_ocr2_text_weights_gives_transformers_ocr2_logits(models: tuple) -> None:
    ocr2, v1 = models
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(3, ocr2.config.text_config.vocab_size, (2, 40), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, :7] = 0  # a left-padded row, as in a batch of pages

    with torch.inference_mode():
        expected = ocr2(input_ids=input_ids, attention_mask=attention_mask).logits
        got = v1(input_ids=input_ids, attention_mask=attention_mask).logits

    torch.testing.assert_close(got[0], expected[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[1, 7:], expected[1, 7:], rtol=1e-5, atol=1e-5)


def _text_logits(model: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(input_ids=input_ids).logits


def _transformers_spelling(
    tiny_ocr2_dir: Path, ocr2: DeepseekOcr2ForConditionalGeneration, out: Path
) -> Path:
    """The tiny checkpoint as transformers holds it in memory (stacked experts, ``language_model.``)."""
    out.mkdir()
    shutil.copyfile(tiny_ocr2_dir / "config.json", out / "config.json")
    save_file(
        {name: tensor.contiguous() for name, tensor in ocr2.state_dict().items()}, out / "model.safetensors"
    )
    return out


@pytest.mark.parametrize("spelling", ["original", "transformers"])
def test_load_ocr2_decoder_streams_either_spelling_with_cpu_fast_paths(
    models: tuple, tiny_ocr2_dir: Path, tmp_path: Path, spelling: str
) -> None:
    ocr2, _ = models
    directory = (
        tiny_ocr2_dir
        if spelling == "original"
        else _transformers_spelling(tiny_ocr2_dir, ocr2, tmp_path / "tf")
    )
    decoder = load_ocr2_decoder(directory, RuntimePlan("cpu", torch.float32, "none", "sdpa"))

    assert not hasattr(decoder.model, "sam_model")  # the decoder alone: OCR-2's vision stays transformers'
    assert any(type(module) is CpuMoeMlp for module in decoder.modules())
    input_ids = torch.randint(
        3, ocr2.config.text_config.vocab_size, (1, 30), generator=torch.Generator().manual_seed(1)
    )
    torch.testing.assert_close(
        _text_logits(decoder, input_ids), _text_logits(ocr2, input_ids), rtol=1e-5, atol=1e-5
    )


def test_load_ocr2_decoder_int4_quantizes_as_it_streams(tiny_ocr2_dir: Path) -> None:
    decoder = load_ocr2_decoder(tiny_ocr2_dir, RuntimePlan("cpu", torch.float32, "int4", "sdpa"))
    assert isinstance(decoder.lm_head, Int4Linear)
    assert isinstance(decoder.model.layers[1].mlp.experts[0].gate_proj, Int4Linear)
    assert not any(parameter.is_meta for parameter in decoder.parameters())
