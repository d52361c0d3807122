"""One page of text -> a square page, laid out by PyMuPDF's Story at the largest font that fits.

Markdown becomes HTML through markdown-it-py (CommonMark plus GFM tables and strikethrough);
plain text keeps its line breaks (``white-space: pre-wrap``). Story lays the HTML out with the
fonts built into PyMuPDF (Nimbus Sans, Nimbus Mono, and MuPDF's fallback fonts for CJK and
other scripts), so a page looks the same on every machine and nothing is fetched at run time.

The fit: Story is laid out once at :data:`BODY_EM` and ``Story.fit_scale`` finds the smallest
scale ``s`` of the page's text box that holds all of it; drawing that box scaled by ``1/s`` onto
the real page makes the body font ``BODY_EM / s``, the largest that fits.
"""

from __future__ import annotations

import html
import io
from dataclasses import dataclass
from functools import lru_cache

import pymupdf
from markdown_it import MarkdownIt
from PIL import Image

#: The body font size (px) the story is laid out at before scaling; any value works, the fit
#: scales it, and a round one keeps the CSS readable.
BODY_EM = 10.0
#: White border around the text on each side, as a fraction of the page side, so no glyph touches
#: the edge the vision encoder's first patches see.
MARGIN_FRACTION = 1 / 64
#: Story's built-in sans-serif (Nimbus Sans, Helvetica's metrics); OCR reads sans text best.
CSS = f"""
body {{ font-family: sans-serif; font-size: {BODY_EM}px; line-height: 1.2; margin: 0; }}
p, ul, ol, pre, table, blockquote {{ margin-top: 0; margin-bottom: 0.5em; }}
h1, h2, h3, h4, h5, h6 {{ margin-top: 0.3em; margin-bottom: 0.3em; }}
pre, code {{ font-family: monospace; }}
pre {{ white-space: pre-wrap; }}  /* a long code line wraps instead of leaving the page */
table {{ border-collapse: collapse; }}
th, td {{ border: 0.5px solid black; padding: 0 0.3em; }}
.plain {{ white-space: pre-wrap; }}
"""
#: The page is searched for a fit between these scales of its text box (font sizes from
#: ``BODY_EM * 100`` down to ``BODY_EM / 1000`` px), far beyond any usable page.
SCALE_RANGE = (0.01, 1000.0)
#: fit_scale's precision; 0.1 % of the font size.
SCALE_PRECISION = 1e-3


@dataclass(frozen=True)
class LaidOutPage:
    """One page: its pixels, itself as a one-page PDF with a text layer, and its body font size."""

    image: Image.Image
    pdf: bytes
    font_size: float


@lru_cache(maxsize=1)
def _markdown() -> MarkdownIt:
    return MarkdownIt("commonmark", {"html": False}).enable(["table", "strikethrough"])


def to_html(text: str, markdown: bool) -> str:
    """The page's text as the HTML Story lays out."""
    if markdown:
        return _markdown().render(text)
    return f'<div class="plain">{html.escape(text.strip(chr(10)))}</div>'


def lay_out(text: str, side: int, markdown: bool) -> LaidOutPage:
    """Lay ``text`` out on a ``side`` x ``side`` pixel page at the largest font that fits it."""
    margin = side * MARGIN_FRACTION
    box = side - 2 * margin
    story = pymupdf.Story(to_html(text, markdown), user_css=CSS, em=BODY_EM)
    fit = story.fit_scale(
        pymupdf.Rect(0, 0, box, box),
        scale_min=SCALE_RANGE[0],
        scale_max=SCALE_RANGE[1],
        delta=SCALE_PRECISION,
    )
    if not fit.big_enough:
        raise ValueError(f"the text does not fit a page even at scale {SCALE_RANGE[1]}")
    scale = fit.parameter
    pdf = _draw(story, side, scale, margin)
    return LaidOutPage(image=_rasterize(pdf), pdf=pdf, font_size=BODY_EM / scale)


def _draw(story: pymupdf.Story, side: int, scale: float, margin: float) -> bytes:
    """The placed story drawn shrunk by ``scale`` onto a page of ``side`` points (= pixels)."""
    buffer = io.BytesIO()
    writer = pymupdf.DocumentWriter(buffer)
    device = writer.begin_page(pymupdf.Rect(0, 0, side, side))
    story.draw(device, pymupdf.Matrix(1 / scale, 0, 0, 1 / scale, margin, margin))
    writer.end_page()
    writer.close()
    return buffer.getvalue()


def _rasterize(pdf: bytes) -> Image.Image:
    """The page at 72 dpi, where one PDF point is one pixel: exactly ``side`` x ``side`` RGB."""
    with pymupdf.open("pdf", pdf) as document:
        pixmap = document[0].get_pixmap(alpha=False, colorspace=pymupdf.csRGB)
        return Image.frombytes("RGB", (pixmap.width, pixmap.height), pixmap.samples)


@lru_cache(maxsize=1)
def cap_height_em() -> float:
    """The capital height of the body font (Nimbus Sans = PyMuPDF's built-in Helvetica), in em."""
    return pymupdf.Font("helv").glyph_bbox(ord("H")).height
