"""Serialise converted documents: Markdown, JSON, JSONL, HTML, table CSVs and figure crops.

Every file goes through :mod:`docconv.fsutil`, so an interrupted run never leaves a
half-written output behind.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from docconv.document import SCHEMA_VERSION, BBox, Document, Page
from docconv.fsutil import atomic_open, atomic_write_text
from docconv.markdown import LINE_TASKS, blocks_html, blocks_markdown, line_by_line_markdown
from docconv.tables import table_to_csv

FORMATS = ("md", "json", "jsonl", "html")
TABLE_FORMATS = ("auto", "md", "html")
TASKS = ("markdown", "text", "handwriting", "figure", "describe", "raw")

#: Put between pages of a Markdown document; ``{page}`` is the number of the page that follows.
#: An HTML comment: invisible when rendered, easy to split on, no form feed or rule to clash with.
DEFAULT_PAGE_SEPARATOR = "\n\n<!-- page {page} -->\n\n"

#: File extension of each output format.
EXTENSIONS = {"md": ".md", "json": ".json", "jsonl": ".jsonl", "html": ".html"}


@dataclass(frozen=True)
class RenderOptions:
    """How a document is turned into text."""

    format: str = "md"  # md | json | jsonl | html
    tables_format: str = "auto"  # auto (Markdown unless spans) | md | html
    keep_headers: bool = False  # keep page headers, footers and page numbers
    page_separator: str = DEFAULT_PAGE_SEPARATOR
    task: str = "markdown"  # markdown | text | handwriting | figure | describe | raw
    tables_csv: bool = False  # also write every table as CSV


def render_page_markdown(page: Page, options: RenderOptions) -> str:
    """One page as Markdown (``raw`` task: the model's text untouched)."""
    if options.task == "raw":
        return page.raw
    if options.task in LINE_TASKS:
        return line_by_line_markdown(page.blocks, options.tables_format)
    return blocks_markdown(page.blocks, options.tables_format, options.keep_headers)


def _separator(options: RenderOptions, page: Page) -> str:
    return options.page_separator.replace("{page}", str(page.number))


def render_markdown(doc: Document, options: RenderOptions) -> str:
    parts: list[str] = []
    for index, page in enumerate(doc.pages):
        if index:
            parts.append(_separator(options, page))
        parts.append(render_page_markdown(page, options).strip("\n"))
    return "".join(parts).strip("\n") + "\n"


def render_html(doc: Document, options: RenderOptions) -> str:
    """A standalone HTML page; math keeps its LaTeX delimiters for MathJax or KaTeX."""
    sections = []
    for page in doc.pages:
        if options.task == "raw":
            body = f"<pre>{html.escape(page.raw)}</pre>"
        else:
            body = blocks_html(page.blocks, options.keep_headers)
        sections.append(f'<section class="page" data-page="{page.number}">\n{body}\n</section>')
    title = html.escape(Path(doc.source).name or doc.source)
    return (
        '<!DOCTYPE html>\n<html>\n<head>\n<meta charset="utf-8">\n'
        f"<title>{title}</title>\n</head>\n<body>\n" + "\n".join(sections) + "\n</body>\n</html>\n"
    )


def render_document(doc: Document, options: RenderOptions) -> str:
    """The whole document in ``options.format`` (jsonl: one line per page)."""
    if options.format == "json":
        return json.dumps(doc.to_dict(), ensure_ascii=False, indent=2) + "\n"
    if options.format == "jsonl":
        return "".join(page_jsonl_line(doc.source, page) + "\n" for page in doc.pages)
    if options.format == "html":
        return render_html(doc, options)
    return render_markdown(doc, options)


def page_jsonl_line(doc_source: str, page: Page) -> str:
    """One JSONL record for a page, without the trailing newline (newlines in text are escaped)."""
    record = {"schema_version": SCHEMA_VERSION, "source": doc_source, **page.to_dict()}
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"))


def write_tables_csv(doc: Document, out_dir: Path, stem: str) -> list[Path]:
    """Every table as ``<stem>_p<page>_t<k>.csv`` (k counts from 1 within the page)."""
    written: list[Path] = []
    for page in doc.pages:
        tables = [block.table for block in page.blocks if block.type == "table" and block.table is not None]
        for k, table in enumerate(tables, start=1):
            path = Path(out_dir) / f"{stem}_p{page.number}_t{k}.csv"
            atomic_write_text(path, table_to_csv(table))
            written.append(path)
    return written


def figure_location(output_file: Path) -> tuple[Path, str]:
    """Where figure crops of ``output_file`` go, and the link prefix relative to it."""
    name = f"{output_file.stem}_images"
    return output_file.parent / name, f"{name}/"


def _union(boxes: list[BBox]) -> BBox:
    return (
        min(b[0] for b in boxes),
        min(b[1] for b in boxes),
        max(b[2] for b in boxes),
        max(b[3] for b in boxes),
    )


def _scaled(box: BBox, page: Page, image: Image.Image) -> BBox:
    # Boxes refer to page.width x page.height; the image given may be another resolution.
    sx = image.width / page.width if page.width > 0 else image.width / 999
    sy = image.height / page.height if page.height > 0 else image.height / 999
    x1, y1, x2, y2 = box
    return (
        _clamp(x1 * sx, image.width),
        _clamp(y1 * sy, image.height),
        _clamp(x2 * sx, image.width),
        _clamp(y2 * sy, image.height),
    )


def _clamp(value: float, limit: int) -> int:
    return max(0, min(limit, round(value)))


def save_figures(page: Page, page_image: Image.Image, images_dir: Path, link_prefix: str) -> None:
    """Crop each figure from the page image into ``images_dir/<page>_<k>.png`` and link it.

    A figure with several boxes is cropped once, around all of them: one figure, one file
    (the official code numbers boxes and records differently there and links the wrong crop).
    """
    figures = [block for block in page.blocks if block.type == "image" and block.bboxes]
    for k, block in enumerate(figures):
        box = _scaled(_union(block.bboxes), page, page_image)
        if box[2] <= box[0] or box[3] <= box[1]:
            continue
        name = f"{page.number}_{k}.png"
        crop = page_image.crop(box)
        if crop.mode not in ("RGB", "RGBA", "L"):
            crop = crop.convert("RGB")
        with atomic_open(Path(images_dir) / name, "wb") as handle:
            crop.save(handle, format="PNG")
        block.image_path = link_prefix + name
