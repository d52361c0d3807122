"""From a typed input to page images, one page at a time: docconv's one loader of PDFs and images.

PDFs are rendered with PyMuPDF page by page (a 2,000-page PDF never sits in memory as
images), at a DPI chosen so the page's long side matches what the mode will use, so
small modes do not pay for rendering pixels the model throws away. Images are opened
with Pillow: EXIF orientation applied, every TIFF frame a page, 16-bit/CMYK/transparent
pixels converted to plain 8-bit RGB on white. Conversion and ``docconv rerender`` (which crops
figures from the source again) both read pages through :func:`open_document`.
"""

from __future__ import annotations

import io
import warnings
from typing import Protocol

import pymupdf
from PIL import Image, ImageOps, UnidentifiedImageError

from deepseek_ocr.modes import MODES
from docconv.sources.inputs import InputDocument, InputError

#: A portrait page in a tiled mode is cut into 2x3 tiles: its long side spans three tiles.
TILES_ALONG_LONG_SIDE = 3
#: Long side in pixels a page needs for each mode: the native square for the single-view
#: modes, three tiles for the tiled modes.
MODE_LONG_SIDE: dict[str, int] = {
    name: mode.tile_size * (TILES_ALONG_LONG_SIDE if mode.crop_mode else 1) for name, mode in MODES.items()
}
#: DPI used when the mode is not known before rendering (auto mode, image-only page).
DEFAULT_MODE = "gundam"
MIN_DPI = 72
MAX_DPI = 300
#: Pillow's own decompression-bomb threshold; a real 600-dpi A3 scan (~70 MP) fits below it.
MAX_PIXELS = 89_478_485
#: Pages smaller than this carry nothing readable (1x1 placeholders, tracking pixels).
MIN_SIDE = 8
_EXIF_ORIENTATION = 0x0112
_QUARTER_TURNS = {5, 6, 7, 8}  # EXIF orientations that swap width and height

pymupdf.TOOLS.mupdf_display_errors(False)


class PageSource(Protocol):
    """The pages of one document, rendered on demand."""

    page_count: int

    def page_size_points(self, index: int) -> tuple[float, float]:
        """Page size in points (1/72 inch) after rotation; images report their pixels."""
        ...

    def text_layer(self, index: int) -> str | None:
        """The embedded text of a PDF page, or None when the page has none."""
        ...

    def render(self, index: int, dpi: float | None) -> Image.Image:
        """The page as an RGB image, upright (``dpi`` applies to PDFs; None: the default mode's)."""
        ...

    def close(self) -> None: ...


def open_document(document: InputDocument, password: str | None = None) -> PageSource:
    """Open ``document`` for page rendering; raises :class:`InputError` with the fix for bad files."""
    if document.is_pdf:
        return PdfSource(_open_pdf(document, password))
    return ImageSource(_open_image(document))


# ---------------------------------------------------------------- PDFs


def _open_pdf(document: InputDocument, password: str | None) -> pymupdf.Document:
    try:
        if document.data is not None:
            pdf = pymupdf.open(stream=document.data, filetype="pdf")
        else:
            pdf = pymupdf.open(document.path, filetype="pdf")
    except (pymupdf.FileDataError, RuntimeError, ValueError):
        raise InputError("damaged PDF that cannot be repaired; re-export or re-download it") from None
    if pdf.needs_pass:
        if not password:
            raise InputError("encrypted PDF; pass --password")
        if not pdf.authenticate(password):
            raise InputError("encrypted PDF and the password is wrong; check --password")
    if pdf.page_count == 0:
        raise InputError("PDF has no pages; nothing to convert")
    return pdf


class PdfSource:
    def __init__(self, pdf: pymupdf.Document) -> None:
        self._pdf = pdf
        self.page_count = pdf.page_count

    def page_size_points(self, index: int) -> tuple[float, float]:
        rect = self._pdf[index].rect  # already rotated by /Rotate
        return float(rect.width), float(rect.height)

    def text_layer(self, index: int) -> str | None:
        text = self._pdf[index].get_text("text").strip()
        return text or None

    def render(self, index: int, dpi: float | None) -> Image.Image:
        page = self._pdf[index]
        width, height = self.page_size_points(index)
        chosen = dpi or dpi_for(DEFAULT_MODE, width, height)
        zoom = _zoom_within_pixel_limit(chosen / 72, width, height)
        try:
            pixmap = page.get_pixmap(matrix=pymupdf.Matrix(zoom, zoom), alpha=False, colorspace=pymupdf.csRGB)
        except RuntimeError as error:
            raise InputError(f"page {index + 1} cannot be rendered ({error}); re-export the PDF") from None
        return Image.frombytes("RGB", (pixmap.width, pixmap.height), pixmap.samples)

    def close(self) -> None:
        self._pdf.close()


