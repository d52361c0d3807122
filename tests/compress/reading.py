"""Reading a rendered page back with Tesseract, column by column, and scoring it.

Tesseract's automatic page segmentation (psm 3) splits ragged-right prose into false columns at
large sizes and reads the pieces out of order, and its single-column mode (psm 4) reads real
columns straight across. So each of the page's columns (found from its PDF's text blocks) is cut
out and read alone with psm 4. Character error: Levenshtein distance / reference length, with
whitespace collapsed on both sides (line breaks are layout).
"""

from __future__ import annotations

import pymupdf
import pytesseract
from rapidfuzz.distance import Levenshtein

ONE_COLUMN = "--psm 4"


def column_starts(page) -> list[float]:
    """Left edges of the page's columns: text blocks starting more than a quarter page right of
    the last column's start begin a new one (list indents are far smaller)."""
    with pymupdf.open("pdf", page.pdf) as document:
        lefts = sorted(block[0] for block in document[0].get_text("blocks"))
    starts: list[float] = []
    for left in lefts:
        if not starts or left - starts[-1] > page.image.width / 4:
            starts.append(left)
    return starts


def read_page(page) -> str:
    """Tesseract's text of the page, its columns read left to right."""
    starts = column_starts(page)
    edges = [*starts[1:], page.image.width]
    pieces = []
    for left, right in zip(starts, edges, strict=True):
        column = page.image.crop((max(0, int(left) - 2), 0, int(right) - 2, page.image.height))
        pieces.append(pytesseract.image_to_string(column, lang="eng", config=ONE_COLUMN))
    return "\n".join(pieces)


def character_error(page) -> float:
    reference = " ".join(page.text.split())
    read = " ".join(read_page(page).split())
    return Levenshtein.distance(reference, read) / len(reference)
