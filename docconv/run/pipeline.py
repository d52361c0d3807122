"""One conversion run: documents -> pages -> modes -> engine batches -> pages -> outputs.

The engine is loaded once, lazily (a rerun whose outputs all exist never loads it), and
memoised per :class:`EngineOptions` so in-process callers (tests, notebooks) reuse it.
Pages stream through: at most ``batch_size`` page images are alive at a time, across
document boundaries, so memory stays flat however long the documents are. Each finished
page is journaled before the next batch starts; each output is written atomically once its
document is complete.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import sys
import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from PIL import Image

from deepseek_ocr.prompts import GROUNDING_TOKEN
from docconv.engines import create_engine
from docconv.engines.base import Engine, EngineError, EngineOptions, EngineOutput, PageJob
from docconv.fsutil import TEMP_MARKER, atomic_write_text
from docconv.output import postprocess, writers
from docconv.output.document import Document, Page
from docconv.output.options import EXTENSIONS
from docconv.output.raw import RAW_SUFFIX, write_raw_file
from docconv.run import bands
from docconv.run.journal import Journal, bytes_identity, file_identity, fingerprint, journal_path
from docconv.run.modes import AUTO, next_larger_mode, resolve_mode, unsupported_mode_message
from docconv.run.options import ConvertOptions
from docconv.run.progress import Reporter, RunSummary
from docconv.sources.inputs import InputDocument, InputError
from docconv.sources.pages import DEFAULT_MODE, PageSource, dpi_for, open_document
from docconv.sources.selection import select_pages

log = logging.getLogger("docconv.run.pipeline")

#: Retry of a degraded page: n-gram guard this much tighter and its window this much wider.
RETRY_NGRAM_DIVISOR = 2
RETRY_MIN_NGRAM = 8
RETRY_WINDOW_FACTOR = 2

#: An exception's message is cut to this many characters in the one line that reports it.
MAX_CAUSE_CHARS = 300


# ---------------------------------------------------------------- engine


_ENGINES: dict[EngineOptions, Engine] = {}


def load_engine(options: EngineOptions) -> Engine:
    """The engine for ``options``, built once per process (raises EngineError if it cannot start)."""
    if options not in _ENGINES:
        try:
            engine = create_engine(options)
        except EngineError:
            raise
        except Exception as error:
            # Not a cause the engine foresaw (a torch or CPU failure while loading): still exit 3
            # with one line, not a traceback; -v logs the traceback.
            log.info(
                "the engine failed while loading:\n%s", "".join(traceback.format_exception(error)).rstrip()
            )
            raise EngineError(f"{describe_exception(error)} (-v shows the traceback)") from error
        log.info("engine %s on %s, %s, quant %s", engine.name, engine.device, engine.dtype, engine.quant)
        _ENGINES[options] = engine
    return _ENGINES[options]


# ---------------------------------------------------------------- outputs


def output_target(document: InputDocument, options: ConvertOptions) -> Path | None:
    """Where ``document``'s output goes; None means stdout."""
    if options.output is None:
        return None
    if not options.output_is_dir:
        return options.output
    return options.output / (str(document.relative) + EXTENSIONS[options.format])


# ---------------------------------------------------------------- per-document state


@dataclass
class DocumentRun:
    """A document being converted: its source, outputs, journal and finished pages."""

    document: InputDocument
    source: PageSource
    target: Path | None
    indices: Sequence[int]
    journal: Journal | None
    pages: dict[int, Page] = field(default_factory=dict)
    failed: bool = False
    resumed: int = 0
    next_streamed: int = 0  # index into ``indices`` of the next page to stream (jsonl to stdout)

    @property
    def complete(self) -> bool:
        return len(self.pages) == len(self.indices)

    def close(self) -> None:
        if self.journal is not None:
            self.journal.close()
        self.source.close()


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
    """One page on its way through the engine; ``image`` lives only until the page is finished."""

    run: DocumentRun
    index: int
    image: Image.Image
    mode: str
    bands: list[bands.Band]
    started: float = field(default_factory=time.monotonic)


