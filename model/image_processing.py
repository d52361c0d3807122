"""DeepSeek-OCR image preprocessing, bit-exact with the official Hugging Face ``infer()``.

Covers loading (EXIF orientation, RGB), the per-mode views (stretched square, letterbox, or
letterboxed global view + dynamic tiles), the bf16-rounded normalisation and the image-token
arithmetic. Token counts are pure arithmetic on the image size so callers can plan a page's
cost without decoding or resizing its pixels.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

#: Images with both sides at most this many pixels get no tiles in crop modes. The official code
#: hard-codes 640 even for Gundam-Master, whose tiles are 1024 pixels.
NO_TILE_THRESHOLD = 640
DEFAULT_MIN_TILES = 2
#: The official HF ``infer()`` allows 9 tiles; the official vLLM scripts default to 6.
DEFAULT_MAX_TILES = 9
#: ``int(0.5 * 255)``: the letterbox colour of the reference (normalises to -0.0039, not 0).
PAD_COLOR = (127, 127, 127)

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


def _is_stretched(mode: ResolutionMode) -> bool:
    """Tiny and small stretch the page to a square; every other global view is letterboxed."""
    return not mode.crop_mode and mode.global_size <= NO_TILE_THRESHOLD


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
    if not _is_stretched(resolved):
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


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------

ImageSource = str | os.PathLike[str] | bytes | Image.Image


class ImageLoadError(ValueError):
    """An input could not be decoded as an image; the message names the file and what to do."""


def _open(source: str | os.PathLike[str] | bytes) -> Image.Image:
    name = "<bytes>" if isinstance(source, bytes) else str(source)
    try:
        image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else Path(source))
        image.load()
    except FileNotFoundError:
        raise ImageLoadError(f"{name}: file not found; check the path") from None
    except Image.DecompressionBombError as error:
        raise ImageLoadError(f"{name}: {error}; downscale the image first") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ImageLoadError(f"{name}: not a readable image ({error}); convert it to PNG or JPEG") from None
    return image


def _composite(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    rgba = image.convert("RGBA")
    canvas = Image.new("RGBA", rgba.size, (*background, 255))
    return Image.alpha_composite(canvas, rgba)


def _oriented_rgb(image: Image.Image, alpha_background: tuple[int, int, int] | None) -> Image.Image:
    # Corrupt EXIF raises many exception types; the reference falls back to the raw image the same way.
    with contextlib.suppress(Exception):
        image = ImageOps.exif_transpose(image)
    has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
    if alpha_background is not None and has_alpha:
        image = _composite(image, alpha_background)
    return image.convert("RGB")  # always a new image, so the caller may close the source


def load_image(source: ImageSource, alpha_background: tuple[int, int, int] | None = None) -> Image.Image:
    """Open an image like the reference: EXIF orientation applied, then converted to RGB.

    By default alpha is dropped (transparent pixels keep their stored colour), exactly as
    ``convert("RGB")`` does in the reference; pass ``alpha_background`` to composite onto a colour
    instead (friendlier for transparent PNGs, but no longer reference-identical). Unreadable
    inputs raise :class:`ImageLoadError`.
    """
    if isinstance(source, Image.Image):
        return _oriented_rgb(source, alpha_background)
    with _open(source) as image:
        return _oriented_rgb(image, alpha_background)


# ----------------------------------------------------------------------------------------------
# Views and normalisation
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageViews:
    """uint8 RGB views exactly as the reference feeds them to ``ToTensor``."""

    global_view: np.ndarray  # (S, S, 3) uint8
    tiles: np.ndarray | None  # (P, T, T, 3) uint8, row-major, or None
    grid: tuple[int, int]  # (cols, rows); (1, 1) when there are no tiles


def _global_view(image: Image.Image, mode: ResolutionMode) -> Image.Image:
    size = mode.global_size
    if _is_stretched(mode):
        # Tiny/small stretch to a square (aspect not kept); the pad below is then a no-op.
        image = image.resize((size, size), Image.Resampling.BICUBIC)
    return ImageOps.pad(image, (size, size), method=Image.Resampling.BICUBIC, color=PAD_COLOR)


def _tiles(image: Image.Image, grid: tuple[int, int], tile_size: int) -> np.ndarray:
    cols, rows = grid
    stretched = image.resize((tile_size * cols, tile_size * rows), Image.Resampling.BICUBIC)
    pixels = np.asarray(stretched)
    # (rows·T, cols·T, 3) -> (rows, cols, T, T, 3): the same row-major tiles as cropping box by box.
    blocks = pixels.reshape(rows, tile_size, cols, tile_size, 3).transpose(0, 2, 1, 3, 4)
    return np.ascontiguousarray(blocks).reshape(rows * cols, tile_size, tile_size, 3)


def render_views(
    image: Image.Image,
    mode: str | ResolutionMode,
    max_tiles: int = DEFAULT_MAX_TILES,
    min_tiles: int = DEFAULT_MIN_TILES,
) -> ImageViews:
    """The global view and (in crop modes, for images over 640 px) the tiles of an RGB image."""
    resolved = get_mode(mode)
    grid = select_tile_grid(image.width, image.height, resolved, max_tiles, min_tiles)
    tiles = _tiles(image, grid, resolved.tile_size) if grid != (1, 1) else None
    return ImageViews(np.asarray(_global_view(image, resolved)), tiles, grid)


def _bf16_pixel_table() -> np.ndarray:
    """uint8 -> ``bf16((v/255 - 0.5)/0.5)`` as float32: ToTensor + Normalize(0.5, 0.5) + ``.to(bfloat16)``."""
    levels = torch.arange(256, dtype=torch.float32)
    normalised = (levels / 255 - 0.5) / 0.5
    return normalised.to(torch.bfloat16).to(torch.float32).numpy()


_PIXEL_TABLE = _bf16_pixel_table()


def normalize_views(pixels: np.ndarray) -> torch.Tensor:
    """uint8 ``(..., H, W, 3)`` -> float32 ``(..., 3, H, W)`` holding the reference's bf16 values."""
    # Transpose the 1-byte input, not the 4-byte output, so the lookup writes a contiguous tensor.
    channels_first = np.ascontiguousarray(np.moveaxis(pixels, -1, -3))
    return torch.from_numpy(_PIXEL_TABLE[channels_first])


