"""The DeepSeek-OCR-2 engine against transformers' own classes, on a tiny random OCR-2 checkpoint.

The reference side of every comparison is transformers used directly, as its documentation uses
it (processor, then ``generate`` or a forward); the engine must read the same tokens from the same
pages, in a batch, with docconv's image preparation, mode mapping and repetition guard.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageOps
from transformers import DeepseekOcr2ForConditionalGeneration, DeepseekOcr2Processor, LogitsProcessorList

from deepseek_ocr import DeepseekOcrForConditionalGeneration
from deepseek_ocr.cpu.decoder import CpuMoeMlp
from deepseek_ocr.cpu.int4 import Int4Linear
from deepseek_ocr.generation import SlidingWindowNoRepeatNGram
from deepseek_ocr.prompts import TASK_PROMPTS
from docconv.engines import create_engine, engine_for_model
from docconv.engines.base import EngineOptions, PageJob
from docconv.engines.deepseek_ocr2 import OCR2_MODES, DeepseekOcr2Engine, Ocr2Geometry, ocr2_vision_budget
from docconv.models.checkpoint import model_family

NEW_TOKENS = 4
PROMPT = TASK_PROMPTS["markdown"]


def _drawn(mode: str, size: tuple[int, int], background: object) -> Image.Image:
    image = Image.new(mode, size, background)
    ImageDraw.Draw(image).rectangle((size[0] // 5, size[1] // 5, size[0] // 2, size[1] // 3), fill=0)
    return image


def _transparent() -> Image.Image:
    image = Image.new("RGBA", (900, 700), (255, 0, 0, 0))  # red, fully transparent: must read as white
    ImageDraw.Draw(image).rectangle((100, 100, 600, 300), fill=(0, 0, 0, 255))
    return image


#: Gray, transparent, tall, wide and tiny pages: one tiled differently in every direction.
PAGES: dict[str, Image.Image] = {
    "gray": _drawn("L", (500, 300), 255),
    "rgba": _transparent(),
    "tall": _drawn("RGB", (400, 1600), "white"),
    "wide": _drawn("RGB", (1800, 500), "white"),
    "tiny": _drawn("RGB", (20, 12), "white"),
}


def reference_image(image: Image.Image) -> Image.Image:
    """What the page loader hands every engine: upright RGB, transparency flattened on white."""
    if image.mode == "RGBA":
        white = Image.new("RGB", image.size, (255, 255, 255))
        white.paste(image, mask=image.getchannel("A"))
        return white
    return image.convert("RGB")


@pytest.fixture(scope="module")
def engine(tiny_ocr2_dir: Path) -> DeepseekOcr2Engine:
    built = create_engine(EngineOptions(model=str(tiny_ocr2_dir), device="cpu", dtype="float32"))
    assert isinstance(built, DeepseekOcr2Engine)
    return built


@pytest.fixture(scope="module")
def reference(tiny_ocr2_dir: Path) -> tuple[DeepseekOcr2Processor, DeepseekOcr2ForConditionalGeneration]:
    processor = DeepseekOcr2Processor.from_pretrained(tiny_ocr2_dir)
    processor.tokenizer.padding_side = "left"
    model = DeepseekOcr2ForConditionalGeneration.from_pretrained(tiny_ocr2_dir, dtype=torch.float32).eval()
    return processor, model


def test_the_checkpoint_config_picks_the_engine_whatever_the_directory_is_called(
    tiny_ocr2_dir: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    misleading = tmp_path / "DeepSeek-OCR"  # v1's name, OCR-2's weights
    shutil.copytree(tiny_ocr2_dir, misleading)
    v1_named_ocr2 = tmp_path / "DeepSeek-OCR-2"
    shutil.copytree(tiny_model_dir, v1_named_ocr2)

    assert model_family(misleading) == "deepseek-ocr-2"
    assert engine_for_model(EngineOptions(model=str(misleading))) == "deepseek-ocr-2"
    assert engine_for_model(EngineOptions(model=str(v1_named_ocr2))) == "deepseek-ocr"


def test_modes_outside_ocr2_are_refused_with_the_ones_it_has(engine: DeepseekOcr2Engine) -> None:
    assert engine.modes == ("base", "gundam")
    with pytest.raises(ValueError, match="no 'tiny' mode; use --mode base, gundam or auto"):
        engine.vision_budget(1000, 800, "tiny")


@pytest.mark.parametrize("mode", OCR2_MODES)
def test_vision_budget_counts_what_the_processor_writes(
    engine: DeepseekOcr2Engine, reference: tuple, mode: str
) -> None:
    processor, _ = reference
    for name, image in PAGES.items():
        budget = engine.vision_budget(image.width, image.height, mode)
        inputs = processor(images=reference_image(image), text=PROMPT, **_reference_kwargs(mode))
        placeholders = inputs["input_ids"][0].count(processor.image_token_id)
        assert budget.sequence == placeholders, name
        assert budget.tokens == placeholders - 1  # all but the view separator
        assert budget.valid <= budget.tokens


def test_ocr2_token_counts_are_the_papers() -> None:
    # 256 global queries, 144 per 768-pixel tile, 2-6 tiles when the page exceeds one tile.
    assert [_budget("base", 1224, 1584), _budget("gundam", 700, 700), _budget("gundam", 1224, 1584)] == [
        256,
        256,
        256 + 6 * 144,
    ]


def _budget(mode: str, width: int, height: int) -> int:
    geometry = Ocr2Geometry(global_size=1024, tile_size=768, min_tiles=2, max_tiles=6, pixels_per_query=64)
    tiles = 0 if mode == "base" or max(width, height) <= 768 else 6
    return ocr2_vision_budget(width, height, mode, geometry, tiles).tokens


def _reference_kwargs(mode: str) -> dict:
    """OCR-2's modes as transformers' processor is asked for them: gundam is its default; base is
    the global 1024 view alone, which its no-crop path draws at ``tile_size``."""
    return {} if mode == "gundam" else {"crop_to_patches": False, "tile_size": 1024}


def test_base_is_the_official_global_view_a_grey_letterbox_at_1024(engine: DeepseekOcr2Engine) -> None:
    page = PAGES["wide"]
    inputs = engine.model_inputs([page], [PROMPT], "base")
    assert "pixel_values_local" not in inputs
    # The official OCR-2 code: ImageOps.pad(image, (1024, 1024), color=mean*255), normalised by 0.5/0.5.
    official = ImageOps.pad(page, (1024, 1024), color=(127, 127, 127), method=Image.Resampling.BICUBIC)
    expected = torch.from_numpy(np.asarray(official, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)
    difference = (inputs["pixel_values"][0] - expected).abs()
    # Same geometry; resizers may differ by a rounding step at the letterbox edge and on strokes.
    assert difference.mean() < 0.01
    assert (difference > 0.05).float().mean() < 0.01


@pytest.mark.parametrize("mode", OCR2_MODES)
def test_engine_reads_the_tokens_transformers_generate_reads(
    engine: DeepseekOcr2Engine, reference: tuple, mode: str
) -> None:
    processor, model = reference
    names = list(PAGES)
    jobs = [PageJob(PAGES[name], mode, PROMPT, max_new_tokens=NEW_TOKENS) for name in names]
    counted: dict[int, int] = {}

    outputs = engine.generate(jobs, on_token=lambda job, count: counted.__setitem__(job, count))

    inputs = processor(
        images=[reference_image(PAGES[name]) for name in names],
        text=[PROMPT] * len(names),
        padding=True,
        return_tensors="pt",
        **_reference_kwargs(mode),
    )
    prompt_length = inputs["input_ids"].shape[1]
    guard = SlidingWindowNoRepeatNGram(
        30, 90, prompt_length, [processor.tokenizer.convert_tokens_to_ids("<td>")]
    )
    with torch.inference_mode():
        expected = model.generate(
            **inputs,
            do_sample=False,
            max_new_tokens=NEW_TOKENS,
            logits_processor=LogitsProcessorList([guard]),
            eos_token_id=processor.tokenizer.eos_token_id,
            pad_token_id=processor.tokenizer.pad_token_id,
        )[:, prompt_length:]
    for row, (name, output) in enumerate(zip(names, outputs, strict=True)):
        ids = expected[row].tolist()
        if processor.tokenizer.eos_token_id in ids:
            ids = ids[: ids.index(processor.tokenizer.eos_token_id)]
        assert output.text == processor.tokenizer.decode(ids).strip(), name
        assert output.text_tokens == counted[row] <= NEW_TOKENS, name
        assert output.stop_reason == ("eos" if len(ids) < output.text_tokens else "max_tokens"), name
        assert (
            output.vision.sequence == engine.vision_budget(*reference_image(PAGES[name]).size, mode).sequence
        )


@pytest.mark.parametrize("mode", OCR2_MODES)
def test_engine_inputs_give_transformers_forward_logits(
    engine: DeepseekOcr2Engine, reference: tuple, mode: str
) -> None:
    processor, model = reference
    pages = [PAGES["rgba"], PAGES["tall"]]  # transparency, and tiles in gundam
    inputs = engine.model_inputs(pages, [PROMPT] * len(pages), mode)
    expected_inputs = processor(
        images=[reference_image(page) for page in pages],
        text=[PROMPT] * len(pages),
        padding=True,
        return_tensors="pt",
        **_reference_kwargs(mode),
    )
    logits = engine.next_token_logits(inputs)
    with torch.inference_mode():
        expected = model(**expected_inputs).logits[:, -1]
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-5)


def test_cpu_pages_decode_in_docconvs_decoder_with_its_fast_paths(engine: DeepseekOcr2Engine) -> None:
    # The generate/logits comparisons above then hold for this path: transformers' vision, docconv's decoder.
    assert isinstance(engine.decoder, DeepseekOcrForConditionalGeneration)
    assert any(type(module) is CpuMoeMlp for module in engine.decoder.modules())
    # OCR-2's text weights are not held twice: transformers' side keeps the vision part only.
    assert len(engine.model.model.language_model.layers) == 0
    assert not any(
        parameter.shape[0] == engine.decoder.config.vocab_size for parameter in engine.model.parameters()
    )
    calls = []
    hook = engine.decoder.register_forward_hook(lambda *args: calls.append(1))
    try:
        engine.generate([PageJob(PAGES["gray"], "base", PROMPT, max_new_tokens=2)])
    finally:
        hook.remove()
    assert calls


def test_int4_reads_a_page(tiny_ocr2_dir: Path) -> None:
    built = create_engine(
        EngineOptions(model=str(tiny_ocr2_dir), device="cpu", dtype="float32", quant="int4")
    )
    assert built.quant == "int4"
    assert isinstance(built.decoder.lm_head, Int4Linear)
    [output] = built.generate([PageJob(PAGES["wide"], "gundam", PROMPT, max_new_tokens=NEW_TOKENS)])
    assert output.text_tokens == NEW_TOKENS or output.stop_reason == "eos"
    assert output.text or output.stop_reason == "eos"


@pytest.mark.parametrize("quant", ["8bit", "4bit"])
def test_bitsandbytes_quantizes_the_decoder_only_and_reads_a_page(tiny_ocr2_dir: Path, quant: str) -> None:
    import bitsandbytes as bnb

    built = create_engine(EngineOptions(model=str(tiny_ocr2_dir), device="cpu", dtype="float32", quant=quant))
    assert built.quant == quant
    quantized = {
        name
        for name, module in built.model.named_modules()
        if isinstance(module, bnb.nn.modules.Linear8bitLt | bnb.nn.Linear4bit)
    }
    assert any(name.startswith("model.language_model.") for name in quantized)
    # The vision side and the output head stay in full precision, as deepseek_ocr keeps DeepSeek-OCR's.
    assert not any(
        name.startswith(("model.vision_tower", "model.multi_modal_projector", "lm_head"))
        for name in quantized
    )
    [output] = built.generate([PageJob(PAGES["gray"], "base", PROMPT, max_new_tokens=NEW_TOKENS)])
    assert output.text_tokens == NEW_TOKENS or output.stop_reason == "eos"