# ---------------------------------------------------------------- the run


class Pipeline:
    """Converts documents according to ``options``, reporting to ``reporter``."""

    def __init__(
        self,
        options: ConvertOptions,
        reporter: Reporter,
        stdout: TextIO | None = None,
        engine: Engine | None = None,
    ) -> None:
        self.options = options
        self.reporter = reporter
        self.stdout = stdout or sys.stdout
        self.summary = RunSummary()
        self._engine = engine  # None: loaded (memoised) from options.engine on first use
        self._open_runs: list[DocumentRun] = []
        self._logged_causes: set[str] = set()  # engine failures whose traceback -v already showed

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            engine = load_engine(self.options.engine)
            # Which modes exist is the model's: known once its checkpoint is, before any page.
            if problem := unsupported_mode_message(self.options.mode, engine.name, engine.modes):
                raise EngineError(problem)
            self._engine = engine
        return self._engine

    def run(self, documents: Sequence[InputDocument]) -> RunSummary:
        """Convert ``documents``; raises EngineError (engine cannot start) and KeyboardInterrupt."""
        self.reporter.start_run(len(documents))
        try:
            batch: list[PageWork] = []
            for work in self._page_works(documents):
                batch.append(work)
                if sum(len(w.bands) for w in batch) >= self.options.batch_size:
                    self._process(batch)
                    batch = []
            if batch:
                self._process(batch)
        finally:
            for run in self._open_runs:
                run.close()
        return self.summary

    # ------------------------------------------------------------ producing pages

    def _page_works(self, documents: Sequence[InputDocument]) -> Iterator[PageWork]:
        for document in documents:
            run = self._start(document)
            if run is None:
                continue
            self._open_runs.append(run)
            for index in run.indices:
                if run.failed:
                    break
                if index + 1 in run.pages:
                    continue
                try:
                    yield self._prepare(run, index)
                except InputError as error:
                    self._fail(run, f"page {index + 1}: {error}")
            self._finish_if_complete(run)

    def _start(self, document: InputDocument) -> DocumentRun | None:
        target = output_target(document, self.options)
        if target is not None and target.exists() and not self.options.overwrite:
            log.info("%s: %s exists, skipped (use --overwrite to redo it)", document.source, target)
            self.summary.skipped += 1
            self.reporter.document_done()
            return None
        try:
            source = open_document(document, self.options.password)
        except InputError as error:
            self._record_failure(document.source, str(error))
            return None
        try:
            indices = select_pages(source, self.options.pages)
        except InputError as error:
            source.close()
            self._record_failure(document.source, str(error))
            return None
        try:
            journal = self._journal_for(document, target)
        except OSError as error:
            source.close()
            self._record_failure(document.source, _write_error(target, error))
            return None
        run = DocumentRun(document, source, target, indices, journal)
        if journal is not None:
            wanted = {index + 1 for index in indices}
            run.pages = {number: page for number, page in journal.finished.items() if number in wanted}
            run.resumed = len(run.pages)
            self.summary.resumed_pages += run.resumed
        self.reporter.start_document(document.source, len(indices), run.resumed)
        return run

    def _journal_for(self, document: InputDocument, target: Path | None) -> Journal | None:
        if target is None:
            return None  # stdout cannot be resumed into
        _remove_own_temporaries(target)
        identity = (
            bytes_identity(document.data) if document.data is not None else file_identity(document.path)
        )
        # --pages is not part of the fingerprint: a page read once is valid for any selection.
        return Journal(journal_path(target), fingerprint(identity, self.options.result_options()))

    def _prepare(self, run: DocumentRun, index: int) -> PageWork:
        options = self.options
        auto = options.mode == AUTO
        width, height = run.source.page_size_points(index)
        # auto decides per page after rendering, so it renders for the richest mode it picks.
        render_mode = DEFAULT_MODE if auto else options.mode
        image = run.source.render(index, options.dpi or dpi_for(render_mode, width, height))
        text_layer = run.source.text_layer(index) if auto else None
        text_tokens = self.engine.count_text_tokens(text_layer) if text_layer else None
        choice = resolve_mode(
            options.mode,
            image.size,
            text_tokens,
            self.engine,
            options.max_ratio,
            image=image if auto else None,
        )
        self.reporter.page_started(choice.mode)
        log.debug(
            "%s page %d: %s mode (%s: ~%d text tokens, ratio %.2f)",
            run.document.source,
            index + 1,
            choice.mode,
            choice.source,
            choice.estimated_text_tokens,
            choice.ratio,
        )
        return PageWork(run, index, image, choice.mode, bands.split_into_bands(image))

    # ------------------------------------------------------------ running the engine

    def _process(self, batch: list[PageWork]) -> None:
        live = [work for work in batch if not work.run.failed]
        if not live:
            return
        pages = self._read(live, retry=False)
        degraded = [i for i, page in enumerate(pages) if isinstance(page, Page) and page.degraded]
        if degraded:
            retried = self._read([live[i] for i in degraded], retry=True)
            for i, page in zip(degraded, retried, strict=True):
                if isinstance(page, PageFailure):
                    # The first read is usable, only degraded: keep it rather than fail the page.
                    self._retry_failed(live[i], page)
                else:
                    pages[i] = page
        for work, page in zip(live, pages, strict=True):
            if isinstance(page, PageFailure):
                self._page_failed(work, page)
                continue
            page.seconds = round(time.monotonic() - work.started, 3)
            self._finish_page(work, page)

    def _read(self, works: list[PageWork], retry: bool) -> list[Page | PageFailure]:
        """The pages of ``works`` read in one engine call, in order; a page the engine raised on is
        a :class:`PageFailure`. When a call of several pages raises, they are read again one at a
        time, so that only the page that fails is failed, not the others batched with it."""
        engine = self.engine  # outside the try: an engine that cannot start is exit 3, not a page failure
        jobs = [self._job(work, band, retry) for work in works for band in work.bands]
        try:
            outputs = iter(engine.generate(jobs, on_token=self.reporter.on_token))
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
        return [result for work in works for result in self._read([work], retry)]

    def _job(self, work: PageWork, band: bands.Band, retry: bool) -> PageJob:
        options = self.options
        ngram, window = options.ngram, options.ngram_window
        if retry:
            ngram = max(RETRY_MIN_NGRAM, ngram // RETRY_NGRAM_DIVISOR)
            window = window * RETRY_WINDOW_FACTOR
        mode = _read_mode(work.mode, retry, self.engine.modes)
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
            mode=_read_mode(work.mode, retry, self.engine.modes),
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

    # ------------------------------------------------------------ finishing

    def _finish_page(self, work: PageWork, page: Page) -> None:
        run = work.run
        if run.failed:  # an earlier page of this batch could not be written
            return
        try:
            if run.target is not None:
                writers.save_figures(page, work.image, *writers.figure_location(run.target))
            if run.journal is not None:
                run.journal.record(page)
        except OSError as error:
            self._fail(run, _write_error(run.target, error))
            return
        run.pages[page.number] = page
        self.summary.pages += 1
        if page.degraded:
            self.summary.degraded.append(
                f"{run.document.source} page {page.number}: {'; '.join(page.degraded_reasons)}"
            )
        self.reporter.page_done(run.document.source, page)
        self._stream_jsonl(run)
        self._finish_if_complete(run)

    def _stream_jsonl(self, run: DocumentRun) -> None:
        """jsonl to stdout: emit each page as soon as it and all pages before it are done."""
        if run.target is not None or self.options.format != "jsonl":
            return
        while run.next_streamed < len(run.indices) and run.indices[run.next_streamed] + 1 in run.pages:
            page = run.pages[run.indices[run.next_streamed] + 1]
            self.stdout.write(writers.page_jsonl_line(run.document.source, page) + "\n")
            self.stdout.flush()
            run.next_streamed += 1

    def _finish_if_complete(self, run: DocumentRun) -> None:
        if run.failed or not run.complete or run not in self._open_runs:
            return
        document = Document(
            source=run.document.source,
            pages=[run.pages[i + 1] for i in run.indices],
            page_count=run.source.page_count,
        )
        if run.target is None:
            self._write_stdout(document)
        else:
            try:
                self._write_files(run.target, document)
            except OSError as error:
                self._fail(run, _write_error(run.target, error))
                return
        if run.journal is not None:
            run.journal.remove()
        run.close()
        self._open_runs.remove(run)
        self.summary.documents += 1
        self.reporter.document_done()

    def _write_stdout(self, document: Document) -> None:
        if self.options.format != "jsonl":  # jsonl pages were streamed as they finished
            self.stdout.write(writers.render_document(document, self.options.render))
            self.stdout.flush()

    def _write_files(self, target: Path, document: Document) -> None:
        options = self.options
        if options.tables:
            writers.write_tables_csv(document, target.parent, target.stem)
        if options.keep_raw:
            write_raw_file(target.with_name(target.stem + RAW_SUFFIX), document)
        atomic_write_text(target, writers.render_document(document, options.render))

    def _page_failed(self, work: PageWork, failure: PageFailure) -> None:
        """One error line for the page; its document fails as for a page that cannot be rendered:
        no output is written and its journal keeps the pages before, so a rerun retries this one."""
        self._log_failure(work, "the engine failed", failure)
        self._fail(
            work.run, f"page {work.index + 1}: the engine failed: {failure.cause} (-v shows the traceback)"
        )

    def _retry_failed(self, work: PageWork, failure: PageFailure) -> None:
        self._log_failure(work, "the retry one mode up failed", failure)
        self.reporter.warning(
            f"{work.run.document.source}: page {work.index + 1}: the retry one mode up failed "
            f"({failure.cause}); kept the first, degraded read"
        )

    def _log_failure(self, work: PageWork, what: str, failure: PageFailure) -> None:
        """The traceback at -v, once per distinct cause: an engine that fails on every page would
        otherwise print the same traceback for each (-vv prints every one)."""
        where = f"{work.run.document.source} page {work.index + 1}"
        if failure.cause not in self._logged_causes or log.isEnabledFor(logging.DEBUG):
            self._logged_causes.add(failure.cause)
            log.info("%s: %s:\n%s", where, what, failure.traceback)
        else:
            log.info("%s: %s with the error above (%s)", where, what, failure.cause)

    def _fail(self, run: DocumentRun, message: str) -> None:
        run.failed = True
        self._record_failure(run.document.source, message)
        run.close()
        with contextlib.suppress(ValueError):
            self._open_runs.remove(run)

    def _record_failure(self, source: str, message: str) -> None:
        self.summary.failures.append((source, message))
        self.reporter.error(source, message)
        self.reporter.document_done()


def describe_exception(error: BaseException) -> str:
    """``Type: message`` on one line, for an error line: the message's first line, cut short
    (torch's messages can run to a C++ stack trace)."""
    lines = str(error).strip().splitlines()
    message = f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
    return message if len(message) <= MAX_CAUSE_CHARS else message[: MAX_CAUSE_CHARS - 1] + "…"


def _write_error(target: Path | None, error: OSError) -> str:
    return f"cannot write {target} ({error.strerror or error}); check permissions and free space"


def _read_mode(chosen: str, retry: bool, modes: tuple[str, ...]) -> str:
    """The retry reads one of the engine's ``modes`` up (the most capable mode retries as itself)."""
    return (next_larger_mode(chosen, modes) or chosen) if retry else chosen


def _remove_own_temporaries(target: Path) -> None:
    """Temporaries a killed run left for this very output (never other runs' files)."""
    for leftover in target.parent.glob(f".{glob.escape(target.name)}{TEMP_MARKER}*"):
        with contextlib.suppress(OSError):
            leftover.unlink()
