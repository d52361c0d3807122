"""Progress of an evaluation on stderr: a bar with ETA on a terminal, else a line now and then.

stdout is the report's (``docconv eval ... > table.md``). A long unattended run (a GPU machine,
``nohup``) writes to a log file, not a terminal, so there the progress is a plain line with the
ETA after the first scored page and then at most every :data:`LINE_INTERVAL` seconds.
"""

from __future__ import annotations

import sys
import time
from datetime import timedelta
from typing import TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

#: Seconds between two progress lines when stderr is not a terminal.
LINE_INTERVAL = 10.0


class EvalProgress:
    """Counts scored page x mode results and estimates the time left."""

    def __init__(self, quiet: bool = False, stream: TextIO | None = None) -> None:
        self._stream = stream or sys.stderr
        self._quiet = quiet
        self._console = Console(file=self._stream, soft_wrap=True, highlight=False)
        self._bar: Progress | None = None
        self._task: TaskID | None = None
        self._total = 0
        self._done = 0
        self._resumed = 0
        self._started = time.monotonic()
        self._last_line = 0.0

    def __enter__(self) -> EvalProgress:
        if not self._quiet and self._stream.isatty():
            self._bar = Progress(
                TextColumn("scoring"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("pages x modes"),
                TimeRemainingColumn(),
                console=self._console,
                transient=True,
            )
            self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def start(self, total: int, done: int) -> None:
        self._total, self._done, self._resumed = total, done, done
        self._started = time.monotonic()
        if done and not self._quiet:
            self.note(f"resuming: {done} of {total} page x mode results already scored")
        if self._bar is not None:
            self._task = self._bar.add_task("scoring", total=total, completed=done)

    def on_token(self, job: int, generated: int) -> None:
        """Engine token callback: keeps a terminal's bar (and its ETA) moving within a page."""
        if self._bar is not None and generated % 16 == 0:
            self._bar.refresh()

    def advance(self) -> None:
        self._done += 1
        if self._bar is not None and self._task is not None:
            self._bar.advance(self._task)
        elif not self._quiet and self._line_due():
            self.note(f"scored {self._done}/{self._total} pages x modes, ETA {self.eta()}")

    def eta(self) -> str:
        """Time left at the rate of this run's scored pages (resumed ones took no time)."""
        fresh = self._done - self._resumed
        if fresh <= 0:
            return "unknown"
        seconds = (time.monotonic() - self._started) / fresh * (self._total - self._done)
        return str(timedelta(seconds=round(seconds)))

    def _line_due(self) -> bool:
        now = time.monotonic()
        first = self._done - self._resumed == 1
        if first or self._done == self._total or now - self._last_line >= LINE_INTERVAL:
            self._last_line = now
            return True
        return False

    def note(self, message: str) -> None:
        self._console.print(f"docconv eval: {message}", markup=False)

    def error(self, source: str, message: str) -> None:
        """One line naming the file and the fix; shown even with --quiet."""
        self._console.print(f"docconv: error: {source}: {message}", markup=False)

    def warning(self, source: str, message: str) -> None:
        if not self._quiet:
            self._console.print(f"docconv: warning: {source}: {message}", markup=False)
