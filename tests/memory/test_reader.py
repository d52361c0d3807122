"""Forgetting, seen by an independent reader: Tesseract reads one entry at each level it fades to,
and its character error rises level by level (test-only: Debian's ``tesseract-ocr`` through
pytesseract).

Tesseract reads the same region of the page at every level: the top half of the first column,
whose exact text comes from the text layer of the page's PDF (``RenderedPage.pdf``, drawn at
one point per pixel). A region keeps the reads quick and free of column-order questions.
Character error: Levenshtein distance / reference length, whitespace collapsed.
"""

from __future__ import annotations

import shutil
from itertools import pairwise

import pymupdf
import pytest
from PIL import Image

from docconv.compress import render_text
from docconv.memory.schedule import LEVELS

pytesseract = pytest.importorskip("pytesseract", reason="pytesseract (the test extra) is not installed")
Levenshtein = pytest.importorskip(
    "rapidfuzz.distance", reason="rapidfuzz (the test extra) is not installed"
).Levenshtein

CITIES = ("Lisbon", "Krakow", "Tallinn", "Vienna", "Oslo", "Porto", "Gdansk", "Riga")
#: 350 short notes on one large page: about 9-pixel text, which Tesseract still reads whole when
#: sharp, so each downsizing step shows in its error.
NOTES = "\n".join(f"{n:03d} {CITIES[n % 8]} {CITIES[(3 * n + 1) % 8]}" for n in range(350))
RATIO = 40.0  # text tokens per vision token that put all of NOTES on one page
#: Each level's region is enlarged to twice its size on the large page before Tesseract reads
#: it, so Tesseract's own minimum glyph size is not what is measured (enlarging adds nothing).
ENLARGE = 2
PAD = 3  # pixels around the region's words (inside the page margin and the column gap)


@pytest.fixture(autouse=True)
def _one_tesseract_thread(monkeypatch):
    # Tesseract's OpenMP threads only contend on a busy two-core machine; one is several times faster.
    monkeypatch.setenv("OMP_THREAD_LIMIT", "1")


def region_and_truth(pdf: bytes, side: int) -> tuple[tuple[float, float, float, float], str]:
    """The top half of the first column (PDF points = large-level pixels) and the words in it."""
    with pymupdf.open("pdf", pdf) as document:
        words = document[0].get_text("words")
    first_column = min(word[0] for word in words)
    taken = [w for w in words if w[0] < first_column + side / 10 and w[3] < side / 2]
    box = (
        min(w[0] for w in taken) - PAD,
        min(w[1] for w in taken) - PAD,
        max(w[2] for w in taken) + PAD,
        max(w[3] for w in taken) + PAD,
    )
    ordered = sorted(taken, key=lambda w: (w[5], w[6], w[7]))  # block, line, word
    return box, " ".join(w[4] for w in ordered)


def read_region(image: Image.Image, box: tuple[float, float, float, float], side: int) -> str:
    scale = image.width / side
    region = image.crop(tuple(round(edge * scale) for edge in box))
    width, height = round((box[2] - box[0]) * ENLARGE), round((box[3] - box[1]) * ENLARGE)
    enlarged = region.resize((width, height), Image.Resampling.BICUBIC)
    return pytesseract.image_to_string(enlarged, lang="eng", config="--psm 6")


def character_error(truth: str, read: str) -> float:
    truth, read = " ".join(truth.split()), " ".join(read.split())
    return Levenshtein.distance(truth, read) / len(truth)


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("tesseract") is None,
    reason="Tesseract is not installed (apt-get install tesseract-ocr; .ci/run installs it)",
)
def test_tesseract_reads_less_of_an_entry_at_every_lower_level(open_memory, round_pages, count_tokens):
    memory = open_memory(schedule="large:0,base:1,small:2,tiny:3", ratio=RATIO)
    entry = memory.add(NOTES, markdown=False)
    assert len(entry.pages) == 1
    images = {}
    for _ in LEVELS:
        held = memory.entry(entry.id)
        with Image.open(held.images[0]) as image:
            images[held.mode] = image.convert("RGB")
        memory.add_pages(round_pages)  # one step older
    assert list(images) == list(LEVELS)
    # The same page again, for its text layer: rendering is deterministic, so it is the same image.
    (page,) = render_text(NOTES, mode="large", ratio=RATIO, count_tokens=count_tokens, markdown=False)
    assert page.image.tobytes() == images["large"].tobytes()
    box, truth = region_and_truth(page.pdf, page.image.width)
    assert len(truth) > 500
    errors = {
        level: character_error(truth, read_region(image, box, page.image.width))
        for level, image in images.items()
    }
    print("character error by level:", {level: round(error, 3) for level, error in errors.items()})
    assert errors["large"] <= 0.02, errors  # sharp: read almost exactly
    by_level = [errors[level] for level in LEVELS]
    assert all(sharper < blurred for sharper, blurred in pairwise(by_level)), errors
    assert errors["tiny"] >= 0.5, errors
