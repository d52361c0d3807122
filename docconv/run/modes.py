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

from PIL import Image

from deepseek_ocr.modes import MODES
from docconv.engines.base import VisionBudget
from docconv.run.bands import band_sizes
from docconv.run.text_density import estimate_text_tokens

MODE_ORDER: tuple[str, ...] = tuple(MODES)  # in increasing cost
AUTO = "auto"
#: The paper's compression study: ~97% decoding precision up to 10 text tokens per vision token.
DEFAULT_MAX_RATIO = 10.0

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

#: A text layer is trusted unless the image shows more than this many times its text: the
#: estimate stays within 0.58x-1.35x of the truth on the corpus, so beyond 2x the layer is
#: partial (text drawn as graphics, a caption-only layer) and the estimate is used instead.
PARTIAL_LAYER_FACTOR = 2.0

ModeSource = Literal["requested", "text-layer", "image-estimate"]


class BudgetSource(Protocol):
    """The part of :class:`docconv.engines.base.Engine` mode choice needs."""

    modes: tuple[str, ...]  # the modes the engine reads, in increasing cost

    def vision_budget(self, width: int, height: int, mode: str) -> VisionBudget: ...


def served_modes(engine: object) -> tuple[str, ...]:
    """The modes ``engine`` reads, in increasing cost (every mode for an engine that does not say)."""
    served = getattr(engine, "modes", MODE_ORDER)
    return tuple(mode for mode in MODE_ORDER if mode in served)


@dataclass(frozen=True)
class ModeChoice:
    """The mode a page is read in, and the numbers that justified it."""

    mode: str
    estimated_text_tokens: int
    vision_tokens: int  # valid vision tokens (letterbox padding excluded)
    ratio: float  # estimated text tokens per valid vision token
    source: ModeSource


def next_larger_mode(mode: str, modes: tuple[str, ...] = MODE_ORDER) -> str | None:
    """The next more capable of the engine's ``modes`` (for retrying a degraded page); None after
    the last (gundam-master for DeepSeek-OCR)."""
    if mode not in modes:
        raise ValueError(f"unknown mode {mode!r}; expected one of {', '.join(modes)}")
    index = modes.index(mode)
    return modes[index + 1] if index + 1 < len(modes) else None


def unsupported_mode_message(requested: str, model: str, modes: tuple[str, ...]) -> str | None:
    """Why ``--mode requested`` cannot read pages with this model, or None when it can."""
    if requested == AUTO or requested in modes:
        return None
    return (
        f"--mode {requested}: {model} reads only the modes {', '.join(modes)}; use one of them or --mode auto"
    )


def resolve_mode(
    requested: str,
    page_size: tuple[int, int],
    text_tokens: int | None,
    engine: BudgetSource,
    max_ratio: float = DEFAULT_MAX_RATIO,
    image: Image.Image | None = None,
) -> ModeChoice:
    """Pick the mode for one page of ``page_size`` (width, height).

    ``text_tokens`` is the token count of the page's PDF text layer (None when it has none);
    ``image`` is measured with :func:`estimate_text_tokens`, which replaces the text layer's
    count when it shows more than ``PARTIAL_LAYER_FACTOR`` times as much text. A page that
    :func:`docconv.run.bands.split_into_bands` cuts into bands is judged by the bands' geometry
    and their vision tokens together, since that is how the engine reads it.
    """
    if requested != AUTO and requested not in served_modes(engine):
        raise ValueError(f"unknown mode {requested!r}; expected auto or one of {', '.join(served_modes(engine))}")
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
    served = served_modes(engine)
    candidates = [mode for mode in MODE_ORDER[: MODE_ORDER.index(AUTO_CEILING) + 1] if mode in served]
    if not candidates:
        return served[0]  # an engine reading only costlier modes: its cheapest
    budgets = {mode: page_budget(engine, page_size, mode) for mode in candidates}
    # Cost is what the decoder attends over; for small pages Gundam costs no more than Base.
    by_cost = sorted(candidates, key=lambda mode: (budgets[mode].sequence, MODE_ORDER.index(mode)))
    for mode in by_cost:
        if mode in STRETCHED_MODES and aspect > STRETCHED_MAX_ASPECT:
            continue
        share = STRETCHED_RATIO_SHARE if mode in STRETCHED_MODES else 1.0
        if budgets[mode].valid > 0 and tokens <= max_ratio * share * budgets[mode].valid:
            return mode
    return served[-1]
