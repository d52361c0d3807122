"""How many decoder tokens the text on a page image is, estimated from its ink, without the model.

``--mode auto`` needs a page's text tokens before reading it; a PDF's text layer gives them,
a scan or an image does not. The estimate binarises the page (Otsu), removes table rules, finds
text lines from the row projection and measures each line's inked width in character advances.
The method, its calibration and the corpus check are in ``docs/auto-mode.md``.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

#: DeepSeek's tokenizer documentation: 1 English character ~ 0.3 tokens, 1 Chinese character
#: ~ 0.6 tokens. A CJK glyph is about two Latin character widths, so 0.3 per Latin-width unit
#: covers both.
TOKENS_PER_CHAR = 0.3

# Text-density estimate, see docs/auto-mode.md. Sizes are in working-image pixels.
WORKING_WIDTH = 1000
MIN_INK_CONTRAST = 48  # grey levels between ink and paper means; below that the page is blank
CHAR_WIDTH_EM = 0.5  # mean advance of a character (spaces included) per text-line height
MIN_LINE_HEIGHT = 4  # thinner row bands are rules, dots or scan noise
VERTICAL_RULE = 40  # straight ink runs this long are table rules / frames, not glyphs
HORIZONTAL_RULE = 60
COLUMN_GAP_EM = 1.0  # a horizontal gap wider than this many line heights separates columns
STRIP_WIDTH = 200  # pages are read in strips so a photo or margin bar only spoils its own strip
LINE_VALLEY_SHARE = 0.15  # rows with less ink than this share of their band's peak separate lines
LINE_BODY_SHARE = 0.6  # a valley-separated row run this tall relative to the tallest is a line
SOLID_INK_DENSITY = 0.5  # text bands are mostly paper; denser bands are pictures or fills


def estimate_text_tokens(image: Image.Image) -> int:
    """Estimate how many decoder tokens the text on ``image`` is, without the model.

    Binarises the page (Otsu), removes table rules, finds text lines from the row
    projection and measures each line's inked width in character advances
    (``CHAR_WIDTH_EM`` x line height). See docs/auto-mode.md for the corpus check.
    """
    gray = _working_gray(image)
    ink = _ink_mask(np.asarray(gray), np.asarray(gray.histogram(), dtype=np.float64))
    if ink is None:
        return 0
    ink &= ~_long_runs(ink, VERTICAL_RULE, axis=0)
    ink &= ~_long_runs(ink, HORIZONTAL_RULE, axis=1)
    units = sum(
        _character_units(ink[:, left : left + STRIP_WIDTH]) for left in range(0, ink.shape[1], STRIP_WIDTH)
    )
    return round(units * TOKENS_PER_CHAR)


def _working_gray(image: Image.Image) -> Image.Image:
    factor = image.width // WORKING_WIDTH
    if factor >= 2:  # integer box reduction first: far cheaper than resampling a huge scan
        image = image.reduce(factor)
    gray = image.convert("L")
    if gray.width > WORKING_WIDTH:
        height = max(1, round(gray.height * WORKING_WIDTH / gray.width))
        gray = gray.resize((WORKING_WIDTH, height), Image.Resampling.BOX)
    return gray


def _ink_mask(gray: np.ndarray, histogram: np.ndarray) -> np.ndarray | None:
    """Ink pixels, or None for a page without readable contrast (blank, flat colour)."""
    threshold = _otsu_threshold(histogram)
    levels = np.arange(256)
    dark, light = histogram[: threshold + 1], histogram[threshold + 1 :]
    if not dark.sum() or not light.sum():
        return None
    dark_mean = (dark * levels[: threshold + 1]).sum() / dark.sum()
    light_mean = (light * levels[threshold + 1 :]).sum() / light.sum()
    if light_mean - dark_mean < MIN_INK_CONTRAST:
        return None
    # The minority class is the ink: dark text on paper, or light text on a dark slide.
    return gray <= threshold if dark.sum() <= light.sum() else gray > threshold


def _otsu_threshold(histogram: np.ndarray) -> int:
    share = histogram / histogram.sum()
    weight = np.cumsum(share)
    cumulative_mean = np.cumsum(share * np.arange(256))
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (cumulative_mean[-1] * weight - cumulative_mean) ** 2 / (weight * (1 - weight))
    return int(np.nanargmax(between)) if np.isfinite(between).any() else 127


def _long_runs(mask: np.ndarray, length: int, axis: int) -> np.ndarray:
    """Pixels of ``mask`` on a straight run of at least ``length`` along ``axis``."""
    lines = np.ascontiguousarray(mask.T if axis == 0 else mask)  # one row per line along ``axis``
    count, size = lines.shape
    padded = np.zeros((count, size + 2), dtype=np.int8)
    padded[:, 1:-1] = lines
    line, position = np.nonzero(np.diff(padded, axis=1))
    # Per line, edges alternate run start, run end, in order.
    starts, ends, run_line = position[0::2], position[1::2], line[0::2]
    long = (ends - starts) >= length
    runs = np.zeros((count, size), dtype=bool)
    ruled, ruled_index = np.unique(run_line[long], return_inverse=True)
    if len(ruled):
        # Only the few lines holding a rule need the (costly) prefix sum.
        marker = np.zeros((len(ruled), size + 1), dtype=np.int32)
        np.add.at(marker, (ruled_index, starts[long]), 1)
        np.add.at(marker, (ruled_index, ends[long]), -1)
        runs[ruled] = np.cumsum(marker, axis=1)[:, :size] > 0
    return runs.T if axis == 0 else runs


def _runs(flags: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and end (exclusive) indices of the True runs of a 1-D array."""
    edges = np.diff(np.concatenate(([0], flags.astype(np.int8), [0])))
    return np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)


def _character_units(ink: np.ndarray) -> float:
    """Character advances in one vertical strip of the page."""
    row_ink = ink.sum(axis=1)
    starts, ends = _runs(row_ink >= 2)
    heights = ends - starts
    keep = heights >= MIN_LINE_HEIGHT
    return sum(
        _band_units(ink[top:bottom], row_ink[top:bottom])
        for top, bottom in zip(starts[keep], ends[keep], strict=True)
    )


def _lines_in_band(row_ink: np.ndarray) -> int:
    """Text lines in a band of touching rows: tightly set lines touch, weak rows separate them."""
    starts, ends = _runs(row_ink >= LINE_VALLEY_SHARE * row_ink.max())
    heights = ends - starts
    # Ascender or descender slivers of a single line are much shorter than its x-height body.
    return max(1, int(np.count_nonzero(heights >= LINE_BODY_SHARE * heights.max())))


def _band_units(band: np.ndarray, row_ink: np.ndarray) -> float:
    """Character advances in one band of ink rows (each touching line counts)."""
    lines = _lines_in_band(row_ink)
    line_height = band.shape[0] / lines
    starts, ends = _runs(band.any(axis=0))
    widths = ends - starts
    if band.sum() > SOLID_INK_DENSITY * widths.sum() * band.shape[0]:
        return 0.0
    gaps = starts[1:] - ends[:-1]
    inked_span = widths.sum() + gaps[gaps < COLUMN_GAP_EM * line_height].sum()
    return lines * inked_span / (CHAR_WIDTH_EM * line_height)
