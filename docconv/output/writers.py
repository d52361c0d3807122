"""Write converted documents: the document in its format, table CSVs and figure crops.

Markdown and HTML come from their renderers (:mod:`docconv.output.markdown`,
:mod:`docconv.output.html`); JSON and JSONL are the document model's own dictionaries.

Every file goes through :mod:`docconv.fsutil`, so an interrupted run never leaves a
half-written output behind.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from pathlib import Path

from PIL import Image

from docconv.fsutil import atomic_open, atomic_write_text
from docconv.output.document import SCHEMA_VERSION, BBox, Document, Page
from docconv.output.html import render_html
from docconv.output.markdown import render_markdown
from docconv.output.options import RenderOptions
from docconv.output.tables import table_to_csv


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
    """Crop each figure from the page image into ``images_dir/<page>_<k>.png`` and link it."""
    write_figure_crops(figure_crops(page, page_image, link_prefix), images_dir)


def figure_crops(page: Page, page_image: Image.Image, link_prefix: str) -> dict[str, bytes]:
    """Each figure of ``page`` cropped from the page image as PNG bytes, by file name
    (``<page>_<k>.png``); links the figure blocks to ``link_prefix + name``.

    A figure with several boxes is cropped once, around all of them: one figure, one file
    (the official code numbers boxes and records differently there and links the wrong crop).
    """
    crops: dict[str, bytes] = {}
    figures = [block for block in page.blocks if block.type == "image" and block.bboxes]
    for k, block in enumerate(figures):
        box = _scaled(_union(block.bboxes), page, page_image)
        if box[2] <= box[0] or box[3] <= box[1]:
            continue
        name = f"{page.number}_{k}.png"
        crop = page_image.crop(box)
        if crop.mode not in ("RGB", "RGBA", "L"):
            crop = crop.convert("RGB")
        encoded = io.BytesIO()
        crop.save(encoded, format="PNG")
        crops[name] = encoded.getvalue()
        block.image_path = link_prefix + name
    return crops


def write_figure_crops(crops: Mapping[str, bytes], images_dir: Path) -> None:
    """Write :func:`figure_crops`' files into ``images_dir``, each atomically."""
    for name, data in crops.items():
        with atomic_open(Path(images_dir) / name, "wb") as handle:
            handle.write(data)
