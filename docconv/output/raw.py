"""The ``--keep-raw`` file: every page's raw model output, so ``docconv rerender`` can render it again.

``<stem>.raw.json`` holds, per page, the raw text and what re-parsing it needs (size, mode,
tokens, stop reason); it is written atomically next to the output once the document is done.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from docconv.fsutil import atomic_write_text
from docconv.output.document import Document, Page

RAW_FORMAT = "docconv-raw"
RAW_VERSION = 1
#: Suffix of the files ``--keep-raw`` writes next to the outputs.
RAW_SUFFIX = ".raw.json"
_PAGE_FIELDS = (
    "number",
    "width",
    "height",
    "mode",
    "stop_reason",
    "vision_tokens",
    "valid_vision_tokens",
    "text_tokens",
    "seconds",
    "retried",
)



def raw_record(page: Page, source: str) -> dict[str, Any]:
    """What ``--keep-raw`` saves for one page: the raw text and what is needed to re-parse it."""
    record: dict[str, Any] = {"source": source}
    record.update({name: getattr(page, name) for name in _PAGE_FIELDS})
    record["raw"] = page.raw
    return record


def write_raw_file(path: Path, doc: Document) -> None:
    """Save every page's raw model output of ``doc`` (atomically) as a ``.raw.json`` file."""
    data = {
        "format": RAW_FORMAT,
        "version": RAW_VERSION,
        "source": doc.source,
        "page_count": doc.page_count,
        "pages": [raw_record(page, doc.source) for page in doc.pages],
    }
    atomic_write_text(path, json.dumps(data, ensure_ascii=False, indent=1) + "\n")
