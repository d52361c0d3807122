"""Mode choice for --mode auto, the retry ladder, and the image text-density estimate."""

from __future__ import annotations

import math

import pytest

from docconv.engines.base import VisionBudget
from docconv.run.modes import MODE_ORDER, next_larger_mode, resolve_mode
from docconv.run.text_density import estimate_text_tokens

from ..helpers import LETTER_144DPI, text_page

# Spec §6.4: candidate tile grids (min 2, max 9 tiles) in the reference's order.
GRIDS = [(1, 2), (2, 1), (3, 1), (1, 3), (2, 2), (4, 1), (1, 4), (5, 1), (1, 5), (1, 6), (6, 1)]
GRIDS += [(3, 2), (2, 3), (7, 1), (1, 7), (4, 2), (2, 4), (1, 8), (8, 1), (1, 9), (3, 3), (9, 1)]


def _grid(width: int, height: int, tile: int) -> tuple[int, int]:
    aspect, best, best_diff = width / height, (1, 1), math.inf
    for i, j in GRIDS:
        diff = abs(aspect - i / j)
        if diff < best_diff or (diff == best_diff and width * height > 0.5 * tile * tile * i * j):
            best, best_diff = (i, j), diff
    return best


class SpecBudget:
    """vision_budget from the spec's formulas (§5.1, §11), standing in for the engine."""

    modes = MODE_ORDER

    def vision_budget(self, width: int, height: int, mode: str) -> VisionBudget:
        r = min(width, height) / max(width, height)
        base, tile = {"tiny": (512, 512), "small": (640, 640), "base": (1024, 1024)}.get(mode, (1280, 1280))
        if mode in ("gundam", "gundam-master"):
            base, tile = (1024, 640) if mode == "gundam" else (1280, 1024)
        q_base, q_tile = base // 64, tile // 64
        cols, rows = (1, 1)
        if mode in ("gundam", "gundam-master") and (width > 640 or height > 640):
            cols, rows = _grid(width, height, tile)
        tiles = cols * rows if cols * rows > 1 else 0
        tokens = q_base**2 + tiles * q_tile**2
        sequence = (q_base + 1) * q_base + 1 + ((q_tile * cols + 1) * q_tile * rows if tiles else 0)
        global_valid = q_base**2 if mode in ("tiny", "small") else int(q_base**2 * r)
        return VisionBudget(tokens, global_valid + tiles * q_tile**2, sequence)


ENGINE = SpecBudget()


def test_spec_budget_matches_the_spec_tables() -> None:
    assert ENGINE.vision_budget(1224, 1584, "gundam").sequence == 903
    assert ENGINE.vision_budget(1920, 1080, "gundam").sequence == 1093
    assert ENGINE.vision_budget(640, 640, "gundam").sequence == 273
    assert ENGINE.vision_budget(1000, 1000, "large").valid == 400


def test_retry_ladder_ends_at_gundam_master() -> None:
    assert [next_larger_mode(m) for m in MODE_ORDER] == [*MODE_ORDER[1:], None]
    with pytest.raises(ValueError, match="unknown mode"):
        next_larger_mode("huge")


def test_requested_mode_is_kept_and_reports_its_ratio() -> None:
    choice = resolve_mode("base", LETTER_144DPI, 394, ENGINE)
    assert (choice.mode, choice.source, choice.vision_tokens) == ("base", "requested", 197)
    assert choice.ratio == 2.0


@pytest.mark.parametrize(
    ("size", "tokens", "expected"),
    [
        ((1000, 1000), 0, "tiny"),
        ((1000, 1000), 320, "tiny"),  # half of 10x64: stretched modes get half the ratio
        ((1000, 1000), 400, "small"),
        (LETTER_144DPI, 400, "small"),  # 1:1.29 is mild enough to stretch
        ((800, 1600), 100, "base"),  # 1:2 would be distorted by the square stretch
        (LETTER_144DPI, 1900, "base"),  # 197 valid tokens
        (LETTER_144DPI, 3000, "large"),  # 309 valid tokens
        (LETTER_144DPI, 7000, "gundam"),  # 197 + 6 tiles x 100
        (LETTER_144DPI, 9000, "gundam-master"),  # beyond what gundam reads at 10x
        (LETTER_144DPI, 90000, "gundam-master"),  # nothing suffices: the most capable mode
    ],
)
def test_auto_picks_the_cheapest_mode_within_the_ratio(
    size: tuple[int, int], tokens: int, expected: str
) -> None:
    choice = resolve_mode("auto", size, tokens, ENGINE)
    assert choice.mode == expected
    assert choice.source == "text-layer"
    assert choice.estimated_text_tokens == tokens


def test_auto_respects_a_stricter_max_ratio() -> None:
    assert resolve_mode("auto", LETTER_144DPI, 1500, ENGINE, max_ratio=5).mode == "large"


def test_auto_for_a_small_image_prefers_base_over_an_equally_costly_gundam() -> None:
    # <= 640 px both sides: gundam is only the padded 1024 global view, the same cost as base.
    assert resolve_mode("auto", (600, 400), 1000, ENGINE).mode == "base"


def test_a_receipt_is_judged_by_the_bands_the_engine_reads() -> None:
    # 1:10 is cut into six 600x1091 bands; each band in base has int(256 * 600 / 1091) valid tokens.
    choice = resolve_mode("auto", (600, 6000), 800, ENGINE)
    assert choice.mode == "base"
    assert choice.vision_tokens == 6 * 140
    assert resolve_mode("large", (600, 6000), 800, ENGINE).vision_tokens == 6 * int(400 * 600 / 1091)


def test_auto_without_text_layer_measures_the_image() -> None:
    page = text_page(LETTER_144DPI, lines=40)
    choice = resolve_mode("auto", page.size, None, ENGINE, image=page)
    assert choice.source == "image-estimate"
    assert choice.estimated_text_tokens > 300
    assert choice.mode in ("base", "large")


def test_text_layer_is_trusted_within_the_estimators_error() -> None:
    page = text_page(LETTER_144DPI, lines=40)
    estimate = estimate_text_tokens(page)
    choice = resolve_mode("auto", page.size, round(estimate * 0.6), ENGINE, image=page)
    assert (choice.source, choice.estimated_text_tokens) == ("text-layer", round(estimate * 0.6))


def test_partial_text_layer_gives_way_to_the_image() -> None:
    # A layer holding a caption while the page is full of text drawn as graphics.
    page = text_page(LETTER_144DPI, lines=40)
    choice = resolve_mode("auto", page.size, 15, ENGINE, image=page)
    assert choice.source == "image-estimate"
    assert choice.estimated_text_tokens == estimate_text_tokens(page)
    assert choice.mode != "tiny"


def test_auto_needs_tokens_or_an_image() -> None:
    with pytest.raises(ValueError, match="needs"):
        resolve_mode("auto", LETTER_144DPI, None, ENGINE)
    with pytest.raises(ValueError, match="unknown mode"):
        resolve_mode("medium", LETTER_144DPI, 10, ENGINE)
