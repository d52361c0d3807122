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
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from PIL import Image

from docconv.engines import create_engine
from docconv.engines.base import Engine, EngineError, EngineOptions
from docconv.fsutil import TEMP_MARKER, atomic_write_text
from docconv.output import writers
from docconv.output.document import Document, Page
from docconv.output.options import EXTENSIONS
from docconv.output.raw import RAW_SUFFIX, write_raw_file
from docconv.run.journal import Journal, bytes_identity, file_identity, fingerprint, journal_path
from docconv.run.modes import AUTO, unsupported_mode_message
from docconv.run.options import ConvertOptions
from docconv.run.progress import Reporter, RunSummary
from docconv.run.reading import PageFailure, PageRead, PageReader, PageWork, describe_exception
from docconv.sources.inputs import InputDocument, InputError
from docconv.sources.pages import DEFAULT_MODE, PageSource, dpi_for, open_document
from docconv.sources.selection import select_pages

log = logging.getLogger("docconv.run.pipeline")


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


# ---------------------------------------------------------------- the run


class Pipeline:
    """Converts documents according to ``options``, reporting to ``reporter``."""

    def __init__(
        self,
        options: ConvertOptions,
        reporter: Reporter,
        stdout: TextIO | None = None,
        engine: Engine | None = None,
        output_exists: Callable[[Path], bool] = Path.exists,
        on_written: Callable[[Path], None] | None = None,
    ) -> None:
        """``output_exists`` and ``on_written`` let an executor keep outputs elsewhere than in
        ``options.output`` (``--ray`` to a URL): whether a document's output is already there, and
        what to do once a document's files are written."""
        self.options = options
        self._output_exists = output_exists
        self._on_written = on_written
        self.reporter = reporter
        self.stdout = stdout or sys.stdout
        self.summary = RunSummary()
        self._engine = engine  # None: loaded (memoised) from options.engine on first use
        self.reader = PageReader(options, lambda: self.engine)
        self._open_runs: list[DocumentRun] = []
        self._logged_causes: set[str] = set()  # engine failures whose traceback -v already showed

    @property
    def batch_size(self) -> int:
        """``--batch-size``, else the engine's default (an engine without one reads a page at a time)."""
        return self.options.batch_size or getattr(self.engine, "default_batch_size", 1)

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
                if sum(len(w.bands) for w in batch) >= self.batch_size:
                    self._process(batch)
                    batch = []
            if batch:
                self._process(batch)
        finally:
            self.close_open_runs()
        return self.summary

    def close_open_runs(self) -> None:
        """Close the documents left unfinished (a stopped run): their journals keep what was done."""
        for run in self._open_runs:
            run.close()

    # ------------------------------------------------------------ producing pages

    def _page_works(self, documents: Sequence[InputDocument]) -> Iterator[PageWork]:
        for document in documents:
            run = self.start_document(document)
            if run is None:
                continue
            for index in run.indices:
                if run.failed:
                    break
                if index + 1 in run.pages:
                    continue
                try:
                    yield self._prepare(run, index)
                except InputError as error:
                    self.fail_document(run, f"page {index + 1}: {error}")
            self.finish_if_complete(run)

    def start_document(self, document: InputDocument) -> DocumentRun | None:
        """Open ``document`` for converting, with the pages its journal already holds; None when it
        is skipped (its output exists) or cannot be opened (reported as a failure)."""
        target = output_target(document, self.options)
        if target is not None and not self.options.overwrite and self._output_exists(target):
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
        self._open_runs.append(run)
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
        image, text_layer = render_page(run.source, index, self.options)
        choice = self.reader.choose_mode(image, text_layer)
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
        return self.reader.work(run, index, image, choice.mode)

    # ------------------------------------------------------------ running the engine

    def _process(self, batch: list[PageWork]) -> None:
        live = [work for work in batch if not work.tag.failed]
        if not live:
            return
        for work, read in zip(live, self.reader.read(live, on_token=self.reporter.on_token), strict=True):
            self.finish_read(work.tag, work.index, read, work.image)

    # ------------------------------------------------------------ finishing

    def finish_read(
        self,
        run: DocumentRun,
        index: int,
        read: PageRead,
        image: Image.Image | None = None,
        figure_crops: Mapping[str, bytes] | None = None,
    ) -> None:
        """Record what reading page ``index`` of ``run`` gave: a finished page (its figures come
        from ``image``, or ready-cropped from ``figure_crops``), or a failure."""
        if read.retry_failure is not None:
            self._retry_failed(run, index, read.retry_failure)
        if read.page is None:
            assert read.failure is not None
            self._page_failed(run, index, read.failure)
        else:
            self._finish_page(run, read.page, image, figure_crops)

    def _finish_page(
        self,
        run: DocumentRun,
        page: Page,
        image: Image.Image | None,
        figure_crops: Mapping[str, bytes] | None,
    ) -> None:
        if run.failed:  # an earlier page of this batch could not be written
            return
        try:
            if run.target is not None:
                images_dir, link_prefix = writers.figure_location(run.target)
                if figure_crops is not None:
                    writers.write_figure_crops(figure_crops, images_dir)
                elif image is not None:
                    writers.save_figures(page, image, images_dir, link_prefix)
            if run.journal is not None:
                run.journal.record(page)
        except OSError as error:
            self.fail_document(run, _write_error(run.target, error))
            return
        run.pages[page.number] = page
        self.summary.pages += 1
        if page.degraded:
            self.summary.degraded.append(
                f"{run.document.source} page {page.number}: {'; '.join(page.degraded_reasons)}"
            )
        self.reporter.page_done(run.document.source, page)
        self._stream_jsonl(run)
        self.finish_if_complete(run)

    def _stream_jsonl(self, run: DocumentRun) -> None:
        """jsonl to stdout: emit each page as soon as it and all pages before it are done."""
        if run.target is not None or self.options.format != "jsonl":
            return
        while run.next_streamed < len(run.indices) and run.indices[run.next_streamed] + 1 in run.pages:
            page = run.pages[run.indices[run.next_streamed] + 1]
            self.stdout.write(writers.page_jsonl_line(run.document.source, page) + "\n")
            self.stdout.flush()
            run.next_streamed += 1

    def finish_if_complete(self, run: DocumentRun) -> None:
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
                if self._on_written is not None:
                    self._on_written(run.target)
            except OSError as error:
                self.fail_document(run, _write_error(run.target, error))
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

    def _page_failed(self, run: DocumentRun, index: int, failure: PageFailure) -> None:
        """One error line for the page; its document fails as for a page that cannot be rendered:
        no output is written and its journal keeps the pages before, so a rerun retries this one."""
        self._log_failure(run, index, "the engine failed", failure)
        self.fail_document(
            run, f"page {index + 1}: the engine failed: {failure.cause} (-v shows the traceback)"
        )

    def _retry_failed(self, run: DocumentRun, index: int, failure: PageFailure) -> None:
        self._log_failure(run, index, "the retry one mode up failed", failure)
        self.reporter.warning(
            f"{run.document.source}: page {index + 1}: the retry one mode up failed "
            f"({failure.cause}); kept the first, degraded read"
        )

    def _log_failure(self, run: DocumentRun, index: int, what: str, failure: PageFailure) -> None:
        """The traceback at -v, once per distinct cause: an engine that fails on every page would
        otherwise print the same traceback for each (-vv prints every one)."""
        where = f"{run.document.source} page {index + 1}"
        if failure.cause not in self._logged_causes or log.isEnabledFor(logging.DEBUG):
            self._logged_causes.add(failure.cause)
            log.info("%s: %s:\n%s", where, what, failure.traceback)
        else:
            log.info("%s: %s with the error above (%s)", where, what, failure.cause)

    def fail_document(self, run: DocumentRun, message: str) -> None:
        run.failed = True
        self._record_failure(run.document.source, message)
        run.close()
        with contextlib.suppress(ValueError):
            self._open_runs.remove(run)

    def _record_failure(self, source: str, message: str) -> None:
        self.summary.failures.append((source, message))
        self.reporter.error(source, message)
        self.reporter.document_done()


def render_page(source: PageSource, index: int, options: ConvertOptions) -> tuple[Image.Image, str | None]:
    """Page ``index`` as the engine will see it, and (for ``--mode auto``) its PDF text layer."""
    auto = options.mode == AUTO
    width, height = source.page_size_points(index)
    # auto decides per page after rendering, so it renders for the richest mode it picks.
    render_mode = DEFAULT_MODE if auto else options.mode
    image = source.render(index, options.dpi or dpi_for(render_mode, width, height))
    return image, source.text_layer(index) if auto else None


def _write_error(target: Path | None, error: OSError) -> str:
    return f"cannot write {target} ({error.strerror or error}); check permissions and free space"


def _remove_own_temporaries(target: Path) -> None:
    """Temporaries a killed run left for this very output (never other runs' files)."""
    for leftover in target.parent.glob(f".{glob.escape(target.name)}{TEMP_MARKER}*"):
        with contextlib.suppress(OSError):
            leftover.unlink()
