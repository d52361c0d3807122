"""``docconv rerender``: saved raw model output -> any output format, without a model.

Accepted inputs:

* docconv's own ``--keep-raw`` file ``<stem>.raw.json`` (see :mod:`docconv.output.raw`);
* a plain text file with raw model output (``.raw.txt``, ``.raw.md``, the official
  ``X_det.mmd``), pages separated by the official ``<--- Page Split --->`` marker;
* a DeepSeek-OCR web-UI JSON response with a ``raw_text`` field (and ``image_dims``).

Figures are cropped when a page image is at hand: ``--image`` for a single page, or the
source document (given, or recorded in the raw file and still on disk), read through docconv's
page loader as a conversion reads it. Without one the boxes stay in JSON and figures are not
cropped.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from PIL import Image

from docconv.fsutil import atomic_write_text
from docconv.output.document import Document, Page
from docconv.output.options import EXTENSIONS, RenderOptions
from docconv.output.postprocess import REASON_TOKEN_LIMIT, parse_page, split_raw_pages
from docconv.output.raw import RAW_FORMAT, RAW_SUFFIX
from docconv.output.writers import figure_location, render_document, save_figures, write_tables_csv
from docconv.sources.inputs import InputError, document_at
from docconv.sources.pages import PageSource, open_document

#: What a raw file may be called besides ``<stem>.raw.json`` (its output takes the stem).
_RAW_SUFFIXES = (RAW_SUFFIX, ".raw.txt", ".raw.md", "_det.mmd", ".mmd", ".json", ".txt", ".md")
#: 144 dpi when the raw file does not record the page size.
_FALLBACK_DPI = 144


class RerenderError(ValueError):
    """A raw file or page image that cannot be used; the message names the file and the fix."""


# --------------------------------------------------------------------------- reading raw files


def load_raw(path: Path) -> Document:
    """A raw file as a :class:`Document` whose pages carry raw text but no blocks yet."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RerenderError(
            f"{path}: file not found; give a .raw.json from --keep-raw or a raw text file"
        ) from None
    except (UnicodeDecodeError, IsADirectoryError, PermissionError) as error:
        raise RerenderError(
            f"{path}: cannot read it as UTF-8 text ({error.__class__.__name__}); give a raw output file"
        ) from None
    data = _json_object(text) if Path(path).suffix.lower() == ".json" else None
    if data is None:
        return _plain_document(path, text)
    if data.get("format") == RAW_FORMAT:
        return _docconv_document(path, data)
    if isinstance(data.get("raw_text"), str):
        return _web_ui_document(path, data)
    raise RerenderError(
        f"{path}: JSON without docconv raw pages or a 'raw_text' field; give a --keep-raw .raw.json file"
    )


def _json_object(text: str) -> dict[str, Any] | None:
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return None  # a .json name holding plain raw text is still raw text
    return data if isinstance(data, dict) else None


def _plain_document(path: Path, text: str) -> Document:
    pages = [
        Page(number=i, width=0, height=0, raw=raw) for i, raw in enumerate(split_raw_pages(text), start=1)
    ]
    return Document(source=str(path), pages=pages, page_count=len(pages))


def _web_ui_document(path: Path, data: dict[str, Any]) -> Document:
    dims = data.get("image_dims") if isinstance(data.get("image_dims"), dict) else {}
    page = Page(number=1, width=_int(dims.get("w")), height=_int(dims.get("h")), raw=data["raw_text"])
    return Document(source=str(path), pages=[page], page_count=1)


def _docconv_document(path: Path, data: dict[str, Any]) -> Document:
    pages = []
    for index, record in enumerate(data.get("pages") or [], start=1):
        if not isinstance(record, dict) or not isinstance(record.get("raw"), str):
            raise RerenderError(
                f"{path}: page {index} has no raw text; the file is damaged, convert the source again"
            )
        page = Page(
            number=_int(record.get("number")) or index,
            width=_int(record.get("width")),
            height=_int(record.get("height")),
        )
        page.raw = record["raw"]
        page.mode = str(record.get("mode") or "")
        page.stop_reason = str(record.get("stop_reason") or "eos")
        for name in ("vision_tokens", "valid_vision_tokens", "text_tokens"):
            setattr(page, name, _int(record.get(name)))
        page.seconds = float(record.get("seconds") or 0.0)
        page.retried = bool(record.get("retried"))
        pages.append(page)
    source = str(data.get("source") or path)
    return Document(source=source, pages=pages, page_count=_int(data.get("page_count")) or len(pages))


def _int(value: object) -> int:
    try:
        return max(0, int(value))  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return 0


# --------------------------------------------------------------------------- page images


