"""Is DeepSeek-OCR-2's text model the decoder ``deepseek_ocr`` already has?

OCR-2 keeps DeepSeek-OCR's DeepSeek-3B-MoE decoder; transformers implements it as its own
``DeepseekOcr2TextModel`` (experts stored as stacked ``gate_up_proj``/``down_proj`` tensors). If
``deepseek_ocr``'s decoder, given OCR-2's text weights, computes transformers' logits, the CPU
decoding work (int4, exponent-coded bfloat16, fused steps) can serve OCR-2 by loading its text
weights; this test is that proof, on the tiny checkpoints (same decoder sizes, same vocabulary).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import DeepseekOcr2ForConditionalGeneration

from deepseek_ocr import DeepseekOcrForConditionalGeneration


def decoder_state_from_ocr2(ocr2: DeepseekOcr2ForConditionalGeneration) -> dict[str, torch.Tensor]:
    """OCR-2's text weights under ``deepseek_ocr``'s names: each expert's stacked ``gate_up_proj``
    row block split into its ``gate_proj`` and ``up_proj``, everything else renamed only."""
    state: dict[str, torch.Tensor] = {"lm_head.weight": ocr2.lm_head.weight}
    for name, tensor in ocr2.model.language_model.state_dict().items():
        if name.endswith("mlp.experts.gate_up_proj"):
            prefix = "model." + name.removesuffix("gate_up_proj")
            for expert, stacked in enumerate(tensor):
                gate, up = stacked.chunk(2, dim=0)
                state[f"{prefix}{expert}.gate_proj.weight"] = gate
                state[f"{prefix}{expert}.up_proj.weight"] = up
        elif name.endswith("mlp.experts.down_proj"):
            prefix = "model." + name.removesuffix("down_proj")
            for expert, down in enumerate(tensor):
                state[f"{prefix}{expert}.down_proj.weight"] = down
        else:
            state[f"model.{name}"] = tensor
    return state


@pytest.fixture(scope="module")
def models(tiny_model_dir: Path, tiny_ocr2_dir: Path) -> tuple:
    ocr2 = DeepseekOcr2ForConditionalGeneration.from_pretrained(tiny_ocr2_dir, dtype=torch.float32).eval()
    v1 = DeepseekOcrForConditionalGeneration.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    missing, unexpected = v1.load_state_dict(decoder_state_from_ocr2(ocr2), strict=False)
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
