"""A real reader reads the pages: Tesseract (Debian's ``tesseract-ocr``, through pytesseract).

Large-mode pages at ratio 3 must read back with at most 3 % character error, and the error must
rise as the ratio does, on the same text, over three settings. Tesseract needs larger glyphs than
DeepSeek-OCR, so the rising settings sit where its reading breaks down with the tiny
checkpoint's tokenizer (about 1.5 characters per token: the ratios pack less text than the real
tokenizer's would). Character error: Levenshtein distance / reference length, after collapsing
whitespace (line breaks are layout); each column is read alone (tests/compress/reading.py).
"""

from __future__ import annotations

import shutil

import pytest

from docconv.compress import render_text
from tests.compress.texts import PROSE

pytest.importorskip("pytesseract", reason="pytesseract (the test extra) is not installed")
pytest.importorskip("rapidfuzz", reason="rapidfuzz (the test extra) is not installed")
from tests.compress.reading import character_error  # noqa: E402

pytestmark = pytest.mark.skipif(
    shutil.which("tesseract") is None,
    reason="Tesseract is not installed (apt-get install tesseract-ocr; .ci/run installs it)",
)


@pytest.fixture(autouse=True)
def _one_tesseract_thread(monkeypatch):
    # Tesseract's OpenMP threads only contend on CI's two cores; one is faster there, same result.
    monkeypatch.setenv("OMP_THREAD_LIMIT", "1")


def test_large_pages_at_ratio_3_read_back_within_3_percent(count_tokens):
    page = render_text(PROSE, mode="large", ratio=3, count_tokens=count_tokens)[0]
    assert page.ratio == pytest.approx(3, rel=0.1)
    assert character_error(page) <= 0.03


@pytest.mark.slow
def test_the_error_rises_with_the_ratio(count_tokens):
    errors = [
        character_error(render_text(PROSE, mode="tiny", ratio=ratio, count_tokens=count_tokens)[0])
        for ratio in (20, 40, 100)
    ]
    assert errors[0] < errors[1] < errors[2], errors
    assert errors[0] <= 0.03 and errors[2] > 0.5, errors
