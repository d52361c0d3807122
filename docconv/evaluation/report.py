"""The evaluation report in the layout of the paper's Table 2, and its renderings.

Rows are buckets of the ground truth's text tokens (600-700 ... 1200-1300 by default); for
each mode a row gives the mean precision, the mean compression (text tokens per vision token)
and the number of pages. Under the table one line sums up the paper's claim: the mean precision
of every page x mode read at no more than 10x compression, and of those read at about 20x
(:data:`ABOUT_20X`). ``docs/evaluation.md`` defines every figure.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from statistics import fmean
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from docconv.evaluation.run import PageResult
from docconv.fsutil import atomic_open

REPORT_VERSION = 1
#: The paper's Table 2 rows: 600-1300 ground-truth tokens in buckets of 100.
DEFAULT_BUCKETS = "600-1300/100"
DEFAULT_BUCKET_WIDTH = 100
#: "Precision at <=10x": pages read at a compression of at most this.
AT_MOST_10X = 10.0
#: "Precision at ~20x": pages read at a compression within 10% of 20x.
ABOUT_20X = (18.0, 22.0)
FORMATS = ("table", "json", "csv", "md")
#: ``-o`` suffix -> format, when --format is not given.
FORMAT_OF_SUFFIX = {".json": "json", ".csv": "csv", ".md": "md"}
#: What to install for --plot.
PLOT_EXTRA = "docconv[eval]"

_RANGE = re.compile(r"^\s*(\d+)\s*-\s*(\d+)\s*(?:/\s*(\d+)\s*)?$")


@dataclass(frozen=True)
class Bucket:
    """Ground-truth text tokens from ``low`` (included) to ``high`` (excluded)."""

    low: int
    high: int

    @property
    def label(self) -> str:
        return f"{self.low}-{self.high}"

    def holds(self, tokens: int) -> bool:
        return self.low <= tokens < self.high


def parse_buckets(spec: str) -> tuple[Bucket, ...]:
    """``600-1300`` (buckets of 100), ``0-2000/250`` (of 250) or edges ``600,800,1000``.

    Raises ValueError with what is wrong and the forms accepted.
    """
    forms = "give LOW-HIGH, LOW-HIGH/WIDTH or ascending edges like 600,800,1000"
    matched = _RANGE.match(spec)
    if matched:
        low, high = int(matched[1]), int(matched[2])
        width = int(matched[3]) if matched[3] else DEFAULT_BUCKET_WIDTH
        if width <= 0 or high <= low:
            raise ValueError(f"--buckets {spec!r}: HIGH must exceed LOW and WIDTH be positive; {forms}")
        edges = [*range(low, high, width), high]
    else:
        try:
            edges = [int(part) for part in spec.split(",")]
        except ValueError:
            raise ValueError(f"--buckets {spec!r}: not understood; {forms}") from None
        if len(edges) < 2 or any(b <= a for a, b in pairwise(edges)) or edges[0] < 0:
            raise ValueError(f"--buckets {spec!r}: needs two or more ascending edges; {forms}")
    return tuple(Bucket(a, b) for a, b in pairwise(edges))


@dataclass(frozen=True)
class Cell:
    """Means over the page x mode results of one row and mode (None where there are none)."""

    pages: int
    precision: float | None
    compression: float | None
    edit_distance: float | None

    @classmethod
    def of(cls, results: Sequence[PageResult]) -> Cell:
        def mean(value: Callable[[PageResult], float]) -> float | None:
            return fmean(value(r) for r in results) if results else None

        return cls(
            pages=len(results),
            precision=mean(lambda r: r.precision),
            compression=mean(lambda r: r.compression),
            edit_distance=mean(lambda r: r.edit_distance),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "pages": self.pages,
            "precision": _rounded(self.precision),
            "compression": _rounded(self.compression),
            "edit_distance": _rounded(self.edit_distance),
        }


@dataclass(frozen=True)
class Row:
    label: str
    bucket: Bucket | None  # None: the row of every page
    cells: dict[str, Cell]


@dataclass
class Report:
    """The table, the summary and the page results behind them."""

    model: str
    modes: list[str]
    rows: list[Row]
    total: Row
    at_most_10x: Cell
    about_20x: Cell
    outside_buckets: int  # pages whose truth falls in no bucket (counted once, whatever the modes)
    results: list[PageResult] = field(default_factory=list)

    def summary_line(self) -> str:
        return (
            f"precision at <={AT_MOST_10X:g}x: {_percent(self.at_most_10x.precision)} "
            f"({self.at_most_10x.pages} page reads) / at ~20x ({ABOUT_20X[0]:g}-{ABOUT_20X[1]:g}x): "
            f"{_percent(self.about_20x.precision)} ({self.about_20x.pages} page reads)"
        )


def build_report(
    results: list[PageResult], buckets: Sequence[Bucket], modes: Sequence[str], model: str
) -> Report:
    """Group ``results`` into the buckets per mode and compute the summary bands."""

    def cells(selected: list[PageResult]) -> dict[str, Cell]:
        return {mode: Cell.of([r for r in selected if r.mode == mode]) for mode in modes}

    rows = [Row(b.label, b, cells([r for r in results if b.holds(r.text_tokens)])) for b in buckets]
    outside = {r.key for r in results if not any(b.holds(r.text_tokens) for b in buckets)}
    low, high = ABOUT_20X
    return Report(
        model=model,
        modes=list(modes),
        rows=rows,
        total=Row("all", None, cells(results)),
        at_most_10x=Cell.of([r for r in results if r.compression <= AT_MOST_10X]),
        about_20x=Cell.of([r for r in results if low <= r.compression <= high]),
        outside_buckets=len(outside),
        results=results,
    )


# ---------------------------------------------------------------- renderings


def render(report: Report, fmt: str) -> str:
    """The report as ``fmt`` (table: plain text; :func:`print_table` draws it in colour)."""
    if fmt == "json":
        return json.dumps(to_dict(report), ensure_ascii=False, indent=2) + "\n"
    if fmt == "csv":
        return to_csv(report)
    if fmt == "md":
        return to_markdown(report)
    buffer = io.StringIO()
    print_table(report, Console(file=buffer, width=200, color_system=None))
    return buffer.getvalue()


def to_dict(report: Report) -> dict[str, Any]:
    def row(r: Row) -> dict[str, Any]:
        bounds = {"low": r.bucket.low, "high": r.bucket.high} if r.bucket else {}
        return {"label": r.label, **bounds, "modes": {m: c.to_dict() for m, c in r.cells.items()}}

    return {
        "version": REPORT_VERSION,
        "model": report.model,
        "modes": report.modes,
        "buckets": [row(r) for r in report.rows],
        "all": row(report.total),
        "summary": {
            "at_most_10x": {"max_compression": AT_MOST_10X, **report.at_most_10x.to_dict()},
            "about_20x": {"band": list(ABOUT_20X), **report.about_20x.to_dict()},
        },
        "outside_buckets": report.outside_buckets,
        "pages": [r.to_dict() for r in report.results],
    }


CSV_COLUMNS = ("bucket", "low", "high", "mode", "pages", "precision", "compression", "edit_distance")


def to_csv(report: Report) -> str:
    """One line per bucket x mode (then the ``all`` rows); empty fields where a cell has no pages."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in [*report.rows, report.total]:
        for mode, cell in row.cells.items():
            low, high = (row.bucket.low, row.bucket.high) if row.bucket else ("", "")
            values = cell.to_dict()
            writer.writerow(
                [row.label, low, high, mode, cell.pages]
                + [
                    "" if values[k] is None else values[k]
                    for k in ("precision", "compression", "edit_distance")
                ]
            )
    return buffer.getvalue()