@dataclass(frozen=True)
class ImageInputs:
    """One page ready for the vision encoder."""

    global_view: torch.Tensor  # (3, S, S) float32
    tiles: torch.Tensor | None  # (P, 3, T, T) float32, or None
    grid: tuple[int, int]  # (cols, rows); (1, 1) when there are no tiles
    n_image_tokens: int  # placeholder ids in the sequence
    vision_tokens: int  # the paper's count
    valid_vision_tokens: int
    image_size: tuple[int, int]  # (W, H) after EXIF orientation


def preprocess_image(
    image: ImageSource,
    mode: str | ResolutionMode,
    max_tiles: int = DEFAULT_MAX_TILES,
    min_tiles: int = DEFAULT_MIN_TILES,
) -> ImageInputs:
    """Load (if needed) and preprocess one page exactly as the reference ``infer()``."""
    resolved = get_mode(mode)
    rgb = load_image(image)
    views = render_views(rgb, resolved, max_tiles, min_tiles)
    return ImageInputs(
        global_view=normalize_views(views.global_view),
        tiles=normalize_views(views.tiles) if views.tiles is not None else None,
        grid=views.grid,
        n_image_tokens=sequence_token_count(resolved, views.grid),
        vision_tokens=vision_token_count(resolved, views.grid),
        valid_vision_tokens=valid_token_count(rgb.width, rgb.height, resolved, views.grid),
        image_size=rgb.size,
    )


def stack_tiles(pages: Sequence[ImageInputs]) -> torch.Tensor | None:
    """All pages' tiles in page order, or None when no page has tiles."""
    tiles = [page.tiles for page in pages if page.tiles is not None]
    return torch.cat(tiles) if tiles else None
