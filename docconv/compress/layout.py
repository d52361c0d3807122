"""One page of text -> a square page, laid out by PyMuPDF's Story at the largest font that fits.

Markdown becomes HTML through markdown-it-py (CommonMark plus GFM tables and strikethrough);
plain text keeps its line breaks (``white-space: pre-wrap``). Story lays the HTML out with the
fonts built into PyMuPDF (Nimbus Sans, Nimbus Mono, and MuPDF's fallback fonts for CJK and
other scripts), so a page looks the same on every machine and nothing is fetched at run time.

The fit: Story lays the text out at :data:`BODY_EM` into the page's text box, split into one,
two or three columns, each enlarged by a scale ``s``; a bisection finds the smallest ``s`` at
which the columns hold all of it, and drawing them shrunk by ``1/s`` onto the real page makes
the body font ``BODY_EM / s``, the largest that fits. More columns are taken only when they
enlarge the font clearly (:data:`COLUMN_GAIN`).
"""

from __future__ import annotations

import html
import io
import math
from dataclasses import dataclass
from functools import lru_cache

import pymupdf
from PIL import Image

from docconv.compress.markdown import markdown_parser

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
#: A page is laid out in as many of these columns as give the largest font: text with short hard
#: lines (plain text, code) leaves most of a single column's width empty.
COLUMN_COUNTS = (1, 2, 3)
#: More columns are taken only when they enlarge the font by this factor: a reader must find the
#: reading order across columns (Tesseract reads lines straight across a narrow gutter), which
#: pays only for a clearly larger type, as for text with short hard lines.
COLUMN_GAIN = 1.25
#: Space between columns, as a fraction of the page side: wide enough to read as a column break.
GUTTER_FRACTION = 1 / 16
#: The page is searched for a fit between these scales of its text box (font sizes from
#: ``BODY_EM * 100`` down to ``BODY_EM / 1000`` px), far beyond any usable page.
SCALE_RANGE = (0.01, 1000.0)
#: Story reports filled widths in single precision, a rounding error wider than the rectangle
#: when nothing overflows; more than this (relative) is a word sticking out.
OVERFLOW_TOLERANCE = 1e-5
#: The fit's precision: 0.1 % of the font size.
SCALE_PRECISION = 1e-3


@dataclass(frozen=True)
class LaidOutPage:
    """One page: its pixels, itself as a one-page PDF with a text layer, and its body font size."""

    image: Image.Image
    pdf: bytes
    font_size: float


def to_html(text: str, markdown: bool) -> str:
    """The page's text as the HTML Story lays out."""
    if markdown:
        return markdown_parser().render(text)
    return f'<div class="plain">{html.escape(text.strip(chr(10)))}</div>'


def lay_out(text: str, side: int, markdown: bool) -> LaidOutPage:
    """Lay ``text`` out on a ``side`` x ``side`` pixel page at the largest font that fits it, in
    the number of columns (:data:`COLUMN_COUNTS`) that allows the largest."""
    margin = side * MARGIN_FRACTION
    story = pymupdf.Story(to_html(text, markdown), user_css=CSS, em=BODY_EM)
    scale, layout = _best_columns(story, side - 2 * margin, side * GUTTER_FRACTION)
    pdf = _draw(story, side, scale, margin, layout)
    return LaidOutPage(image=_rasterize(pdf), pdf=pdf, font_size=BODY_EM / scale)


def _best_columns(story: pymupdf.Story, box: float, gutter: float) -> tuple[float, _Columns]:
    """The column count and scale that give the largest font; more columns only when they enlarge
    it by :data:`COLUMN_GAIN` over the best with fewer."""
    best: tuple[float, _Columns] | None = None
    for count in COLUMN_COUNTS:
        layout = _Columns(box, count, gutter)
        scale = _smallest_scale(story, layout)
        if best is None or scale * COLUMN_GAIN <= best[0]:
            best = (scale, layout)
    assert best is not None
    return best


@dataclass(frozen=True)
class _Columns:
    """A square text box of side ``box`` split into ``count`` columns ``gutter`` apart."""

    box: float
    count: int
    gutter: float

    @property
    def width(self) -> float:
        return (self.box - (self.count - 1) * self.gutter) / self.count

    def rect(self, scale: float) -> pymupdf.Rect:
        """One column, scaled; the story is laid out at its own size and shrunk when drawn."""
        return pymupdf.Rect(0, 0, self.width * scale, self.box * scale)

    def left(self, index: int) -> float:
        return index * (self.width + self.gutter)


def _holds(story: pymupdf.Story, layout: _Columns, scale: float) -> bool:
    """Whether the columns, enlarged by ``scale``, take the whole story, no word sticking out of
    its column (Story lets a word wider than its column overflow to the right, into the next)."""
    story.reset()
    for _ in range(layout.count):
        column = layout.rect(scale)
        more, filled = story.place(column)
        if filled[2] > column.x1 * (1 + OVERFLOW_TOLERANCE):
            return False
        if not more:
            return True
        story.draw(None)  # a story moves on to the next rectangle only once the last is drawn
    return False


def _smallest_scale(story: pymupdf.Story, layout: _Columns) -> float:
    """The smallest scale at which the columns hold the story, by bisection on its logarithm.

    ``Story.fit_scale`` does this for one rectangle, but it neither flows text on through several
    rectangles nor notices a word overflowing the width, so the search is written here (the
    same bisection, to the same precision).
    """
    low, high = SCALE_RANGE
    if not _holds(story, layout, high):
        raise ValueError(f"the text does not fit a page even at scale {high}")
    while high / low > 1 + SCALE_PRECISION:
        middle = math.sqrt(low * high)
        if _holds(story, layout, middle):
            high = middle
        else:
            low = middle
    return high


def _draw(story: pymupdf.Story, side: int, scale: float, margin: float, layout: _Columns) -> bytes:
    """The story laid out in the columns enlarged by ``scale``, drawn shrunk back onto a page of
    ``side`` points (= pixels)."""
    buffer = io.BytesIO()
    writer = pymupdf.DocumentWriter(buffer)
    device = writer.begin_page(pymupdf.Rect(0, 0, side, side))
    story.reset()
    for index in range(layout.count):
        more, _filled = story.place(layout.rect(scale))
        story.draw(device, pymupdf.Matrix(1 / scale, 0, 0, 1 / scale, margin + layout.left(index), margin))
        if not more:
            break
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
