"""What the reporter writes to stderr: error lines always, live display only on a terminal."""

from __future__ import annotations

import io

from docconv.output.document import Page
from docconv.run.progress import Reporter, RunSummary


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_errors_are_single_lines_even_when_quiet_and_long() -> None:
    stream = io.StringIO()
    reporter = Reporter(quiet=True, stream=stream)
    reporter.error("a/very/long/" * 20 + "scan.pdf", "encrypted PDF; pass --password")
    reporter.summary(RunSummary(failures=[("scan.pdf", "x")]))
    (line,) = stream.getvalue().splitlines()
    assert line.startswith("docconv: error: a/very/long/") and line.endswith("pass --password")


def test_summary_lists_degraded_pages_and_failures() -> None:
    stream = io.StringIO()
    summary = RunSummary(
        documents=2,
        pages=5,
        degraded=["a.pdf page 3: repetition loop cut"],
        failures=[("b.pdf", "PDF has no pages; nothing to convert")],
    )
    Reporter(stream=stream).summary(summary)
    text = stream.getvalue()
    assert "degraded: a.pdf page 3: repetition loop cut" in text
    assert "failed: b.pdf: PDF has no pages" in text


def test_live_display_only_on_a_terminal() -> None:
    for stream, expect_display in ((Terminal(), True), (io.StringIO(), False)):
        with Reporter(stream=stream) as reporter:
            reporter.start_run(1)
            reporter.start_document("a.pdf", 2, resumed=0)
            reporter.page_started("base")
            reporter.page_done("a.pdf", Page(number=1, width=10, height=10, mode="base"))
        assert ("\x1b[" in stream.getvalue()) is expect_display
