"""Forgetting, seen by an independent reader: Tesseract reads one entry at each level it fades to,
and its character error rises level by level (test-only: Debian's ``tesseract-ocr``)."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from itertools import pairwise

import pytest
from PIL import Image
from rapidfuzz.distance import Levenshtein

from docconv.compress import mode_side
from docconv.memory.schedule import LEVELS

TESSERACT = shutil.which("tesseract")
CITIES = ("Lisbon", "Krakow", "Tallinn", "Vienna", "Oslo", "Porto", "Gdansk", "Riga")
#: 125 short lines: about 8-pixel text on a large page, which Tesseract still reads whole, so
#: each downsizing step shows in its error.
NOTES = "\n".join(f"{n:03d} {CITIES[n % 8]} {CITIES[(3 * n + 1) % 8]}" for n in range(125))
#: Tesseract is fed every level at twice the large side, so its own minimum text size is not
#: what is measured: enlarging adds no information the downsized image lost.
READ_SIDE = 2 * mode_side("large")


def tesseract(image: Image.Image) -> str:
    enlarged = image.resize((READ_SIDE, READ_SIDE), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    enlarged.save(buffer, format="PNG")
    # One thread: on a busy machine Tesseract's OpenMP threads slow it down several times.
    environment = os.environ | {"OMP_THREAD_LIMIT": "1"}
    result = subprocess.run(
        [TESSERACT, "stdin", "stdout", "--psm", "6"],
        input=buffer.getvalue(),
        capture_output=True,
        check=True,
        env=environment,
    )
    return result.stdout.decode("utf-8")


def character_error(truth: str, read: str) -> float:
    truth, read = " ".join(truth.split()), " ".join(read.split())
    return Levenshtein.distance(truth, read) / len(truth)


@pytest.mark.slow
@pytest.mark.skipif(
    TESSERACT is None, reason="Tesseract is not installed (Debian: apt-get install tesseract-ocr)"
)
def test_tesseract_reads_less_of_an_entry_at_every_lower_level(open_memory, round_pages):
    memory = open_memory(schedule="large:0,base:1,small:2,tiny:3", ratio=20.0, keep_text=True)
    entry = memory.add(NOTES, markdown=False)
    assert len(entry.pages) == 1 and entry.text == NOTES
    images = {}
    for _ in LEVELS:
        held = memory.entry(entry.id)
        with Image.open(held.images[0]) as image:
            images[held.mode] = image.convert("RGB")
        memory.add_pages(round_pages)  # one step older
    assert list(images) == list(LEVELS)
    errors = {level: character_error(NOTES, tesseract(image)) for level, image in images.items()}
    print("character error by level:", {level: round(error, 3) for level, error in errors.items()})
    assert errors["large"] <= 0.03, errors  # sharp: read almost exactly
    by_level = [errors[level] for level in LEVELS]
    assert all(sharper < blurred for sharper, blurred in pairwise(by_level)), errors
    assert errors["tiny"] >= 0.5, errors
