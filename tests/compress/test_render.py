"""render_text: page sizes, the ratio each page holds, spans, determinism and bad arguments."""

from __future__ import annotations

import pytest

from deepseek_ocr.modes import MODES, vision_budget
from docconv.compress import (
    COMPRESS_MODES,
    min_legible_font_size,
    pdf_bytes,
    png_bytes,
    render_text,
)
from tests.compress.texts import LONG_MARKDOWN, LONG_PLAIN


def test_the_modes_are_the_square_single_view_modes():
    assert COMPRESS_MODES == ("tiny", "small", "base", "large")


@pytest.mark.parametrize(("mode", "ratio"), [("tiny", 10), ("small", 10), ("base", 5), ("large", 3)])
def test_every_page_but_the_last_holds_the_target_ratio(mode, ratio, count_tokens):
    pages = render_text(LONG_MARKDOWN, mode=mode, ratio=ratio, count_tokens=count_tokens)
    side = MODES[mode].global_size
    assert len(pages) >= 3
    for page in pages:
        assert page.image.size == (side, side) and page.image.mode == "RGB"
        assert page.vision_tokens == vision_budget(side, side, mode).valid
        assert page.text_tokens == count_tokens(page.text)
        assert page.ratio == pytest.approx(page.text_tokens / page.vision_tokens)
    for page in pages[:-1]:
        assert abs(page.ratio - ratio) <= 0.1 * ratio, page
    assert pages[-1].ratio <= ratio * 1.1


def test_pages_cover_the_source_exactly(count_tokens):
    pages = render_text(LONG_PLAIN, mode="tiny", ratio=10, count_tokens=count_tokens, markdown=False)
    assert "".join(page.text for page in pages) == LONG_PLAIN
    assert pages[0].span[0] == 0 and pages[-1].span[1] == len(LONG_PLAIN)
    for before, after in zip(pages, pages[1:], strict=False):
        assert before.span[1] == after.span[0]
    for page in pages:
        assert LONG_PLAIN[page.span[0] : page.span[1]] == page.text


def test_a_higher_ratio_means_a_smaller_font(count_tokens):
    sizes = [
        render_text(LONG_PLAIN, mode="small", ratio=ratio, count_tokens=count_tokens, markdown=False)[
            0
        ].font_size
        for ratio in (2, 5, 12)
    ]
    assert sizes[0] > sizes[1] > sizes[2]


def test_pages_below_the_legible_size_are_flagged(count_tokens):
    pages = render_text(LONG_PLAIN, mode="tiny", ratio=400, count_tokens=count_tokens, markdown=False)
    assert pages[0].font_size < min_legible_font_size()
    assert not pages[0].legible
    readable = render_text(LONG_PLAIN, mode="tiny", ratio=3, count_tokens=count_tokens, markdown=False)
    assert readable[0].legible


def test_the_same_text_gives_the_same_bytes(count_tokens):
    first = render_text(LONG_MARKDOWN, mode="tiny", ratio=10, count_tokens=count_tokens)
    second = render_text(LONG_MARKDOWN, mode="tiny", ratio=10, count_tokens=count_tokens)
    assert [png_bytes(page.image) for page in first] == [png_bytes(page.image) for page in second]
    assert pdf_bytes(first) == pdf_bytes(second)


def test_png_carries_no_metadata(count_tokens):
    page = render_text("A short page.", mode="tiny", ratio=10, count_tokens=count_tokens)[0]
    data = png_bytes(page.image)
    for chunk in (b"tIME", b"tEXt", b"iTXt", b"zTXt"):
        assert chunk not in data


def test_whitespace_gives_no_pages(count_tokens):
    assert render_text(" \n\n\t", mode="small", ratio=10, count_tokens=count_tokens) == []


@pytest.mark.parametrize(
    ("mode", "ratio", "message"),
    [("gundam", 10, "unknown mode"), ("small", 0, "must be positive"), ("small", -1, "must be positive")],
)
def test_bad_arguments_raise_value_error(mode, ratio, message, count_tokens):
    with pytest.raises(ValueError, match=message):
        render_text("text", mode=mode, ratio=ratio, count_tokens=count_tokens)


def test_each_page_is_reported_as_it_is_finished(count_tokens):
    seen = []
    pages = render_text(LONG_PLAIN, mode="tiny", ratio=10, count_tokens=count_tokens, on_page=seen.append)
    assert seen == pages
