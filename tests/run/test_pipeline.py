"""The pipeline with the real tiny engine: batching, retries, prompts, streaming, engine reuse."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from docconv.engines.base import Engine, EngineOptions, EngineOutput, PageJob, TokenCallback, VisionBudget
from docconv.output.options import RenderOptions
from docconv.run.options import TASK_PROMPTS, ConvertOptions
from docconv.run.pipeline import Pipeline, load_engine
from docconv.run.progress import Reporter
from docconv.sources.inputs import resolve_inputs

from ..helpers import make_image, make_pdf


class RecordingEngine:
    """The real engine, with every batch it was given kept for inspection."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self.name, self.modes, self.device, self.dtype, self.quant = (
            engine.name,
            engine.modes,
            engine.device,
            engine.dtype,
            engine.quant,
        )
        self.batches: list[list[PageJob]] = []

    def vision_budget(self, width: int, height: int, mode: str) -> VisionBudget:
        return self._engine.vision_budget(width, height, mode)

    def count_text_tokens(self, text: str) -> int:
        return self._engine.count_text_tokens(text)

    def generate(self, jobs: Sequence[PageJob], on_token: TokenCallback | None = None) -> list[EngineOutput]:
        self.batches.append(list(jobs))
        return self._engine.generate(jobs, on_token)


@pytest.fixture
def engine_options(tiny_model_dir: Path) -> EngineOptions:
    return EngineOptions(model=str(tiny_model_dir), device="cpu")


def convert(
    paths: list[Path], engine_options: EngineOptions, **overrides: object
) -> tuple[RecordingEngine, str, Pipeline]:
    render = RenderOptions(format=str(overrides.pop("format", "jsonl")))
    options = ConvertOptions(engine=engine_options, render=render, mode="tiny", max_tokens=2, **overrides)
    engine = RecordingEngine(load_engine(engine_options))
    stdout = io.StringIO()
    pipeline = Pipeline(options, Reporter(quiet=True, stream=io.StringIO()), stdout=stdout, engine=engine)
    pipeline.run(resolve_inputs([str(p) for p in paths]).documents)
    return engine, stdout.getvalue(), pipeline


def test_engine_is_loaded_once_per_options(engine_options: EngineOptions) -> None:
    assert load_engine(engine_options) is load_engine(engine_options)


def test_pages_of_several_documents_share_batches(tmp_path: Path, engine_options: EngineOptions) -> None:
    paths = [make_image(tmp_path / f"{n}.png") for n in range(3)] + [make_pdf(tmp_path / "d.pdf", pages=2)]
    engine, stdout, _ = convert(paths, engine_options, batch_size=4)
    first_reads = [batch for batch in engine.batches if batch[0].mode == "tiny"]
    assert [len(batch) for batch in first_reads] == [4, 1]
    assert [json.loads(line)["number"] for line in stdout.splitlines()] == [1, 1, 1, 1, 2]


def test_degraded_page_is_retried_once_tighter_and_one_mode_up(
    tmp_path: Path, engine_options: EngineOptions
) -> None:
    engine, stdout, pipeline = convert(
        [make_image(tmp_path / "a.png")], engine_options, ngram=30, ngram_window=90
    )
    first, retry = engine.batches
    assert (first[0].mode, retry[0].mode) == ("tiny", "small")
    assert retry[0].ngram_size < first[0].ngram_size and retry[0].ngram_window > first[0].ngram_window
    page = json.loads(stdout)
    assert page["degraded"] and page["retried"] and page["degraded_reasons"]
    assert len(pipeline.summary.degraded) == 1  # kept, marked and listed, never dropped


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({}, TASK_PROMPTS["markdown"]),
        ({"task": "text"}, "<image>\nFree OCR."),
        ({"task": "figure"}, "<image>\nParse the figure."),
        ({"task": "describe"}, "<image>\nDescribe this image in detail."),
        ({"handwriting": True}, "<image>\nFree OCR."),
        (
            {"prompt": "Locate <|ref|>the title<|/ref|> in the image."},
            "<image>\nLocate <|ref|>the title<|/ref|> in the image.",
        ),
        ({"prompt": "<image>\nOCR this image."}, "<image>\nOCR this image."),
    ],
)
def test_task_decides_the_prompt(engine_options: EngineOptions, overrides: dict, expected: str) -> None:
    options = ConvertOptions(engine=engine_options, render=RenderOptions(), **overrides)
    assert options.full_prompt() == expected


def test_prompt_reaches_the_engine(tmp_path: Path, engine_options: EngineOptions) -> None:
    engine, _, _ = convert([make_image(tmp_path / "a.png")], engine_options, task="text")
    assert {job.prompt for batch in engine.batches for job in batch} == {"<image>\nFree OCR."}


def test_whole_document_json_goes_to_stdout_once_complete(
    tmp_path: Path, engine_options: EngineOptions
) -> None:
    _, stdout, _ = convert([make_pdf(tmp_path / "a.pdf", pages=2)], engine_options, format="json")
    document = json.loads(stdout)
    assert [p["number"] for p in document["pages"]] == [1, 2]
    assert {"mode", "vision_tokens", "text_tokens", "ratio", "stop_reason"} <= set(document["pages"][0])


def test_receipt_shaped_page_is_read_in_bands_and_stitched_into_one_page(
    tmp_path: Path, engine_options: EngineOptions
) -> None:
    receipt = make_image(tmp_path / "receipt.png", size=(120, 1200))  # 1:10, far past 1:4
    engine, stdout, _ = convert([receipt], engine_options, format="json")
    first_read = engine.batches[0]
    assert len(first_read) > 1  # one job per band
    assert all(job.image.height < 1200 for job in first_read)
    (page,) = json.loads(stdout)["pages"]
    assert (page["width"], page["height"]) == (120, 1200)
