"""Small generated test documents: PDFs with PyMuPDF, images with Pillow."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pymupdf
from PIL import Image, ImageDraw, ImageFont

from docconv.sources.inputs import resolve_inputs
from docconv.sources.pages import PageSource, open_document

A6_POINTS = (298, 420)
#: A US-letter page rendered at 144 dpi, in pixels.
LETTER_144DPI = (1224, 1584)
LOREM = (
    "The quick brown fox jumps over the lazy dog while the committee reviews the annual report "
    "and five boxing wizards jump quickly across the page of this generated test document. "
)


def make_pdf(
    path: Path,
    pages: int = 2,
    size: tuple[float, float] = A6_POINTS,
    texts: Sequence[str] | None = None,
    rotate: int = 0,
    password: str | None = None,
) -> Path:
    """A PDF whose page N says "Page N" (or ``texts[N-1]``) in its text layer."""
    pdf = pymupdf.open()
    for number in range(1, pages + 1):
        page = pdf.new_page(width=size[0], height=size[1])
        text = texts[number - 1] if texts else f"Page {number}"
        page.insert_text((36, 72), text, fontsize=18)
        if rotate:
            page.set_rotation(rotate)
    path.parent.mkdir(parents=True, exist_ok=True)
    if password:
        pdf.save(path, encryption=pymupdf.PDF_ENCRYPT_AES_256, user_pw=password, owner_pw=password + "-owner")
    else:
        pdf.save(path)
    pdf.close()
    return path


def make_image(
    path: Path,
    size: tuple[int, int] = (200, 120),
    text: str = "Hello",
    mode: str = "RGB",
    image_format: str | None = None,
    exif_orientation: int | None = None,
) -> Path:
    """A white image with black ``text``; saved in ``image_format`` (default: from the suffix)."""
    image = Image.new("RGB", size, "white")
    ImageDraw.Draw(image).text((10, 10), text, fill="black")
    converted = image.convert(mode) if mode != "RGB" else image
    path.parent.mkdir(parents=True, exist_ok=True)
    kwargs = {}
    if exif_orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        kwargs["exif"] = exif
    converted.save(path, format=image_format, **kwargs)
    return path


def make_tiff(path: Path, frames: int = 3, size: tuple[int, int] = (120, 160)) -> Path:
    """A multi-frame TIFF whose frame N is a different shade, so frames are distinguishable."""
    images = [Image.new("RGB", size, (40 * n, 40 * n, 40 * n)) for n in range(frames)]
    path.parent.mkdir(parents=True, exist_ok=True)
    images[0].save(path, format="TIFF", save_all=True, append_images=images[1:])
    return path


def engine_args(model_dir: Path, max_tokens: int = 2) -> list[str]:
    """CLI flags that run the real engine on a tiny fixture checkpoint, fast (it rarely emits EOS)."""
    return ["--model", str(model_dir), "--device", "cpu", "--max-tokens", str(max_tokens)]


def open_path(path: Path, password: str | None = None) -> PageSource:
    """A file opened for rendering as a conversion opens it (typed by content)."""
    (document,) = resolve_inputs([str(path)]).documents
    return open_document(document, password)


def text_page(size: tuple[int, int], lines: int, font_size: int = 22, fill: str = "white") -> Image.Image:
    """A page of ``lines`` lines of text (black on ``fill``, or white on black)."""
    image = Image.new("RGB", size, fill)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=font_size)
    ink = "black" if fill == "white" else "white"
    for line in range(lines):
        draw.text((60, 60 + line * font_size * 1.5), LOREM[: 60 + line % 20], fill=ink, font=font)
    return image
