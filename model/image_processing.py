"""DeepSeek-OCR image preprocessing, bit-exact with the official Hugging Face ``infer()``.

Covers loading (EXIF orientation, RGB), the per-mode views (stretched square, letterbox, or
letterboxed global view + dynamic tiles) and the bf16-rounded normalisation. The modes, tile
grids and token counts they follow are in :mod:`deepseek_ocr.modes` (no torch needed there).
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .modes import (
    DEFAULT_MAX_TILES,
    DEFAULT_MIN_TILES,
    ResolutionMode,
    get_mode,
    select_tile_grid,
    sequence_token_count,
    valid_token_count,
    vision_token_count,
)

#: ``int(0.5 * 255)``: the letterbox colour of the reference (normalises to -0.0039, not 0).
PAD_COLOR = (127, 127, 127)


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
    if mode.stretched:
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