def dpi_for(mode: str, width_points: float, height_points: float) -> int:
    """The DPI that makes the page's long side what ``mode`` looks at, within sane bounds."""
    long_side_inches = max(width_points, height_points, 1.0) / 72
    dpi = round(MODE_LONG_SIDE.get(mode, MODE_LONG_SIDE[DEFAULT_MODE]) / long_side_inches)
    return max(MIN_DPI, min(MAX_DPI, dpi))


def _zoom_within_pixel_limit(zoom: float, width_points: float, height_points: float) -> float:
    pixels = width_points * zoom * height_points * zoom
    return zoom if pixels <= MAX_PIXELS else zoom * (MAX_PIXELS / pixels) ** 0.5


# ---------------------------------------------------------------- images


def _open_image(document: InputDocument) -> Image.Image:
    source = io.BytesIO(document.data) if document.data is not None else document.path
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(source)
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InputError(
            f"image declares more than {MAX_PIXELS:,} pixels (decompression bomb?); downscale it first"
        ) from None
    except ValueError as error:
        raise InputError(f"image cannot be decoded ({error}); re-export it") from None
    except (UnidentifiedImageError, OSError, SyntaxError):
        raise InputError("damaged or truncated image; re-export or re-download it") from None
    return image


class ImageSource:
    """An image file: one page, or one page per frame for multi-frame TIFFs."""

    def __init__(self, image: Image.Image) -> None:
        self._image = image
        # Only TIFF frames are pages; animated GIF/PNG/WebP frames are the same picture over time.
        self.page_count = getattr(image, "n_frames", 1) if image.format == "TIFF" else 1
        self._check_size(0)

    def _check_size(self, index: int) -> None:
        self._image.seek(index)
        width, height = self._image.size
        if min(width, height) < MIN_SIDE:
            raise InputError(
                f"image is {width}x{height} pixels, too small to hold text; minimum is {MIN_SIDE}x{MIN_SIDE}"
            )

    def page_size_points(self, index: int) -> tuple[float, float]:
        self._image.seek(index)
        width, height = self._image.size
        if self._image.getexif().get(_EXIF_ORIENTATION) in _QUARTER_TURNS:
            width, height = height, width
        return float(width), float(height)

    def text_layer(self, index: int) -> str | None:
        return None

    def render(self, index: int, dpi: float | None) -> Image.Image:
        if index:
            self._check_size(index)
        self._image.seek(index)
        try:
            self._image.load()
            upright = ImageOps.exif_transpose(self._image)
        except (OSError, ValueError) as error:
            raise InputError(f"frame {index + 1} cannot be decoded ({error}); re-export the image") from None
        return to_rgb(upright)

    def close(self) -> None:
        self._image.close()


def to_rgb(image: Image.Image) -> Image.Image:
    """Plain 8-bit RGB: 16-bit scaled down, CMYK converted, transparency flattened onto white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        image = _high_bit_depth_to_l(image)
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("LA", "La", "PA") or (image.mode in ("L", "RGB") and "transparency" in image.info):
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "RGBa"):
        white = Image.new("RGB", image.size, (255, 255, 255))
        white.paste(image, mask=image.getchannel("A"))
        return white
    return image.convert("RGB")


def _high_bit_depth_to_l(image: Image.Image) -> Image.Image:
    # Pillow's I;16 -> L conversion clips at 255 instead of scaling, which turns most 16-bit scans white.
    transparency = image.info.get("transparency")
    scaled = image.convert("I").point(lambda value: value / 257).convert("L")
    if transparency is not None:
        alpha = image.convert("I").point(lambda value: 0 if value == transparency else 255).convert("L")
        scaled = Image.merge("LA", (scaled, alpha))
    return scaled
