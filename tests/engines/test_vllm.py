"""``--engine vllm``: the requests it builds, the modes it serves, and its errors.

vLLM lives in an environment of its own (it pins its own torch), so most of this runs without it:
the recipe's settings, the CLI's checks, the missing-vLLM error. Where vLLM is importable, the
settings are validated by vLLM's own classes and the vision-token count is checked against its
processor's; the engine itself runs on the tiny checkpoint where vLLM can load it.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image
from typer.testing import CliRunner

from deepseek_ocr.modes import MODES, vision_budget
from docconv.cli import app
from docconv.engines import SERVED_MODES
from docconv.engines.base import DEFAULT_GENERATION, EngineError, EngineOptions, PageJob
from docconv.engines.vllm import (
    VLLM_ARCHITECTURE,
    engine_settings,
    processor_mode,
    request,
    sampling_settings,
)
from docconv.run.modes import AUTO, resolve_mode
from docconv.run.options import TASK_PROMPTS
from docconv.run.reading import read_mode

from ..helpers import make_pdf

runner = CliRunner()
PAGE = Image.new("RGB", (850, 1100), "white")
WHITELIST = (128821, 128822)  # <td>, </td> in the official vocabulary


def vllm_module(name: str):
    return pytest.importorskip(name, reason="vLLM is installed in an environment of its own")


def test_sampling_follows_the_official_recipe() -> None:
    job = PageJob(PAGE, "gundam", TASK_PROMPTS["markdown"])
    settings = sampling_settings(job, WHITELIST)
    assert settings == {
        "temperature": 0.0,
        "max_tokens": DEFAULT_GENERATION.max_new_tokens,
        "skip_special_tokens": False,
        "extra_args": {"ngram_size": 30, "window_size": 90, "whitelist_token_ids": set(WHITELIST)},
    }


def test_the_pages_limits_reach_the_request_and_ngram_zero_turns_the_guard_off() -> None:
    job = PageJob(PAGE, "gundam", TASK_PROMPTS["text"], max_new_tokens=100, ngram_size=12, ngram_window=40)
    assert sampling_settings(job, WHITELIST)["extra_args"]["ngram_size"] == 12
    assert sampling_settings(job, WHITELIST)["extra_args"]["window_size"] == 40
    assert sampling_settings(job, WHITELIST)["max_tokens"] == 100
    off = PageJob(PAGE, "gundam", TASK_PROMPTS["text"], ngram_size=0)
    assert "extra_args" not in sampling_settings(off, WHITELIST)


def test_the_prompt_goes_verbatim_with_the_page_as_its_image() -> None:
    job = PageJob(PAGE, "gundam", TASK_PROMPTS["markdown"])
    assert request(job) == {"prompt": TASK_PROMPTS["markdown"], "multi_modal_data": {"image": PAGE}}


def test_the_engine_runs_without_prefix_or_multimodal_caches() -> None:
    settings = engine_settings("/models/ocr", EngineOptions(model="/models/ocr"), "the n-gram processor")
    assert settings["enable_prefix_caching"] is False
    assert settings["mm_processor_cache_gb"] == 0
    assert settings["logits_processors"] == ["the n-gram processor"]
    assert settings["hf_overrides"] == {"architectures": [VLLM_ARCHITECTURE]}
    assert "dtype" not in settings
    assert engine_settings("m", EngineOptions(model="m", dtype="bfloat16"), None)["dtype"] == "bfloat16"


def test_the_served_mode_is_the_one_whose_sizes_the_processor_hard_codes() -> None:
    gundam = MODES["gundam"]
    constants = SimpleNamespace(BASE_SIZE=gundam.base_size, IMAGE_SIZE=gundam.image_size, CROP_MODE=True)
    assert processor_mode(constants) == "gundam"
    base = SimpleNamespace(BASE_SIZE=1024, IMAGE_SIZE=1024, CROP_MODE=False)
    assert processor_mode(base) == "base"
    with pytest.raises(EngineError, match="no known mode"):
        processor_mode(SimpleNamespace(BASE_SIZE=999, IMAGE_SIZE=640, CROP_MODE=True))


class GundamOnly:
    """An engine's mode facts as the vLLM engine states them (the budget is the model package's)."""

    modes = SERVED_MODES["vllm"]

    def vision_budget(self, width: int, height: int, mode: str):
        return vision_budget(width, height, mode, max_tiles=6)


@pytest.mark.parametrize("size", [(200, 120), (850, 1100), (1700, 2200), (3000, 400)])
def test_auto_picks_among_the_served_modes_and_a_retry_stays_in_them(size: tuple[int, int]) -> None:
    image = Image.new("RGB", size, "white")
    assert resolve_mode(AUTO, size, 5, GundamOnly(), image=image).mode == "gundam"
    assert resolve_mode(AUTO, size, 50_000, GundamOnly(), image=image).mode == "gundam"
    assert read_mode("gundam", retry=True, served=SERVED_MODES["vllm"]) == "gundam"
    assert read_mode("gundam", retry=True) == "gundam-master"  # the native engine's ladder


def test_a_mode_vllm_does_not_serve_is_a_usage_error(tmp_path: Path) -> None:
    result = runner.invoke(app, [str(make_pdf(tmp_path / "a.pdf")), "--engine", "vllm", "--mode", "base"])
    assert result.exit_code == 2
    assert "--engine vllm reads only the gundam mode, not base" in result.output


def test_without_vllm_the_engine_says_how_to_install_it(tmp_path: Path, tiny_model_dir: Path) -> None:
    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here")
    pdf = make_pdf(tmp_path / "a.pdf")
    result = runner.invoke(
        app, [str(pdf), "-o", str(tmp_path / "a.md"), "--engine", "vllm", "--model", str(tiny_model_dir)]
    )
    assert result.exit_code == 3
    assert "docconv[vllm]" in result.output
    assert not (tmp_path / "a.md").exists()


# ---------------------------------------------------------------- against vLLM itself


def test_vllms_own_classes_accept_the_request() -> None:
    sampling = vllm_module("vllm").SamplingParams
    ngram = vllm_module("vllm.model_executor.models.deepseek_ocr").NGramPerReqLogitsProcessor
    params = sampling(**sampling_settings(PageJob(PAGE, "gundam", TASK_PROMPTS["markdown"]), WHITELIST))
    ngram.validate_params(params)
    processor = ngram.new_req_logits_processor(None, params)
    assert (processor.ngram_size, processor.window_size) == (30, 90)
    assert processor.whitelist_token_ids == set(WHITELIST)
    assert params.temperature == 0.0 and params.skip_special_tokens is False


@pytest.mark.parametrize(
    "size", [(200, 120), (640, 640), (850, 1100), (1700, 2200), (3000, 400), (500, 4000)]
)
def test_the_vision_tokens_counted_are_the_placeholders_vllm_inserts(size: tuple[int, int]) -> None:
    processor = vllm_module("vllm.transformers_utils.processors.deepseek_ocr")
    info = vllm_module("vllm.model_executor.models.deepseek_ocr").DeepseekOCRProcessingInfo
    # get_num_image_tokens reads only the processor module's constants, never its instance.
    placeholders = info.get_num_image_tokens(None, image_width=size[0], image_height=size[1], cropping=True)
    ours = vision_budget(*size, "gundam", max_tiles=processor.MAX_CROPS, min_tiles=processor.MIN_CROPS)
    assert ours.sequence == placeholders


@pytest.mark.skipif(
    not os.environ.get("DOCCONV_VLLM_MODEL"), reason="set DOCCONV_VLLM_MODEL to a checkpoint vLLM loads"
)
def test_the_engine_reads_pages_with_vllm() -> None:
    vllm_module("vllm")
    from docconv.engines.vllm import create_engine

    engine = create_engine(EngineOptions(model=os.environ["DOCCONV_VLLM_MODEL"], kind="vllm"))
    jobs = [PageJob(PAGE, "gundam", TASK_PROMPTS["markdown"], max_new_tokens=8) for _ in range(3)]
    outputs = engine.generate(jobs)
    assert len(outputs) == 3
    assert all(1 <= out.text_tokens <= 8 for out in outputs)
    assert all(out.vision == engine.vision_budget(*PAGE.size, "gundam") for out in outputs)
