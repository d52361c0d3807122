"""Per-document journal of finished pages, so a killed run resumes at the next page.

:class:`RecordJournal` is the mechanism for any kind of record (``docconv eval`` journals
scored pages with it); :class:`Journal` is the conversion's, one entry per page.

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
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any, Generic, TypeVar

from docconv.fsutil import atomic_write_text
from docconv.output.document import Page

JOURNAL_VERSION = 1
JOURNAL_SUFFIX = ".docconv-journal.jsonl"

Key = TypeVar("Key")
Record = TypeVar("Record")


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


class RecordJournal(Generic[Key, Record]):
    """Finished records of one job, by key; :meth:`record` makes a record durable before returning.

    ``encode`` and ``decode`` turn a record into a JSON object and back (``decode`` raises
    TypeError, KeyError or ValueError on an entry it cannot read); ``key`` names the record.
    """

    def __init__(
        self,
        path: Path,
        digest: str,
        encode: Callable[[Record], dict[str, Any]],
        decode: Callable[[dict[str, Any]], Record],
        key: Callable[[Record], Key],
    ) -> None:
        self.path = path
        self._digest = digest
        self._encode = encode
        self._key = key
        self.finished: dict[Key, Record] = {key(item): item for item in _read_matching(path, digest, decode)}
        self._handle: IO[str] | None = None

    def __enter__(self) -> RecordJournal[Key, Record]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def record(self, item: Record) -> None:
        """Durably note that ``item`` is done."""
        handle = self._open_for_append()
        handle.write(json.dumps(self._encode(item), ensure_ascii=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
        self.finished[self._key(item)] = item

    def _open_for_append(self) -> IO[str]:
        if self._handle is None:
            # Rewrite what survived (drops a torn last line) so appends start on a clean line.
            lines = [_header(self._digest)] + [
                json.dumps(self._encode(item), ensure_ascii=False) for item in self.finished.values()
            ]
            atomic_write_text(self.path, "\n".join(lines) + "\n")
            self._handle = self.path.open("a", encoding="utf-8")
        return self._handle

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def remove(self) -> None:
        """Forget the journal: the job's output is complete."""
        self.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


class Journal(RecordJournal[int, Page]):
    """Finished pages of one document, by page number."""

    def __init__(self, path: Path, digest: str) -> None:
        super().__init__(path, digest, Page.to_dict, Page.from_dict, _page_number)


def _page_number(page: Page) -> int:
    return page.number


def _header(digest: str) -> str:
    return json.dumps({"docconv_journal": JOURNAL_VERSION, "fingerprint": digest})


def _read_matching(path: Path, digest: str, decode: Callable[[dict[str, Any]], Record]) -> list[Record]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return []  # no usable journal: start from the beginning
    if not lines or _parse(lines[0]) != json.loads(_header(digest)):
        return []
    items: list[Record] = []
    for line in lines[1:]:
        entry = _parse(line)
        if entry is None:
            break  # torn write of a killed run: everything before it is intact
        try:
            items.append(decode(entry))
        except (TypeError, KeyError, ValueError):
            break  # written by an incompatible version: redo from here
    return items


def _parse(line: str) -> dict[str, Any] | None:
    try:
        value = json.loads(line)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None
