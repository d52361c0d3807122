"""Per-document journal of finished pages, so a killed run resumes at the next page.

The journal is an append-only JSON-lines file next to the output: a header line with a
fingerprint of the source and of every option that changes the result, then one line per
finished page, flushed and fsynced before the run moves on. A run killed mid-write leaves
at most one torn last line, which the next run drops. A journal whose fingerprint does not
match (the source changed, or other options) is discarded, never mixed in. The journal is
deleted once the document's output has been written.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from docconv.fsutil import atomic_write_text
from docconv.output.document import Page

JOURNAL_VERSION = 1
JOURNAL_SUFFIX = ".docconv-journal.jsonl"


def journal_path(output: Path) -> Path:
    """Where the journal of the document written to ``output`` lives (hidden, same directory)."""
    return output.with_name(f".{output.name}{JOURNAL_SUFFIX}")


def fingerprint(source_identity: str, options: Mapping[str, Any]) -> str:
    """A digest of what the pages depend on: the source's identity and the result-changing options."""
    payload = json.dumps({"source": source_identity, "options": options}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def file_identity(path: Path) -> str:
    """Cheap identity of a file on disk: resolved path, size and modification time."""
    stat = path.stat()
    return f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"


def bytes_identity(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Journal:
    """Finished pages of one document; :meth:`record` makes a page durable before returning."""

    def __init__(self, path: Path, digest: str) -> None:
        self.path = path
        self._digest = digest
        self.finished: dict[int, Page] = _read_matching(path, digest)
        self._handle: IO[str] | None = None

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def record(self, page: Page) -> None:
        """Durably note that ``page`` is done."""
        handle = self._open_for_append()
        handle.write(json.dumps(page.to_dict(), ensure_ascii=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
        self.finished[page.number] = page

    def _open_for_append(self) -> IO[str]:
        if self._handle is None:
            # Rewrite what survived (drops a torn last line) so appends start on a clean line.
            lines = [_header(self._digest)] + [
                json.dumps(p.to_dict(), ensure_ascii=False) for p in self._pages()
            ]
            atomic_write_text(self.path, "\n".join(lines) + "\n")
            self._handle = self.path.open("a", encoding="utf-8")
        return self._handle

    def _pages(self) -> list[Page]:
        return [self.finished[number] for number in sorted(self.finished)]

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def remove(self) -> None:
        """Forget the journal: the document's output is complete."""
        self.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def _header(digest: str) -> str:
    return json.dumps({"docconv_journal": JOURNAL_VERSION, "fingerprint": digest})


def _read_matching(path: Path, digest: str) -> dict[int, Page]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return {}  # no usable journal: start the document from its first page
    if not lines or _parse(lines[0]) != json.loads(_header(digest)):
        return {}
    pages: dict[int, Page] = {}
    for line in lines[1:]:
        record = _parse(line)
        if record is None:
            break  # torn write of a killed run: everything before it is intact
        try:
            page = Page.from_dict(record)
        except (TypeError, KeyError, ValueError):
            break  # written by an incompatible version: redo from here
        pages[page.number] = page
    return pages


def _parse(line: str) -> dict[str, Any] | None:
    try:
        value = json.loads(line)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None
