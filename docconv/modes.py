"""Resolution-mode choice: ``--mode auto`` and the mode ladder used for retries.

DeepSeek-OCR reads a page through a fixed number of vision tokens per mode. The paper
(spec §13.2) shows decoding precision stays near 97% while the page's text tokens are at
most ~10x the vision tokens, and drops to ~60% at 20x. ``auto`` therefore picks, per page,
the cheapest mode whose *valid* vision tokens keep ``text tokens / vision tokens`` at or
under ``max_ratio``. The method, its calibration and the corpus check are in
``docs/auto-mode.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
from PIL import Image

from deepseek_ocr.modes import MODES
from docconv.bands import band_sizes
from docconv.engines.base import VisionBudget

MODE_ORDER: tuple[str, ...] = tuple(MODES)  # in increasing cost
AUTO = "auto"

#: Tiny and Small stretch the page to a square; the paper's OmniDocBench errors for them are
#: 2-3x Base's on dense document types (spec §13.3), while Fox (§13.2) shows >=98.5% precision
#: for them only up to ~7x. So they must meet half the ratio limit, on nearly square pages.
STRETCHED_MODES: frozenset[str] = frozenset(name for name, mode in MODES.items() if mode.stretched)
STRETCHED_RATIO_SHARE = 0.5
STRETCHED_MAX_ASPECT = 1.5

#: Gundam-Master cuts 1024-pixel tiles (~2.3x Gundam's tokens, far slower on CPU) and beats
#: Gundam only on the densest types (newspapers, notes; §13.3), so auto uses it only when
#: Gundam cannot keep the ratio.
AUTO_CEILING = "gundam"

#: DeepSeek's tokenizer documentation: 1 English character ~ 0.3 tokens, 1 Chinese character
#: ~ 0.6 tokens. A CJK glyph is about two Latin character widths, so 0.3 per Latin-width unit
#: covers both.
TOKENS_PER_CHAR = 0.3

#: A text layer is trusted unless the image shows more than this many times its text: the
#: estimate stays within 0.58x-1.35x of the truth on the corpus, so beyond 2x the layer is
#: partial (text drawn as graphics, a caption-only layer) and the estimate is used instead.
PARTIAL_LAYER_FACTOR = 2.0

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

ModeSource = Literal["requested", "text-layer", "image-estimate"]


class BudgetSource(Protocol):
    """The part of :class:`docconv.engines.base.Engine` mode choice needs."""

    def vision_budget(self, width: int, height: int, mode: str) -> VisionBudget: ...


@dataclass(frozen=True)
class ModeChoice:
    """The mode a page is read in, and the numbers that justified it."""

    mode: str
    estimated_text_tokens: int
    vision_tokens: int  # valid vision tokens (letterbox padding excluded)
    ratio: float  # estimated text tokens per valid vision token
    source: ModeSource


def next_larger_mode(mode: str) -> str | None:
    """The next more capable mode (for retrying a degraded page); None after gundam-master."""
    if mode not in MODE_ORDER:
        raise ValueError(f"unknown mode {mode!r}; expected one of {', '.join(MODE_ORDER)}")
    index = MODE_ORDER.index(mode)
    return MODE_ORDER[index + 1] if index + 1 < len(MODE_ORDER) else None


def resolve_mode(
    requested: str,
    page_size: tuple[int, int],
    text_tokens: int | None,
    engine: BudgetSource,
    max_ratio: float = 10.0,
    image: Image.Image | None = None,
) -> ModeChoice:
    """Pick the mode for one page of ``page_size`` (width, height).

    ``text_tokens`` is the token count of the page's PDF text layer (None when it has none);
    ``image`` is measured with :func:`estimate_text_tokens`, which replaces the text layer's
    count when it shows more than ``PARTIAL_LAYER_FACTOR`` times as much text. A page that
    :func:`docconv.bands.split_into_bands` cuts into bands is judged by the bands' geometry
    and their vision tokens together, since that is how the engine reads it.
    """
    if requested != AUTO and requested not in MODE_ORDER:
        raise ValueError(f"unknown mode {requested!r}; expected auto or one of {', '.join(MODE_ORDER)}")
    if max_ratio <= 0:
        raise ValueError(f"max_ratio must be positive, got {max_ratio}")
    tokens, source = _text_tokens(text_tokens, image, required=requested == AUTO)
    if requested != AUTO:
        return _choice(requested, page_size, tokens, engine, "requested")
    mode = _cheapest_sufficient_mode(page_size, tokens, engine, max_ratio)
    return _choice(mode, page_size, tokens, engine, source)


def _text_tokens(
    text_tokens: int | None, image: Image.Image | None, required: bool
) -> tuple[int, ModeSource]:
    estimate = estimate_text_tokens(image) if image is not None else None
    if text_tokens is not None and (estimate is None or estimate <= PARTIAL_LAYER_FACTOR * text_tokens):
        return text_tokens, "text-layer"
    if estimate is not None:
        return estimate, "image-estimate"
    if required:
        raise ValueError("mode auto needs the page's text-layer token count or its image")
    return 0, "requested"


def _choice(
    mode: str, page_size: tuple[int, int], tokens: int, engine: BudgetSource, source: ModeSource
) -> ModeChoice:
    valid = page_budget(engine, page_size, mode).valid
    return ModeChoice(mode, tokens, valid, _ratio(tokens, valid), source)


def page_budget(engine: BudgetSource, page_size: tuple[int, int], mode: str) -> VisionBudget:
    """Vision tokens of a whole page in ``mode``, summed over the bands an extreme page is cut into."""
    budgets = [engine.vision_budget(width, height, mode) for width, height in band_sizes(page_size)]
    return VisionBudget(
        sum(b.tokens for b in budgets), sum(b.valid for b in budgets), sum(b.sequence for b in budgets)
    )


def _ratio(tokens: int, valid: int) -> float:
    if valid <= 0:
        return math.inf if tokens else 0.0
    return round(tokens / valid, 2)


def _cheapest_sufficient_mode(
    page_size: tuple[int, int], tokens: int, engine: BudgetSource, max_ratio: float
) -> str:
    width, height = band_sizes(page_size)[0]  # what each engine call sees
    aspect = max(width, height) / max(1, min(width, height))
    candidates = MODE_ORDER[: MODE_ORDER.index(AUTO_CEILING) + 1]
    budgets = {mode: page_budget(engine, page_size, mode) for mode in candidates}
    # Cost is what the decoder attends over; for small pages Gundam costs no more than Base.
    by_cost = sorted(candidates, key=lambda mode: (budgets[mode].sequence, MODE_ORDER.index(mode)))
    for mode in by_cost:
        if mode in STRETCHED_MODES and aspect > STRETCHED_MAX_ASPECT:
            continue
        share = STRETCHED_RATIO_SHARE if mode in STRETCHED_MODES else 1.0
        if budgets[mode].valid > 0 and tokens <= max_ratio * share * budgets[mode].valid:
            return mode
    return MODE_ORDER[-1]


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
