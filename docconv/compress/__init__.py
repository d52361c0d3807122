"""Optical compression: text -> page images a DeepSeek-OCR mode reads at a chosen compression.

The stage runs the other way from conversion: :func:`render_text` cuts a text into pages that
each hold about ``ratio`` x the mode's vision tokens of text tokens (:mod:`.paging`), lays each
out at the largest font that fits (:mod:`.layout`, PyMuPDF's Story) and returns them as
:class:`RenderedPage`. :func:`save_png` and :func:`write_pdf` write them byte for byte the same
on every run; :mod:`.manifest` describes them for ``docconv compress`` (docs/compress-manifest.md).

Text tokens are counted by a function the caller passes, the model's own tokenizer in practice
(:func:`docconv.engines.text_token_counter`), so this stage never loads a model.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pymupdf
from PIL import Image

from deepseek_ocr.modes import MODES, vision_budget
from docconv.compress.layout import cap_height_em, lay_out
from docconv.compress.paging import split_pages
from docconv.fsutil import atomic_open

#: The modes a page can be rendered for: those that read one square view of the page (no tiles).
COMPRESS_MODES: tuple[str, ...] = tuple(name for name, mode in MODES.items() if not mode.crop_mode)
DEFAULT_MODE = "small"
#: The compression the paper reads at ~97 % precision (arXiv 2510.18234, section 4.2).
DEFAULT_RATIO = 10.0
#: Capitals fewer pixels high than this leave no letter shapes for any reader to resolve: the
#: x-height is then under about two pixels, and telling e from c or n from h needs a stroke and the
#: gap beside it, at least two samples (the sampling theorem). It is a floor for any reader, not
#: a promise of DeepSeek-OCR's precision above it (docs/compress-manifest.md, "Legibility").
MIN_LEGIBLE_CAP_HEIGHT_PX = 3.0


def min_legible_font_size() -> float:
    """The body font size (px) whose capitals are :data:`MIN_LEGIBLE_CAP_HEIGHT_PX` high."""
    return MIN_LEGIBLE_CAP_HEIGHT_PX / cap_height_em()


@dataclass(frozen=True)
class RenderedPage:
    """One rendered page and what it holds."""

    image: Image.Image  # RGB, exactly the mode's input size (square)
    text: str  # the source text this page holds, text[span[0]:span[1]]
    span: tuple[int, int]  # character span [start, end) in the source text
    text_tokens: int  # the page's text counted with the model's tokenizer
    vision_tokens: int  # the mode's valid vision tokens for this page
    ratio: float  # text_tokens / vision_tokens
    font_size: float  # body font size in px (= PDF points: pages are drawn at 72 dpi)
    legible: bool  # False when font_size is below min_legible_font_size()
    #: The page as a one-page PDF with a text layer (what ``write_pdf`` joins).
    pdf: bytes = field(default=b"", repr=False, compare=False)


def mode_side(mode: str) -> int:
    """The side in pixels of a page image for ``mode``: the mode's input size."""
    if mode not in COMPRESS_MODES:
        raise ValueError(f"unknown mode {mode!r} for compression; use one of: {', '.join(COMPRESS_MODES)}")
    return MODES[mode].global_size


def mode_vision_tokens(mode: str) -> int:
    """The valid vision tokens of a page image in ``mode`` (a full square page: no padding)."""
    side = mode_side(mode)
    return vision_budget(side, side, mode).valid


def render_text(
    text: str,
    *,
    mode: str,
    ratio: float,
    count_tokens: Callable[[str], int],
    markdown: bool = True,
    on_page: Callable[[RenderedPage], None] | None = None,
) -> list[RenderedPage]:
    """Render ``text`` as pages for ``mode``, each holding about ``ratio`` x its vision tokens of
    text tokens (the last holds the rest). No pages for text that is only whitespace.
    ``on_page`` is called with each page as it is finished (progress displays).

    Raises ``ValueError`` for an unknown mode, a ratio that leaves a page less than one token, or
    a page the layout cannot fit at any font size.
    """
    side = mode_side(mode)
    vision_tokens = mode_vision_tokens(mode)
    if not ratio > 0:
        raise ValueError(f"the compression ratio must be positive, got {ratio}")
    if not text.strip():
        return []
    legible_from = min_legible_font_size()
    pages = []
    for piece in split_pages(text, round(ratio * vision_tokens), count_tokens, markdown):
        laid_out = lay_out(piece.source, side, markdown)
        page_text = text[piece.start : piece.end]
        text_tokens = count_tokens(page_text)
        page = RenderedPage(
            image=laid_out.image,
            text=page_text,
            span=(piece.start, piece.end),
            text_tokens=text_tokens,
            vision_tokens=vision_tokens,
            ratio=text_tokens / vision_tokens,
            font_size=laid_out.font_size,
            legible=laid_out.font_size >= legible_from,
            pdf=laid_out.pdf,
        )
        pages.append(page)
        if on_page is not None:
            on_page(page)
    return pages


def png_bytes(image: Image.Image) -> bytes:
    """``image`` as PNG with no metadata (no times, no software names): the same pixels give the
    same bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue()


def save_png(image: Image.Image, path: str | os.PathLike[str]) -> None:
    """Write ``image`` atomically as deterministic PNG (:func:`png_bytes`)."""
    with atomic_open(path, "wb") as handle:
        handle.write(png_bytes(image))


def pdf_bytes(pages: Sequence[RenderedPage]) -> bytes:
    """The pages as one PDF with their text layer; no dates or random ids, so the same pages give
    the same bytes."""
    with pymupdf.open() as joined:
        for page in pages:
            with pymupdf.open("pdf", page.pdf) as single:
                joined.insert_pdf(single)
        joined.set_metadata({})
        joined.subset_fonts()
        return joined.tobytes(garbage=3, deflate=True, no_new_id=True)


def write_pdf(pages: Sequence[RenderedPage], path: str | os.PathLike[str]) -> None:
    """Write the pages atomically as one PDF with a text layer (:func:`pdf_bytes`)."""
    with atomic_open(path, "wb") as handle:
        handle.write(pdf_bytes(pages))


__all__ = [
    "COMPRESS_MODES",
    "DEFAULT_MODE",
    "DEFAULT_RATIO",
    "MIN_LEGIBLE_CAP_HEIGHT_PX",
    "RenderedPage",
    "min_legible_font_size",
    "mode_side",
    "mode_vision_tokens",
    "pdf_bytes",
    "png_bytes",
    "render_text",
    "save_png",
    "write_pdf",
]
