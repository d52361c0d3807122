"""Reading rendered pages: mode and bands, the engine, parsing, and the retry of a degraded page.

The one stage between rendering and finishing a page, shared by both executors: the local
pipeline (:mod:`docconv.run.pipeline`) calls it in-process, the Ray executor
(:mod:`docconv.run.ray_executor`) inside each OCR actor. What it returns is plain data
(:class:`~docconv.output.document.Page`, :class:`PageFailure`), so it can travel between processes.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from deepseek_ocr.prompts import GROUNDING_TOKEN
from docconv.engines.base import Engine, EngineError, EngineOutput, PageJob, TokenCallback
from docconv.output import postprocess
from docconv.output.document import Page
from docconv.run import bands
from docconv.run.modes import AUTO, MODE_ORDER, ModeChoice, resolve_mode, served_modes
from docconv.run.options import ConvertOptions

log = logging.getLogger("docconv.run.reading")

#: Retry of a degraded page: n-gram guard this much tighter and its window this much wider.
RETRY_NGRAM_DIVISOR = 2
RETRY_MIN_NGRAM = 8
RETRY_WINDOW_FACTOR = 2

#: An exception's message is cut to this many characters in the one line that reports it.
MAX_CAUSE_CHARS = 300


@dataclass(frozen=True)
class PageFailure:
    """The engine raised while reading a page: the one-line cause and, for -v, the traceback.

    Kept as text, not as the exception: its traceback holds the failed call's frames, and with
    them tensors (a page's activations) that would stay alive while the rest of the batch is read.
    """

    cause: str
    traceback: str

    @classmethod
    def of(cls, error: BaseException) -> PageFailure:
        return cls(describe_exception(error), "".join(traceback.format_exception(error)).rstrip())


@dataclass
class PageWork:
    """One page on its way through the engine; ``image`` lives only until the page is finished.

    ``tag`` is the executor's handle on the page's document (the local pipeline's document run,
    the Ray executor's row key); reading never looks at it.
    """

    tag: Any
    index: int
    image: Image.Image
    mode: str
    bands: list[bands.Band]
    started: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class PageRead:
    """What reading one page gave: the page, or the failure; and a failed retry, if one was tried."""

    page: Page | None
    failure: PageFailure | None = None
    retry_failure: PageFailure | None = None


class PageReader:
    """Reads pages with the engine ``engine_source()`` returns (called on first use)."""

    def __init__(self, options: ConvertOptions, engine_source: Callable[[], Engine]) -> None:
        self.options = options
        self._engine_source = engine_source

    @property
    def engine(self) -> Engine:
        return self._engine_source()

    def choose_mode(self, image: Image.Image, text_layer: str | None) -> ModeChoice:
        """The page's mode (``--mode auto`` measures the image and its text layer)."""
        auto = self.options.mode == AUTO
        text_tokens = self.engine.count_text_tokens(text_layer) if auto and text_layer else None
        return resolve_mode(
            self.options.mode,
            image.size,
            text_tokens,
            self.engine,
            self.options.max_ratio,
            image=image if auto else None,
        )

    def work(self, tag: Any, index: int, image: Image.Image, mode: str) -> PageWork:
        return PageWork(tag, index, image, mode, bands.split_into_bands(image))

    def read(self, works: list[PageWork], on_token: TokenCallback | None = None) -> list[PageRead]:
        """Read ``works`` in one engine call, in order; a degraded page is read once more one mode up."""
        pages = self._read(works, retry=False, on_token=on_token)
        reads = [PageRead(page) if isinstance(page, Page) else PageRead(None, page) for page in pages]
        degraded = [i for i, page in enumerate(pages) if isinstance(page, Page) and page.degraded]
        if degraded:
            retried = self._read([works[i] for i in degraded], retry=True, on_token=on_token)
            for i, page in zip(degraded, retried, strict=True):
                # A failed retry keeps the first read: it is usable, only degraded.
                reads[i] = (
                    PageRead(reads[i].page, None, page) if isinstance(page, PageFailure) else PageRead(page)
                )
        for work, read in zip(works, reads, strict=True):
            if read.page is not None:
                read.page.seconds = round(time.monotonic() - work.started, 3)
        return reads

    def _read(
        self, works: list[PageWork], retry: bool, on_token: TokenCallback | None
    ) -> list[Page | PageFailure]:
        """The pages of ``works`` read in one engine call, in order; a page the engine raised on is
        a :class:`PageFailure`. When a call of several pages raises, they are read again one at a
        time, so that only the page that fails is failed, not the others batched with it."""
        engine = self.engine  # outside the try: an engine that cannot start is exit 3, not a page failure
        jobs = [self._job(work, band, retry) for work in works for band in work.bands]
        try:
            outputs = iter(engine.generate(jobs, on_token=on_token))
        except EngineError:
            raise
        except Exception as error:
            # Anything else the engine raises (a torch op refused on this CPU, out of memory, a
            # bug) is about this batch's pages; Ctrl-C and SIGTERM are not Exceptions and stop the run.
            failure = PageFailure.of(error)
        else:
            return [self._page_from(work, [next(outputs) for _ in work.bands], retry) for work in works]
        # Out of the except block, so the exception (and the tensors its frames hold) is gone.
        if len(works) == 1:
            return [failure]
        log.debug("a batch of %d pages failed (%s); reading them one at a time", len(works), failure.cause)
        return [result for work in works for result in self._read([work], retry, on_token)]

    def _job(self, work: PageWork, band: bands.Band, retry: bool) -> PageJob:
        options = self.options
        ngram, window = options.ngram, options.ngram_window
        if retry:
            ngram = max(RETRY_MIN_NGRAM, ngram // RETRY_NGRAM_DIVISOR)
            window = window * RETRY_WINDOW_FACTOR
        mode = read_mode(work.mode, retry, served_modes(self.engine))
        return PageJob(band.image, mode, options.full_prompt(), options.max_tokens, ngram, window)

    def _page_from(self, work: PageWork, outputs: list[EngineOutput], retry: bool) -> Page:
        parsed = self._parse(work, outputs)
        hit_limit = any(out.stop_reason == "max_tokens" for out in outputs)
        reasons = list(parsed.reasons)
        if hit_limit:
            reasons.append(postprocess.REASON_TOKEN_LIMIT)
        return Page(
            number=work.index + 1,
            width=work.image.width,
            height=work.image.height,
            mode=read_mode(work.mode, retry, served_modes(self.engine)),
            vision_tokens=sum(out.vision.tokens for out in outputs),
            valid_vision_tokens=sum(out.vision.valid for out in outputs),
            text_tokens=sum(out.text_tokens for out in outputs),
            stop_reason="max_tokens" if hit_limit else "eos",
            degraded=bool(reasons),
            degraded_reasons=list(dict.fromkeys(reasons)),
            retried=retry,
            raw=outputs[0].text
            if len(outputs) == 1
            else bands.merge_band_texts([out.text for out in outputs]),
            blocks=parsed.blocks,
        )

    def _parse(self, work: PageWork, outputs: list[EngineOutput]) -> postprocess.ParsedPage:
        """Blocks of the page; a banded page is stitched back with each overlap read once."""
        if len(outputs) == 1:
            return postprocess.parse_page(outputs[0].text, work.image.width, work.image.height)
        if GROUNDING_TOKEN not in self.options.full_prompt():
            # Without boxes only the text can tell the overlap apart: merge the texts, then parse.
            merged = bands.merge_band_texts([out.text for out in outputs])
            return postprocess.parse_page(merged, work.image.width, work.image.height)
        parsed = [
            postprocess.parse_page(out.text, band.image.width, band.image.height)
            for band, out in zip(work.bands, outputs, strict=True)
        ]
        stitched = postprocess.ParsedPage(
            bands.merge_band_blocks(work.bands, [page.blocks for page in parsed])
        )
        for page in parsed:
            for reason in page.reasons:
                stitched.add_reason(reason)
        return stitched


def describe_exception(error: BaseException) -> str:
    """``Type: message`` on one line, for an error line: the message's first line, cut short
    (torch's messages can run to a C++ stack trace)."""
    lines = str(error).strip().splitlines()
    message = f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
    return message if len(message) <= MAX_CAUSE_CHARS else message[: MAX_CAUSE_CHARS - 1] + "…"


def read_mode(chosen: str, retry: bool, served: tuple[str, ...] = MODE_ORDER) -> str:
    """The retry reads one mode up among the ``served`` ones (the most capable retries as itself)."""
    if not retry:
        return chosen
    larger = [mode for mode in served if MODE_ORDER.index(mode) > MODE_ORDER.index(chosen)]
    return larger[0] if larger else chosen
