"""DeepSeek-OCR's resolution modes and the vision tokens a page costs in each (torch-free).

The mode table, the dynamic tile grid and the token arithmetic (spec §5, §6.4, §11) are pure
arithmetic on a page's size, so callers (docconv's mode choice, its CLI) can plan a page's cost,
and list the modes, without importing torch or touching pixels. The pixels themselves are
prepared in :mod:`deepseek_ocr.image_processing`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

#: Images with both sides at most this many pixels get no tiles in crop modes. The official code
#: hard-codes 640 even for Gundam-Master, whose tiles are 1024 pixels.
NO_TILE_THRESHOLD = 640
DEFAULT_MIN_TILES = 2
#: The official HF ``infer()`` allows 9 tiles; the official vLLM scripts default to 6.
DEFAULT_MAX_TILES = 9

_PATCH_SIZE = 16
_DOWNSAMPLE = 4


@dataclass(frozen=True)
class ResolutionMode:
    """One of DeepSeek-OCR's resolution modes (spec §5.2)."""

    name: str
    base_size: int
    image_size: int
    crop_mode: bool

    @property
    def tile_size(self) -> int:
        """Side of one tile in crop modes."""
        return self.image_size

    @property
    def global_size(self) -> int:
        """Side of the global view: ``base_size`` when tiling, else ``image_size`` (as the reference)."""
        return self.base_size if self.crop_mode else self.image_size

    @property
    def stretched(self) -> bool:
        """Tiny and small stretch the page to a square; every other global view is letterboxed."""
        return not self.crop_mode and self.global_size <= NO_TILE_THRESHOLD


#: The modes in increasing cost (vision tokens per page).
MODES: dict[str, ResolutionMode] = {
    "tiny": ResolutionMode("tiny", 512, 512, False),
    "small": ResolutionMode("small", 640, 640, False),
    "base": ResolutionMode("base", 1024, 1024, False),
    "large": ResolutionMode("large", 1280, 1280, False),
    "gundam": ResolutionMode("gundam", 1024, 640, True),
    "gundam-master": ResolutionMode("gundam-master", 1280, 1024, True),
}


def get_mode(mode: str | ResolutionMode) -> ResolutionMode:
    """Resolve a mode name; unknown names raise ``ValueError`` listing the known ones."""
    if isinstance(mode, ResolutionMode):
        return mode
    try:
        return MODES[mode]
    except KeyError:
        raise ValueError(f"unknown resolution mode {mode!r}; use one of: {', '.join(MODES)}") from None


# ----------------------------------------------------------------------------------------------
# Dynamic tiling (InternVL-style ``dynamic_preprocess``)
# ----------------------------------------------------------------------------------------------

# The reference builds its candidates as a Python set and stable-sorts them by tile count, so ties in
# the aspect-ratio search resolve in CPython's set-iteration order. These are the literal orders it
# produced (spec §6.4); other limits are generated the same way in ``_candidate_grids_from_set``.
_LITERAL_CANDIDATES: dict[tuple[int, int], tuple[tuple[int, int], ...]] = {
    (2, 9): (
        (1, 2), (2, 1), (3, 1), (1, 3), (2, 2), (4, 1), (1, 4), (5, 1), (1, 5), (1, 6), (6, 1),
        (3, 2), (2, 3), (7, 1), (1, 7), (4, 2), (2, 4), (1, 8), (8, 1), (1, 9), (3, 3), (9, 1),
    ),
    (2, 6): (
        (1, 2), (2, 1), (3, 1), (1, 3), (4, 1), (1, 4), (2, 2), (1, 5), (5, 1), (6, 1), (2, 3),
        (1, 6), (3, 2),
    ),
}  # fmt: skip


def _candidate_grids_from_set(min_tiles: int, max_tiles: int) -> tuple[tuple[int, int], ...]:
    """The reference's construction, verbatim: order among equal products follows CPython set order."""
    grids = {
        (i, j)
        for n in range(min_tiles, max_tiles + 1)
        for i in range(1, n + 1)
        for j in range(1, n + 1)
        if min_tiles <= i * j <= max_tiles
    }
    return tuple(sorted(grids, key=lambda grid: grid[0] * grid[1]))


@lru_cache(maxsize=32)
def candidate_grids(
    min_tiles: int = DEFAULT_MIN_TILES, max_tiles: int = DEFAULT_MAX_TILES
) -> tuple[tuple[int, int], ...]:
    """Tile grids ``(cols, rows)`` the tiler may pick, in the order the reference scans them."""
    if not 1 <= min_tiles <= max_tiles:
        raise ValueError(
            f"tile limits must satisfy 1 <= min_tiles <= max_tiles, got {min_tiles}..{max_tiles}"
        )
    literal = _LITERAL_CANDIDATES.get((min_tiles, max_tiles))
    return literal if literal is not None else _candidate_grids_from_set(min_tiles, max_tiles)


