"""What the user sees on stderr while a run goes: progress bars, per-page logs, errors, summary.

stdout is reserved for converted output (``docconv scan.pdf > scan.md``), so everything
here writes to stderr. The live display is only drawn on a terminal and never with
``--quiet``; error lines and the summary are plain text and always one line per failure.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from typing import TextIO

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from docconv.output.document import Page

log = logging.getLogger("docconv")


@dataclass
class RunSummary:
    """Counts for the end-of-run table and the exit code."""

    documents: int = 0
    skipped: int = 0
    pages: int = 0
    resumed_pages: int = 0
    degraded: list[str] = field(default_factory=list)  # "<source> page N: reasons"
    failures: list[tuple[str, str]] = field(default_factory=list)  # (source, message)
    started: float = field(default_factory=time.monotonic)

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started


class Reporter:
    """Progress display plus error and summary output, all on ``stream`` (stderr)."""

    def __init__(self, quiet: bool = False, stream: TextIO | None = None) -> None:
        self._stream = stream or sys.stderr
        self._quiet = quiet
        self._console = Console(file=self._stream, soft_wrap=True, highlight=False)
        self._live = not quiet and self._stream.isatty()
        self._progress: Progress | None = None
        self._documents_task: TaskID | None = None
        self._pages_task: TaskID | None = None
        self._tokens = 0
        self._tokens_started = time.monotonic()
        self._current_mode = ""
        self._pages_started: tuple[float, int] | None = None  # (when, pages done then): --ray's rate

    def configure_logging(self, verbosity: int) -> None:
        """``-v`` logs per page, ``-vv`` adds debug output; drawn through the live display's console."""
        level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
        handler: logging.Handler
        if self._live:
            # Sharing the progress console keeps log lines above the bars instead of through them.
            handler = RichHandler(console=self._console, show_path=False, markup=False)
        else:
            handler = logging.StreamHandler(self._stream)
            handler.setFormatter(logging.Formatter("docconv: %(message)s"))
        root = logging.getLogger("docconv")
        root.handlers[:] = [handler]
        root.setLevel(level)
        root.propagate = False

    def __enter__(self) -> Reporter:
        if self._live:
            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[detail]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=self._console,
                transient=True,
            )
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    # -------------------------------------------------------------- progress

    def start_run(self, documents: int) -> None:
        if self._progress is not None:
            self._documents_task = self._progress.add_task("documents", total=documents, detail="")

    def start_document(self, name: str, pages: int, resumed: int) -> None:
        if resumed:
            log.info("%s: resuming, %d of %d pages already done", name, resumed, pages)
        if self._progress is None:
            return
        if self._pages_task is not None:
            self._progress.remove_task(self._pages_task)
        self._pages_task = self._progress.add_task(name, total=pages, completed=resumed, detail="")

    def start_pages(self, total: int, done: int) -> None:
        """One bar for all pages of the run, when pages finish in any order across documents
        (``--ray``): done/total, pages per second and the time left."""
        log.info("%d pages, %d already done", total, done)
        if self._progress is None:
            return
        if self._pages_task is not None:
            self._progress.remove_task(self._pages_task)
        self._pages_task = self._progress.add_task("pages", total=total, completed=done, detail="")
        self._pages_started = (time.monotonic(), done)

    def page_started(self, mode: str) -> None:
        self._update_detail(mode)

    def on_token(self, job: int, generated: int) -> None:
        """Engine token callback: feeds the tokens/s figure."""
        if self._tokens == 0:
            self._tokens_started = time.monotonic()  # the rate excludes loading the model
        self._tokens += 1
        if generated % 16 == 0:
            self._update_detail(None)

    def page_done(self, source: str, page: Page) -> None:
        log.info(
            "%s page %d: mode %s, %d vision / %d text tokens, ratio %.2f, stop %s, %.2fs%s",
            source,
            page.number,
            page.mode,
            page.vision_tokens,
            page.text_tokens,
            page.ratio,
            page.stop_reason,
            page.seconds,
            " (degraded: " + "; ".join(page.degraded_reasons) + ")" if page.degraded else "",
        )
        if self._progress is not None and self._pages_task is not None:
            self._progress.advance(self._pages_task)
            if self._pages_started is not None:
                self._update_page_rate()

    def document_done(self) -> None:
        if self._progress is not None and self._documents_task is not None:
            self._progress.advance(self._documents_task)

    def _update_page_rate(self) -> None:
        assert self._progress is not None and self._pages_task is not None and self._pages_started
        since, done_then = self._pages_started
        done = next(task.completed for task in self._progress.tasks if task.id == self._pages_task)
        rate = (done - done_then) / max(time.monotonic() - since, 1e-6)
        self._progress.update(self._pages_task, detail=f"{rate:.2f} pages/s")

    def _update_detail(self, mode: str | None) -> None:
        if self._progress is None or self._pages_task is None:
            return
        elapsed = max(time.monotonic() - self._tokens_started, 1e-6)
        if mode:
            self._current_mode = mode
        detail = f"{self._current_mode} {self._tokens / elapsed:.1f} tok/s".strip()
        self._progress.update(self._pages_task, detail=detail)

    # -------------------------------------------------------------- messages

    def error(self, source: str, message: str) -> None:
        """One line naming the file and the fix; shown even with --quiet."""
        self._console.print(f"docconv: error: {source}: {message}", markup=False)

    def warning(self, message: str) -> None:
        if not self._quiet:
            self._console.print(f"docconv: warning: {message}", markup=False)

    def summary(self, summary: RunSummary) -> None:
        if self._quiet:
            return
        table = Table(title="docconv summary", title_justify="left")
        for column in ("documents", "skipped", "pages", "resumed", "degraded pages", "failures", "time"):
            table.add_column(column, justify="right")
        table.add_row(
            str(summary.documents),
            str(summary.skipped),
            str(summary.pages),
            str(summary.resumed_pages),
            str(len(summary.degraded)),
            str(len(summary.failures)),
            f"{summary.seconds:.1f}s",
        )
        self._console.print(table)
        for line in summary.degraded:
            self._console.print(f"degraded: {line}", markup=False)
        for source, message in summary.failures:
            self._console.print(f"failed: {source}: {message}", markup=False)
