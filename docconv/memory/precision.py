"""Expected decoding precision at a compression ratio: the paper's Fox curve, or your own eval.

``docconv memory show`` tells how well each entry can still be read back. The figure comes from
a curve of precision against compression (text tokens per vision token): by default the one the
DeepSeek-OCR paper measured on the Fox benchmark (arXiv 2510.18234, Table 2, spec §13.2), or
one measured with ``docconv eval`` on your own documents and model (``--calibration``).

Points of a curve are (compression, precision, pages) cells. Measured means are noisy and not
always falling (Fox's tiny column reads 93.8% at 11.8x after small's 89.8% at 11.3x), so the
curve is their weighted isotonic fit: the closest non-increasing curve, by pages (pool
adjacent violators), read between points by linear interpolation and clamped beyond the ends.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple


class CurvePoint(NamedTuple):
    compression: float  # text tokens per vision token
    precision: float  # 0..1
    pages: int


#: The paper's Fox study (Table 2): per bucket of 100 ground-truth text tokens (600-700 ...
#: 1200-1300), (precision, compression) at 64 vision tokens (tiny) and at 100 (small), and the
#: number of pages. The one copy of these figures in docconv.
FOX_TABLE: tuple[tuple[str, tuple[float, float], tuple[float, float], int], ...] = (
    ("600-700", (0.965, 10.5), (0.985, 6.7), 7),
    ("700-800", (0.938, 11.8), (0.973, 7.5), 28),
    ("800-900", (0.838, 13.2), (0.968, 8.5), 28),
    ("900-1000", (0.859, 15.1), (0.968, 9.7), 14),
    ("1000-1100", (0.793, 16.5), (0.915, 10.6), 11),
    ("1100-1200", (0.764, 17.7), (0.898, 11.3), 8),
    ("1200-1300", (0.591, 19.7), (0.871, 12.6), 4),
)
FOX_SOURCE = "paper (Fox, arXiv 2510.18234 Table 2)"
#: The version of ``docconv eval``'s JSON report that :func:`read_calibration` reads.
EVAL_REPORT_VERSION = 1


class CalibrationError(ValueError):
    """A ``--calibration`` file that is not a usable ``docconv eval`` JSON report."""


@dataclass(frozen=True)
class Expected:
    """Expected precision at one compression; ``beyond`` when the curve was clamped there."""

    precision: float
    beyond: str | None  # None, "below" (better than any measured point) or "above" (worse)

    def __str__(self) -> str:
        sign = {"below": ">=", "above": "<="}.get(self.beyond or "", "~")
        return f"{sign}{self.precision:.1%}"


class PrecisionCurve:
    """Precision against compression, non-increasing (see the module doc)."""

    def __init__(self, points: Iterable[CurvePoint], source: str) -> None:
        ordered = sorted(p for p in points if p.pages > 0 and math.isfinite(p.compression))
        if not ordered:
            raise CalibrationError(
                f"{source}: no (compression, precision) cells with pages to build a curve from"
            )
        self.source = source
        self.points = _isotonic_decreasing(ordered)

    @classmethod
    def paper(cls) -> PrecisionCurve:
        points = []
        for _, (tiny_precision, tiny_ratio), (small_precision, small_ratio), pages in FOX_TABLE:
            points += [
                CurvePoint(tiny_ratio, tiny_precision, pages),
                CurvePoint(small_ratio, small_precision, pages),
            ]
        return cls(points, FOX_SOURCE)

    def at(self, compression: float) -> Expected:
        first, last = self.points[0], self.points[-1]
        if compression <= first.compression:
            return Expected(first.precision, "below" if compression < first.compression else None)
        if compression >= last.compression:
            return Expected(last.precision, "above" if compression > last.compression else None)
        for low, high in zip(self.points, self.points[1:], strict=False):
            if low.compression <= compression <= high.compression:
                share = (compression - low.compression) / (high.compression - low.compression or 1.0)
                return Expected(low.precision + share * (high.precision - low.precision), None)
        raise AssertionError("unreachable: the compression lies between the curve's ends")


def read_calibration(path: Path) -> PrecisionCurve:
    """The curve of a ``docconv eval --format json`` report: one point per bucket x mode cell.

    Reads the report's ``version``, and its ``buckets[].modes.<mode>`` cells (``pages``,
    ``precision`` 0..1, ``compression``); everything else in it is ignored.
    """
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise CalibrationError(f"{path}: cannot read the calibration file ({error.strerror})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CalibrationError(
            f"{path}: not JSON ({error}); give the output of `docconv eval --format json`"
        ) from None
    if not isinstance(report, dict) or report.get("version") != EVAL_REPORT_VERSION:
        raise CalibrationError(
            f"{path}: not a docconv eval report of version {EVAL_REPORT_VERSION}; "
            "give the output of `docconv eval --format json`"
        )
    try:
        points = [_cell_point(cell) for row in report["buckets"] for cell in row["modes"].values()]
    except (KeyError, TypeError, AttributeError) as error:
        raise CalibrationError(
            f"{path}: the report's buckets lack {error}; rerun `docconv eval --format json`"
        ) from None
    return PrecisionCurve([p for p in points if p is not None], str(path))


def _cell_point(cell: dict[str, Any]) -> CurvePoint | None:
    if not cell["pages"] or cell["precision"] is None or cell["compression"] is None:
        return None
    return CurvePoint(float(cell["compression"]), float(cell["precision"]), int(cell["pages"]))


def _isotonic_decreasing(points: list[CurvePoint]) -> list[CurvePoint]:
    """Pool adjacent violators, weighted by pages: each point gets its pool's mean precision.

    Hand-written (a dozen lines) rather than taking SciPy (``scipy.optimize.isotonic_regression``)
    as a dependency for this one fit.
    """
    pools: list[tuple[float, int, int]] = []  # (mean precision, pages, how many points)
    for point in points:
        pools.append((point.precision, point.pages, 1))
        while len(pools) > 1 and pools[-2][0] < pools[-1][0]:
            (before, before_pages, before_n), (after, after_pages, after_n) = pools[-2], pools[-1]
            pages = before_pages + after_pages
            pools[-2:] = [((before * before_pages + after * after_pages) / pages, pages, before_n + after_n)]
    fitted = [mean for mean, _, count in pools for _ in range(count)]
    return [CurvePoint(p.compression, value, p.pages) for p, value in zip(points, fitted, strict=True)]