def closest_grid(
    width: int,
    height: int,
    tile_size: int,
    min_tiles: int = DEFAULT_MIN_TILES,
    max_tiles: int = DEFAULT_MAX_TILES,
) -> tuple[int, int]:
    """``find_closest_aspect_ratio`` of the reference, including its exact-tie area rule."""
    aspect = width / height
    area = width * height
    best_diff = float("inf")
    best = (1, 1)
    for cols, rows in candidate_grids(min_tiles, max_tiles):
        diff = abs(aspect - cols / rows)
        if diff < best_diff:
            best_diff = diff
            best = (cols, rows)
        # On an exact float tie the larger (later) grid wins only if the image has the pixels to fill it.
        elif diff == best_diff and area > 0.5 * tile_size * tile_size * cols * rows:
            best = (cols, rows)
    return best


def needs_tiles(width: int, height: int, mode: ResolutionMode) -> bool:
    """Whether a page of this size is tiled in ``mode``."""
    return mode.crop_mode and not (width <= NO_TILE_THRESHOLD and height <= NO_TILE_THRESHOLD)


def select_tile_grid(
    width: int,
    height: int,
    mode: str | ResolutionMode,
    max_tiles: int = DEFAULT_MAX_TILES,
    min_tiles: int = DEFAULT_MIN_TILES,
) -> tuple[int, int]:
    """Tile grid ``(cols, rows)`` for an image; ``(1, 1)`` means no tiles (the reference's convention)."""
    resolved = get_mode(mode)
    if not needs_tiles(width, height, resolved):
        return (1, 1)
    return closest_grid(width, height, resolved.tile_size, min_tiles, max_tiles)


# ----------------------------------------------------------------------------------------------
# Token arithmetic (spec §5.1, §11)
# ----------------------------------------------------------------------------------------------


def query_side(size: int) -> int:
    """Side of the token grid for an ``size``-pixel square view (512 -> 8, 640 -> 10, 1024 -> 16)."""
    return math.ceil((size // _PATCH_SIZE) / _DOWNSAMPLE)


def sequence_token_count(mode: str | ResolutionMode, grid: tuple[int, int]) -> int:
    """Image placeholder ids in the prompt: global rows + newlines, separator, stitched tile rows + newlines."""
    resolved = get_mode(mode)
    q_global = query_side(resolved.global_size)
    count = (q_global + 1) * q_global + 1
    cols, rows = grid
    if cols > 1 or rows > 1:
        q_tile = query_side(resolved.tile_size)
        count += (q_tile * cols + 1) * (q_tile * rows)
    return count


def vision_token_count(mode: str | ResolutionMode, grid: tuple[int, int]) -> int:
    """The paper's "vision tokens": global + tile tokens, no newline or separator tokens."""
    resolved = get_mode(mode)
    count = query_side(resolved.global_size) ** 2
    cols, rows = grid
    if cols > 1 or rows > 1:
        count += cols * rows * query_side(resolved.tile_size) ** 2
    return count


def valid_token_count(width: int, height: int, mode: str | ResolutionMode, grid: tuple[int, int]) -> int:
    """Vision tokens that see image content rather than letterbox padding (``test_compress``).

    Stretched views (tiny, small) and tiles are fully valid; a letterboxed global view counts
    ``int(q² · short/long)`` like the reference, which truncates where the paper says ``ceil``.
    The reference only covers base/large/gundam; gundam-master follows the same rule
    (``int(400·r) + 256·tiles``).
    """
    resolved = get_mode(mode)
    global_tokens = query_side(resolved.global_size) ** 2
    if not resolved.stretched:
        long_side, short_side = max(width, height), min(width, height)
        ratio = 1 - ((long_side - short_side) / long_side)
        global_tokens = int(global_tokens * ratio)
    tile_tokens = vision_token_count(resolved, grid) - query_side(resolved.global_size) ** 2
    return global_tokens + tile_tokens


class VisionTokenCounts(NamedTuple):
    """Vision cost of one page: paper count, valid (non-padding) count, placeholder ids in the sequence."""

    tokens: int
    valid: int
    sequence: int


def vision_budget(
    width: int,
    height: int,
    mode: str | ResolutionMode,
    max_tiles: int = DEFAULT_MAX_TILES,
    min_tiles: int = DEFAULT_MIN_TILES,
) -> VisionTokenCounts:
    """Token counts of a ``width`` x ``height`` page in ``mode``, computed without touching pixels."""
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    grid = select_tile_grid(width, height, mode, max_tiles, min_tiles)
    return VisionTokenCounts(
        tokens=vision_token_count(mode, grid),
        valid=valid_token_count(width, height, mode, grid),
        sequence=sequence_token_count(mode, grid),
    )