def table_columns(report: Report) -> list[str]:
    """The table's column names: the bucket, then precision, compression and pages per mode."""
    per_mode = [f"{label} {mode}" for mode in report.modes for label in ("precision", "compression", "pages")]
    return ["text tokens", *per_mode]


def table_rows(report: Report) -> list[list[str]]:
    """The table's rows as display strings: one per bucket, then ``all``."""
    return [[row.label, *_cells(row)] for row in [*report.rows, report.total]]


def _cells(row: Row) -> list[str]:
    return [
        text
        for cell in row.cells.values()
        for text in (_percent(cell.precision), _times(cell.compression), str(cell.pages))
    ]


def to_markdown(report: Report) -> str:
    header = table_columns(report)
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(report)]
    return "\n".join(lines) + "\n\n" + report.summary_line() + "\n"


def print_table(report: Report, console: Console) -> None:
    """The table for a person, then the summary line (``-o FILE`` of the table format)."""
    table = Table(
        title=f"docconv eval: {report.model}", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False
    )
    table.add_column("text\ntokens", no_wrap=True)
    for mode in report.modes:
        for name in ("precision", "compression", "pages"):
            table.add_column(f"{mode}\n{name}", justify="right", no_wrap=True)
    for row in report.rows:
        table.add_row(row.label, *_cells(row))
    table.add_section()
    table.add_row(report.total.label, *_cells(report.total))
    console.print(table)
    console.print(report.summary_line(), markup=False, highlight=False)
    if report.outside_buckets:
        console.print(f"{report.outside_buckets} pages outside the buckets (in 'all' only)", markup=False)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def _times(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}x"


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


# ---------------------------------------------------------------- plot


class PlotUnavailable(RuntimeError):
    """matplotlib is not installed."""


def require_plotting() -> type:
    """matplotlib's ``Figure`` (the object API: no pyplot state, no display backend); raises
    :class:`PlotUnavailable` with the install command when matplotlib is missing."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise PlotUnavailable(f"--plot needs matplotlib: pip install '{PLOT_EXTRA}'") from None
    return Figure


def write_plot(report: Report, path: Path) -> None:
    """Precision against compression per mode: every page x mode as a dot, bucket means as a line."""
    figure = require_plotting()(figsize=(7, 4.5), dpi=120)
    axes = figure.add_subplot()
    for mode in report.modes:
        pages = [r for r in report.results if r.mode == mode]
        dots = axes.scatter(
            [r.compression for r in pages], [r.precision * 100 for r in pages], s=10, alpha=0.35
        )
        means = [row.cells[mode] for row in report.rows if row.cells[mode].pages]
        axes.plot(
            [c.compression for c in means],
            [(c.precision or 0) * 100 for c in means],
            marker="o",
            color=dots.get_facecolor()[0][:3],
            label=mode,
        )
    axes.axvline(AT_MOST_10X, color="grey", linewidth=0.8, linestyle=":")
    axes.axvspan(*ABOUT_20X, color="grey", alpha=0.1)
    axes.set_xlabel("compression (text tokens / vision tokens)")
    axes.set_ylabel("precision (%)")
    axes.set_ylim(0, 100)
    axes.set_title(f"docconv eval: {report.model}")
    axes.legend(title="mode")
    figure.tight_layout()
    with atomic_open(path, "wb") as handle:
        figure.savefig(handle, format="png")
