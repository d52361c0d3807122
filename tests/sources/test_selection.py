"""``--pages``: parsing, and a selection that misses the document."""

from __future__ import annotations

from pathlib import Path

import pytest

from docconv.sources.inputs import InputError
from docconv.sources.selection import parse_pages, select_pages

from ..helpers import make_pdf, open_path


@pytest.mark.parametrize(
    ("spec", "count", "expected"),
    [
        ("1-3,7,-1", 10, [0, 1, 2, 6, 9]),
        ("-3--1", 5, [2, 3, 4]),
        ("5-", 6, [4, 5]),
        ("-2", 5, [3]),
        ("2,2,1", 3, [0, 1]),
        ("1-100", 3, [0, 1, 2]),
    ],
)
def test_page_selection(spec: str, count: int, expected: list[int]) -> None:
    assert parse_pages(spec).indices(count) == expected


@pytest.mark.parametrize("spec", ["0", "a", "1-x", "-", "1--", ","])
def test_bad_page_selection_is_a_usage_error(spec: str) -> None:
    with pytest.raises(ValueError, match="--pages"):
        parse_pages(spec)


def test_selection_outside_the_document_is_an_input_error(tmp_path: Path) -> None:
    source = open_path(make_pdf(tmp_path / "a.pdf", pages=2))
    with pytest.raises(InputError, match="selects none of its 2 pages"):
        select_pages(source, parse_pages("5"))
