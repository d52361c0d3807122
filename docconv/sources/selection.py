"""``--pages``: which pages of each document to convert (``1-3,7,-1``; -1 is the last page)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from docconv.sources.inputs import InputError
from docconv.sources.pages import PageSource


@dataclass(frozen=True)
class PageRange:
    start: int | None  # 1-based, negative counts from the end, None = first page
    end: int | None  # inclusive; None = last page (open range) or same as start (single page)
    is_range: bool


@dataclass(frozen=True)
class PageSelection:
    """A parsed ``--pages`` value such as ``1-3,7,-1``."""

    ranges: tuple[PageRange, ...]

    def indices(self, page_count: int) -> list[int]:
        """0-based page indices selected in a document of ``page_count`` pages, in page order."""
        chosen: set[int] = set()
        for item in self.ranges:
            first = _absolute(item.start, page_count, default=1)
            last = _absolute(item.end, page_count, default=page_count) if item.is_range else first
            chosen.update(range(max(first, 1), min(last, page_count) + 1))
        return [number - 1 for number in sorted(chosen)]


def _absolute(number: int | None, page_count: int, default: int) -> int:
    if number is None:
        return default
    return page_count + 1 + number if number < 0 else number


def parse_pages(spec: str) -> PageSelection:
    """Parse ``--pages``; raises ValueError with a usage message on bad syntax."""
    ranges = tuple(_parse_item(item.strip(), spec) for item in spec.split(",") if item.strip())
    if not ranges:
        raise ValueError(f"--pages {spec!r} selects nothing; use e.g. 1-3,7,-1")
    return PageSelection(ranges)


def _parse_item(item: str, spec: str) -> PageRange:
    # "-3" is the third page from the end, not an open range; "1-3", "-3--1", "5-" are ranges.
    match = re.fullmatch(r"(-?\d+)", item)
    if match:
        return PageRange(_nonzero(int(item), spec), None, is_range=False)
    match = re.fullmatch(r"(-?\d+)?-(-?\d+)?", item)
    if not match or (match.group(1) is None and match.group(2) is None):
        raise ValueError(f"--pages {spec!r}: cannot read {item!r}; use e.g. 1-3,7,-1")
    start, end = (None if group is None else _nonzero(int(group), spec) for group in match.groups())
    return PageRange(start, end, is_range=True)


def _nonzero(number: int, spec: str) -> int:
    if number == 0:
        raise ValueError(f"--pages {spec!r}: pages are numbered from 1 (and -1 is the last)")
    return number


def select_pages(source: PageSource, selection: PageSelection | None) -> Sequence[int]:
    """The page indices to convert; raises InputError when the selection misses the document."""
    if selection is None:
        return range(source.page_count)
    indices = selection.indices(source.page_count)
    if not indices:
        raise InputError(f"--pages selects none of its {source.page_count} pages; adjust --pages")
    return indices