def _page_images(
    doc: Document, image: Path | None, source_document: Path | None
) -> Iterator[Image.Image | None]:
    """The image of each page, or None where there is none (one at a time, to bound memory).

    Pages are read through docconv's one loader (:mod:`docconv.sources.pages`), as a conversion
    reads them: EXIF orientation, TIFF frames and transparency are handled the same way.
    """
    if image is not None and len(doc.pages) != 1:
        raise RerenderError(
            f"{doc.source}: --image needs a single-page raw input; give the source document instead"
        )
    path = image or source_document or Path(doc.source)
    source = _open_source(path, required=image is not None)
    try:
        for page in doc.pages:
            yield None if source is None else _render(source, path, 1 if image is not None else page.number, page)
    finally:
        if source is not None:
            source.close()


def _open_source(path: Path, required: bool) -> PageSource | None:
    """``path`` opened for rendering; None, unless ``required``, where it is missing or not a
    document docconv reads (then figures are not cropped)."""
    try:
        document = document_at(path)
    except InputError as error:
        if not required:
            return None
        raise RerenderError(f"{path}: {error}; give the image of the page with --image") from None
    try:
        return open_document(document)
    except InputError as error:
        raise RerenderError(f"{path}: {error}; give --image PAGE instead") from None


def _render(source: PageSource, path: Path, number: int, page: Page) -> Image.Image:
    """Page ``number`` of ``source``, for PDFs at the size the raw file recorded for ``page``."""
    if not 1 <= number <= source.page_count:
        raise RerenderError(f"{path}: has no page {number}; give the matching source document or --image")
    width_points, _ = source.page_size_points(number - 1)
    dpi = 72 * page.width / width_points if page.width > 0 else _FALLBACK_DPI
    try:
        return source.render(number - 1, dpi)
    except InputError as error:
        raise RerenderError(f"{path}: {error}; give --image PAGE instead") from None


# --------------------------------------------------------------------------- rerendering


def rerender_document(
    doc: Document, images_dir: Path | None, link_prefix: str, image: Path | None, source_document: Path | None
) -> bool:
    """Parse every page's raw text into blocks and crop figures; returns whether figures were skipped."""
    skipped = False
    for page, page_image in zip(doc.pages, _page_images(doc, image, source_document), strict=True):
        if page_image is not None and (page.width <= 0 or page.height <= 0):
            page.width, page.height = page_image.size
        parsed = parse_page(page.raw, page.width, page.height)
        page.blocks = parsed.blocks
        token_limit = [REASON_TOKEN_LIMIT] if page.stop_reason == "max_tokens" else []
        page.degraded_reasons = list(dict.fromkeys([*page.degraded_reasons, *parsed.reasons, *token_limit]))
        page.degraded = bool(page.degraded_reasons)
        has_figures = any(block.type == "image" and block.bboxes for block in page.blocks)
        if page_image is not None and images_dir is not None:
            save_figures(page, page_image, images_dir, link_prefix)
        elif has_figures:
            skipped = True
    return skipped


def output_stem(raw_path: Path) -> str:
    """``paper.raw.json`` -> ``paper``; ``X_det.mmd`` -> ``X``."""
    name = Path(raw_path).name
    for suffix in _RAW_SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return Path(raw_path).stem


def _output_files(raw_paths: list[Path], output: Path, extension: str) -> list[Path]:
    if len(raw_paths) == 1 and not output.is_dir() and output.suffix:
        return [output]
    targets = [output / f"{output_stem(path)}{extension}" for path in raw_paths]
    if len(set(targets)) < len(targets):
        clash = next(t for t in targets if targets.count(t) > 1)
        raise RerenderError(
            f"{clash}: several raw inputs would write this file; rerender them one at a time with -o FILE"
        )
    return targets


def rerender_files(
    raw_paths: list[Path],
    output: Path | None,
    options: RenderOptions,
    image: Path | None = None,
    source_document: Path | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> list[Path]:
    """Re-render raw files; returns the files written (none when printing to stdout).

    ``output`` is a file (one raw input, with an extension), a directory (one
    ``<stem>.<ext>`` per input) or None for stdout, where figures cannot be linked.
    """
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    documents = [load_raw(Path(path)) for path in raw_paths]  # every input is checked before any output
    written: list[Path] = []
    targets = (
        _output_files(raw_paths, output, EXTENSIONS[options.format]) if output else [None] * len(documents)
    )
    figures_skipped = False
    for doc, target in zip(documents, targets, strict=True):
        images_dir, prefix = figure_location(target) if target else (None, "")
        figures_skipped |= rerender_document(doc, images_dir, prefix, image, source_document)
        rendered = render_document(doc, options)
        if target is None:
            stdout.write(rendered)
            continue
        atomic_write_text(target, rendered)
        written.append(target)
        if options.tables_csv:
            written.extend(write_tables_csv(doc, target.parent, target.stem))
    if figures_skipped:
        print(
            "docconv: figures not cropped (no page image); boxes are kept in JSON. "
            "Give --image PAGE, the source document, and an output path with -o.",
            file=stderr,
        )
    return written
