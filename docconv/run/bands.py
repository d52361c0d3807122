"""Extreme aspect ratios: split long pages into overlapping bands and stitch the results.

Every mode squeezes a page into a square view (stretch, letterbox or a tile grid of at most
9 tiles), so a receipt or a long screenshot of 1:8 would be read at a fraction of its
resolution. Pages longer than ``max_aspect`` are therefore cut along their long side into
bands of at most 1:2 that overlap, so every line is seen whole by at least one band; the
band outputs are then shifted back into page pixels and what both bands of an overlap read
is kept once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from difflib import SequenceMatcher
from typing import Literal

from PIL import Image

from docconv.output.document import BBox, Block

#: Longest band side per short side. The paper's tiling grids (1x2, 2x3) favour 1:1.5..1:2.
MAX_BAND_ASPECT = 2.0
#: Two texts read from the same overlap are one text when this share of the shorter matches.
SAME_TEXT = 0.8
#: Lines that match this closely (difflib ratio) are the same line read twice.
SAME_LINE = 0.8
#: A band edge can cut a text line in half; that many lines at each cut may be unreadable.
CUT_LINES = 1
#: Overlaps are a tenth of a band; no sane page has more lines in one than this.
MAX_OVERLAP_LINES = 60

Axis = Literal["vertical", "horizontal"]


@dataclass(frozen=True)
class Band:
    """One piece of a page: ``offset`` is its top (vertical) or left (horizontal) in page pixels."""

    image: Image.Image
    offset: int
    size: tuple[int, int]  # width, height of the band
    axis: Axis = "vertical"

    @property
    def length(self) -> int:
        """Extent along the split axis."""
        return self.size[1] if self.axis == "vertical" else self.size[0]


def split_into_bands(image: Image.Image, max_aspect: float = 4.0, overlap: float = 0.1) -> list[Band]:
    """Cut a page longer than ``max_aspect`` (either orientation) into overlapping bands.

    Pages within ``max_aspect`` come back as a single band covering the whole page.
    ``overlap`` is the share of a band's length it shares with the next band.
    """
    axis, length, offsets = _layout(image.size, max_aspect, overlap)
    if len(offsets) == 1:
        return [Band(image, 0, image.size, axis)]
    return [_crop_band(image, axis, offset, length) for offset in offsets]


def band_sizes(size: tuple[int, int], max_aspect: float = 4.0, overlap: float = 0.1) -> list[tuple[int, int]]:
    """(width, height) of each band :func:`split_into_bands` cuts a page of ``size`` into."""
    axis, length, offsets = _layout(size, max_aspect, overlap)
    if len(offsets) == 1:
        return [size]
    band = (size[0], length) if axis == "vertical" else (length, size[1])
    return [band] * len(offsets)


def _layout(size: tuple[int, int], max_aspect: float, overlap: float) -> tuple[Axis, int, list[int]]:
    """Split axis, band length and band offsets (one band at offset 0 when no split is needed)."""
    if not 0 <= overlap < 0.5:
        raise ValueError(f"overlap must be in [0, 0.5), got {overlap}")
    width, height = size
    axis: Axis = "vertical" if height >= width else "horizontal"
    long_side, short_side = max(width, height), min(width, height)
    if long_side <= max_aspect * short_side:
        return axis, long_side, [0]
    length, offsets = _band_layout(long_side, short_side, overlap)
    return axis, length, offsets


def _band_layout(long_side: int, short_side: int, overlap: float) -> tuple[int, list[int]]:
    """Band length and offsets: the fewest bands of at most MAX_BAND_ASPECT covering the page."""
    longest = MAX_BAND_ASPECT * short_side
    count = max(2, math.ceil((long_side - overlap * longest) / ((1 - overlap) * longest)))
    length = math.ceil(long_side / (count - (count - 1) * overlap))
    step = (long_side - length) / (count - 1)
    return length, [round(index * step) for index in range(count)]


def _crop_band(image: Image.Image, axis: Axis, offset: int, length: int) -> Band:
    width, height = image.size
    box = (0, offset, width, offset + length) if axis == "vertical" else (offset, 0, offset + length, height)
    crop = image.crop(box)
    return Band(crop, offset, crop.size, axis)


def merge_band_blocks(bands: Sequence[Band], blocks_per_band: Sequence[Sequence[Block]]) -> list[Block]:
    """Blocks of all bands in page pixels, in reading order, each overlap read once.

    A block of one band and a block of the next are the same when both boxes reach into
    their shared overlap and one text is (nearly) contained in the other; the longer
    text is kept, since the other copy was usually cut by the band edge.
    """
    if len(bands) != len(blocks_per_band):
        raise ValueError(f"{len(bands)} bands but {len(blocks_per_band)} block lists")
    merged: list[Block] = []
    previous: list[Block] = []
    for index, (band, blocks) in enumerate(zip(bands, blocks_per_band, strict=True)):
        shifted = [_shift_block(block, band) for block in blocks]
        if index:
            start, end = bands[index].offset, bands[index - 1].offset + bands[index - 1].length
            shifted = _drop_duplicates(merged, previous, shifted, (start, end), band.axis)
        previous = shifted
        merged.extend(shifted)
    return merged


def _shift_block(block: Block, band: Band) -> Block:
    dx, dy = (0, band.offset) if band.axis == "vertical" else (band.offset, 0)
    boxes = [(x1 + dx, y1 + dy, x2 + dx, y2 + dy) for x1, y1, x2, y2 in block.bboxes]
    return replace(block, bboxes=boxes)


def _drop_duplicates(
    merged: list[Block], previous: list[Block], current: list[Block], overlap: tuple[int, int], axis: Axis
) -> list[Block]:
    """Remove from ``current`` (and, when it holds the better copy, from ``merged``) repeated blocks."""
    kept = []
    for block in current:
        twin = next((p for p in previous if _same_block(p, block, overlap, axis)), None)
        if twin is None:
            kept.append(block)
        elif len(block.text.strip()) > len(twin.text.strip()):
            merged[_index_by_identity(merged, twin)] = block
    return kept


def _index_by_identity(blocks: list[Block], target: Block) -> int:
    return next(i for i, block in enumerate(blocks) if block is target)


def _same_block(first: Block, second: Block, overlap: tuple[int, int], axis: Axis) -> bool:
    if first.type != second.type or not first.bboxes or not second.bboxes:
        return False
    if not (_reaches_into(first.bboxes, overlap, axis) and _reaches_into(second.bboxes, overlap, axis)):
        return False
    return _contained_share(first.text, second.text) >= SAME_TEXT


def _reaches_into(boxes: list[BBox], span: tuple[int, int], axis: Axis) -> bool:
    low, high = (1, 3) if axis == "vertical" else (0, 2)
    return any(box[low] < span[1] and box[high] > span[0] for box in boxes)


def _contained_share(first: str, second: str) -> float:
    """Share of the shorter text that also appears, in order, in the longer one."""
    shorter, longer = sorted((" ".join(first.split()), " ".join(second.split())), key=len)
    if not shorter:
        return 1.0 if not longer else 0.0
    matcher = SequenceMatcher(None, shorter, longer, autojunk=False)
    return sum(block.size for block in matcher.get_matching_blocks()) / len(shorter)


def merge_band_texts(texts: Sequence[str]) -> str:
    """Join plain-text band outputs, keeping the lines two neighbouring bands both read once."""
    merged: list[str] = []
    for text in texts:
        merged = _join_lines(merged, text.strip("\n").splitlines())
    return "\n".join(merged)


def _join_lines(head: list[str], tail: list[str]) -> list[str]:
    overlap = _best_overlap(head, tail)
    if overlap is None:
        return [*head, *tail] if head and tail else head or tail
    matched, cut_in_head, cut_in_tail = overlap
    # Lines right at a band edge may be cut; the other band read them whole.
    return head[: len(head) - cut_in_head] + tail[cut_in_tail + matched :]


def _best_overlap(head: list[str], tail: list[str]) -> tuple[int, int, int] | None:
    """(matched lines, cut lines dropped from head's end, from tail's start) or None."""
    longest = min(len(head), len(tail), MAX_OVERLAP_LINES)
    for matched in range(longest, 0, -1):
        for cut_in_head in range(CUT_LINES + 1):
            for cut_in_tail in range(CUT_LINES + 1):
                end = len(head) - cut_in_head
                if end - matched < 0 or cut_in_tail + matched > len(tail):
                    continue
                pairs = zip(head[end - matched : end], tail[cut_in_tail : cut_in_tail + matched], strict=True)
                if _lines_match(list(pairs)):
                    return matched, cut_in_head, cut_in_tail
    return None


def _lines_match(pairs: list[tuple[str, str]]) -> bool:
    if not any(a.strip() for a, _ in pairs):
        return False  # blank lines alone are no evidence of an overlap
    return all(_same_line(a, b) for a, b in pairs)


def _same_line(first: str, second: str) -> bool:
    first, second = first.strip(), second.strip()
    if first == second:
        return True
    matcher = SequenceMatcher(None, first, second, autojunk=False)
    return matcher.real_quick_ratio() >= SAME_LINE and matcher.ratio() >= SAME_LINE
