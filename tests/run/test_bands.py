"""Splitting extreme pages into overlapping bands and stitching their results."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw

from docconv.output.document import Block
from docconv.output.postprocess import parse_page
from docconv.run.bands import band_sizes, merge_band_blocks, merge_band_texts, split_into_bands


def _receipt(width: int = 600, height: int = 6000) -> Image.Image:
    """A tall page with a numbered row every 100 px, so crops can be checked by content."""
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    for y in range(0, height, 100):
        draw.rectangle((10, y + 40, 10 + (y // 100) % 50 * 10, y + 60), fill="black")
    return image


def test_ordinary_pages_stay_whole() -> None:
    page = Image.new("RGB", (1224, 1584), "white")
    bands = split_into_bands(page)
    assert len(bands) == 1
    assert (bands[0].offset, bands[0].size, bands[0].image) == (0, page.size, page)
    assert band_sizes(page.size) == [page.size]


@pytest.mark.parametrize("size", [(600, 6000), (6000, 600), (500, 2001 * 2 + 1), (800, 20000)])
def test_long_pages_become_overlapping_bands_covering_the_page(size: tuple[int, int]) -> None:
    page = Image.new("RGB", size, "white")
    bands = split_into_bands(page, max_aspect=4.0, overlap=0.1)
    short, long = min(size), max(size)
    assert len(bands) >= 2
    assert bands[0].offset == 0
    assert bands[-1].offset + bands[-1].length == long
    for band in bands:
        assert band.axis == ("vertical" if size[1] > size[0] else "horizontal")
        assert band.image.size == band.size
        assert min(band.size) == short
        assert 1.2 <= band.length / short <= 2.0
    for first, second in zip(bands, bands[1:], strict=False):
        shared = first.offset + first.length - second.offset
        assert shared == pytest.approx(0.1 * first.length, abs=2)


def test_band_images_are_the_page_pixels_at_their_offset() -> None:
    page = _receipt()
    for band in split_into_bands(page):
        assert band.image.tobytes() == page.crop((0, band.offset, 600, band.offset + band.length)).tobytes()


def test_blocks_are_shifted_into_page_pixels_and_overlap_duplicates_dropped() -> None:
    bands = split_into_bands(_receipt())
    first, second = bands[0], bands[1]
    overlap_top = second.offset  # page y where band 2 starts, inside band 1
    in_overlap = overlap_top + 30
    band1 = [
        Block("text", "TOTAL 12.00 EUR", [(10, 100, 300, 130)]),
        Block(
            "text",
            "Coffee beans 250g 7.50",
            [(10, in_overlap - first.offset, 300, in_overlap - first.offset + 30)],
        ),
    ]
    band2 = [
        Block("text", "Coffee beans 250g 7.50", [(10, 30, 300, 60)]),
        Block("text", "Thank you for shopping", [(10, 400, 300, 430)]),
    ]
    rest = [[] for _ in bands[2:]]
    merged = merge_band_blocks(bands, [band1, band2, *rest])
    assert [b.text for b in merged] == ["TOTAL 12.00 EUR", "Coffee beans 250g 7.50", "Thank you for shopping"]
    assert merged[1].bboxes == [(10, in_overlap, 300, in_overlap + 30)]
    assert merged[2].bboxes == [(10, second.offset + 400, 300, second.offset + 430)]


def test_the_complete_copy_of_a_block_cut_by_a_band_edge_wins() -> None:
    bands = split_into_bands(_receipt())
    y = bands[1].offset + 20 - bands[0].offset
    cut = Block("text", "Paragraph that the band edge", [(10, y, 300, bands[0].length)])
    whole = Block("text", "Paragraph that the band edge cut in half", [(10, 20, 300, 200)])
    merged = merge_band_blocks(bands[:2], [[cut], [whole]])
    assert [b.text for b in merged] == [whole.text]


def test_same_text_outside_the_overlap_is_kept_twice() -> None:
    bands = split_into_bands(_receipt())
    far_up = Block("text", "Subtotal", [(10, 50, 200, 80)])  # top of band 1, far from band 2
    far_down = Block("text", "Subtotal", [(10, bands[1].length - 80, 200, bands[1].length - 50)])
    merged = merge_band_blocks(bands[:2], [[far_up], [far_down]])
    assert len(merged) == 2


def test_block_lists_must_match_bands() -> None:
    with pytest.raises(ValueError, match="2 bands but 1"):
        merge_band_blocks(split_into_bands(_receipt())[:2], [[]])


def test_band_texts_lose_the_lines_both_bands_read() -> None:
    first = "Shop 42\nMilk 1.20\nBread 2.10\nEggs 3.00"
    second = "Bread 2.10\nEggs 3.00\nTea 4.50\nTOTAL 10.80"
    assert (
        merge_band_texts([first, second])
        == "Shop 42\nMilk 1.20\nBread 2.10\nEggs 3.00\nTea 4.50\nTOTAL 10.80"
    )


def test_band_texts_tolerate_ocr_noise_and_lines_cut_at_the_edge() -> None:
    first = "Shop 42\nMilk 1.20\nBread 2.10\nEggs 3.00\nTe~ 4."  # last line cut by the band edge
    second = "8read 2.10\nEggs 3.O0\nTea 4.50\nTOTAL 10.80"  # same lines, misread a little
    assert merge_band_texts([first, second]).splitlines() == [
        "Shop 42",
        "Milk 1.20",
        "Bread 2.10",
        "Eggs 3.00",
        "Tea 4.50",
        "TOTAL 10.80",
    ]


def test_band_texts_without_common_lines_are_concatenated() -> None:
    assert merge_band_texts(["alpha\nbeta", "", "gamma\ndelta"]) == "alpha\nbeta\ngamma\ndelta"


def test_parsed_band_outputs_stitch_into_one_page() -> None:
    bands = split_into_bands(_receipt())
    first, second = bands[0], bands[1]
    # Both bands read the row at page y = second.offset + 30; boxes are on the 0-999 grid.
    shared_y = second.offset + 30

    def grid(y: int, band_length: int) -> int:
        return round(y * 999 / band_length)

    top = grid(shared_y - first.offset, first.length)
    raw1 = "<|ref|>text<|/ref|><|det|>[[10, 10, 500, 40]]<|/det|>\nShop 42\n\n"
    raw1 += f"<|ref|>text<|/ref|><|det|>[[10, {top}, 500, {top + 15}]]<|/det|>\nCoffee 7.50\n"
    raw2 = f"<|ref|>text<|/ref|><|det|>[[10, {grid(30, second.length)}, 500, 40]]<|/det|>\nCoffee 7.50\n\n"
    raw2 += "<|ref|>text<|/ref|><|det|>[[10, 600, 500, 640]]<|/det|>\nTOTAL 7.50\n"
    parsed = [
        parse_page(raw, band.image.width, band.image.height) for raw, band in ((raw1, first), (raw2, second))
    ]
    merged = merge_band_blocks(bands[:2], [page.blocks for page in parsed])
    assert [block.text for block in merged] == ["Shop 42", "Coffee 7.50", "TOTAL 7.50"]
    assert all(merged[i].bboxes[0][1] < merged[i + 1].bboxes[0][1] for i in range(2))


@settings(max_examples=60, deadline=None)
@given(short=st.integers(1, 60), ratio=st.floats(4.01, 60.0), overlap=st.floats(0.0, 0.3), wide=st.booleans())
def test_any_long_page_is_covered_by_bands_of_at_most_1_to_2(
    short: int, ratio: float, overlap: float, wide: bool
) -> None:
    long = math.ceil(short * ratio)
    page = Image.new("L", (long, short) if wide else (short, long))
    bands = split_into_bands(page, max_aspect=4.0, overlap=overlap)
    assert bands[0].offset == 0 and bands[-1].offset + bands[-1].length == long
    assert all(b.length <= 2 * short + 1 for b in bands)
    assert band_sizes(page.size, max_aspect=4.0, overlap=overlap) == [b.size for b in bands]
    assert all(
        a.offset + a.length >= b.offset + math.floor(overlap * a.length) - 1
        for a, b in zip(bands, bands[1:], strict=False)
    )
