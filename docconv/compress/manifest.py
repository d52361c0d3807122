"""A rendered document on disk: its page images, optionally one PDF, and ``manifest.json``.

The manifest's fields are documented in docs/compress-manifest.md and checked by
``docconv/schemas/compress-manifest.schema.json``. It is written last, so a manifest only ever
names pages that are complete on disk; a directory rewritten with fewer pages loses the page
images its old manifest named beyond the new ones.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from docconv.compress import RenderedPage, save_png, write_pdf
from docconv.fsutil import atomic_write_text

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
PDF_NAME = "pages.pdf"


def page_image_name(number: int) -> str:
    """The file name of page ``number`` (1-based): page-0001.png."""
    return f"page-{number:04d}.png"


def manifest(
    pages: Sequence[RenderedPage],
    *,
    mode: str,
    ratio_target: float,
    model: str,
    source: str,
    pdf: str | None = None,
) -> dict[str, Any]:
    """The manifest of ``pages`` (image names relative to the manifest's directory)."""
    text_tokens = sum(page.text_tokens for page in pages)
    vision_tokens = sum(page.vision_tokens for page in pages)
    record: dict[str, Any] = {
        "version": MANIFEST_VERSION,
        "mode": mode,
        "ratio_target": ratio_target,
        "model": model,
        "source": source,
        "pages": [_page_record(number, page) for number, page in enumerate(pages, start=1)],
        "totals": {
            "pages": len(pages),
            "text_tokens": text_tokens,
            "vision_tokens": vision_tokens,
            "ratio": round(text_tokens / vision_tokens, 4) if vision_tokens else 0.0,
        },
    }
    if pdf is not None:
        record["pdf"] = pdf
    return record


def _page_record(number: int, page: RenderedPage) -> dict[str, Any]:
    return {
        "image": page_image_name(number),
        "text": page.text,
        "span": list(page.span),
        "text_tokens": page.text_tokens,
        "vision_tokens": page.vision_tokens,
        "ratio": round(page.ratio, 4),
        "font_size": round(page.font_size, 3),
        "legible": page.legible,
    }


def write_rendered(directory: Path, pages: Sequence[RenderedPage], record: dict[str, Any]) -> Path:
    """Write the page images (and the PDF when ``record`` names one), then the manifest; returns
    the manifest's path."""
    directory.mkdir(parents=True, exist_ok=True)
    stale = _files_named_by(directory / MANIFEST)
    for number, page in enumerate(pages, start=1):
        save_png(page.image, directory / page_image_name(number))
    if "pdf" in record:
        write_pdf(pages, directory / record["pdf"])
    path = directory / MANIFEST
    atomic_write_text(path, json.dumps(record, ensure_ascii=False, indent=2) + "\n")
    for name in stale - _files_named_in(record):
        with contextlib.suppress(FileNotFoundError):
            (directory / name).unlink()
    return path


def _files_named_in(record: dict[str, Any]) -> set[str]:
    names = {Path(entry["image"]).name for entry in record["pages"]}
    return names | ({Path(record["pdf"]).name} if record.get("pdf") else set())


def _files_named_by(path: Path) -> set[str]:
    """The files an earlier manifest at ``path`` named (none if it is absent or unreadable)."""
    try:
        return _files_named_in(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return set()
