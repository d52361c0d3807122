"""Which documents a run converts: positional paths, directories, stdin and path lists.

Every input is typed by its first bytes, never by its extension, so a PDF named ``.png``
converts and a Git-LFS pointer named ``.png`` fails with a message that says what it is.
"""

from __future__ import annotations

import fnmatch
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

STDIN = "-"

#: Magic-byte signatures of the supported types: (offset, bytes) pairs that must all match.
_SIGNATURES: tuple[tuple[str, tuple[tuple[int, bytes], ...]], ...] = (
    ("png", ((0, b"\x89PNG\r\n\x1a\n"),)),
    ("jpeg", ((0, b"\xff\xd8\xff"),)),
    ("gif", ((0, b"GIF87a"),)),
    ("gif", ((0, b"GIF89a"),)),
    ("webp", ((0, b"RIFF"), (8, b"WEBP"))),
    ("tiff", ((0, b"II*\x00"),)),
    ("tiff", ((0, b"MM\x00*"),)),
    ("bmp", ((0, b"BM"),)),
)
#: PDF readers accept the header anywhere in the first KiB (PDF 1.7 §7.5.2 implementation note).
_PDF_HEADER_WINDOW = 1024
_SNIFF_BYTES = _PDF_HEADER_WINDOW
SUPPORTED_TYPES = "PDF, PNG, JPEG, WebP, TIFF, BMP, GIF"


class InputError(Exception):
    """One input cannot be converted; the message says why and what to do."""


@dataclass(frozen=True)
class InputDocument:
    """One document to convert.

    ``relative`` is where its outputs go below ``-o DIR`` (without suffix), ``data`` holds
    the bytes for stdin (which can only be read once).
    """

    source: str  # the path as the user gave it, or "-" for stdin
    path: Path | None
    relative: PurePosixPath
    kind: str  # pdf | png | jpeg | gif | webp | tiff | bmp
    data: bytes | None = None

    @property
    def is_pdf(self) -> bool:
        return self.kind == "pdf"


@dataclass(frozen=True)
class InputFailure:
    source: str
    message: str


@dataclass
class ResolvedInputs:
    documents: list[InputDocument]
    failures: list[InputFailure]


def sniff_type(head: bytes) -> str:
    """The document type of content starting with ``head``; raises :class:`InputError` if unsupported."""
    if b"%PDF-" in head[:_PDF_HEADER_WINDOW]:
        return "pdf"
    for kind, parts in _SIGNATURES:
        if all(head[offset : offset + len(magic)] == magic for offset, magic in parts):
            return kind
    raise InputError(_unsupported_message(head))


def _unsupported_message(head: bytes) -> str:
    if head.startswith(b"version https://git-lfs"):
        return "a Git LFS pointer, not the file itself; run `git lfs pull` to fetch it"
    if not head:
        return "empty file; nothing to convert"
    preview = head[:16].decode("ascii", "replace").encode("unicode_escape").decode("ascii")
    return f"unsupported file type (content starts with {preview!r}); supported: {SUPPORTED_TYPES}"


def read_list(stream: BinaryIO, nul_separated: bool) -> list[str]:
    """Paths from a ``--from-list`` stream: one per line, or NUL-separated (``find -print0``)."""
    data = stream.read()
    separator = b"\0" if nul_separated else b"\n"
    entries = (raw.rstrip(b"\r") if not nul_separated else raw for raw in data.split(separator))
    return [os.fsdecode(entry) for entry in entries if entry.strip()]


def resolve_inputs(
    paths: Iterable[str],
    glob: str | None = None,
    stdin: BinaryIO | None = None,
) -> ResolvedInputs:
    """Expand the given paths into documents in a stable order; unreadable ones become failures."""
    documents: list[InputDocument] = []
    failures: list[InputFailure] = []
    owners: dict[PurePosixPath, str] = {}
    for given in paths:
        for item in _expand(given, glob, stdin):
            if isinstance(item, InputFailure):
                failures.append(item)
            elif item.relative not in owners:
                owners[item.relative] = item.source
                documents.append(item)
            elif owners[item.relative] != item.source:
                failures.append(InputFailure(item.source, _collision_message(owners[item.relative])))
            # else: the same input named twice is converted once
    return ResolvedInputs(documents, failures)


def _collision_message(owner: str) -> str:
    return f"its output would overwrite that of {owner}; convert it in a separate run"


def _expand(given: str, glob: str | None, stdin: BinaryIO | None) -> Iterator[InputDocument | InputFailure]:
    try:
        if given == STDIN:
            yield _stdin_document(stdin if stdin is not None else sys.stdin.buffer)
            return
        path = Path(given)
        if path.is_dir():
            yield from _walk_directory(path, glob)
            return
        if not path.exists():
            raise InputError("no such file or directory; check the path")
        yield _file_document(path, given, _relative_for_file(given))
    except InputError as error:
        yield InputFailure(given, str(error))


def _stdin_document(stream: BinaryIO) -> InputDocument:
    data = stream.read()
    kind = sniff_type(data[:_SNIFF_BYTES])
    return InputDocument(source=STDIN, path=None, relative=PurePosixPath("stdin"), kind=kind, data=data)


def document_at(path: Path) -> InputDocument:
    """One file, typed by its content (``docconv rerender`` reopening a source for its figures).

    Raises :class:`InputError` when it cannot be read or is not a supported type.
    """
    if not path.is_file():
        raise InputError("no such file; check the path")
    return _file_document(path, str(path), PurePosixPath(path.stem))


def _file_document(path: Path, source: str, relative: PurePosixPath) -> InputDocument:
    try:
        with path.open("rb") as handle:
            head = handle.read(_SNIFF_BYTES)
    except OSError as error:
        raise InputError(f"cannot read file ({error.strerror}); check its permissions") from None
    return InputDocument(source=source, path=path, relative=relative, kind=sniff_type(head))


def _relative_for_file(given: str) -> PurePosixPath:
    """Where a directly named file lands below ``-o DIR``: its relative path, or just its name."""
    pure = PurePosixPath(Path(given).as_posix())
    if pure.is_absolute() or ".." in pure.parts:
        return PurePosixPath(pure.stem)
    return pure.with_suffix("") if pure.suffix else pure


def _walk_directory(root: Path, glob: str | None) -> Iterator[InputDocument | InputFailure]:
    for path in sorted(_visible_files(root), key=lambda found: found.relative_to(root).parts):
        relative = PurePosixPath(path.relative_to(root).as_posix())
        if glob and not (fnmatch.fnmatch(relative.name, glob) or fnmatch.fnmatch(str(relative), glob)):
            continue
        try:
            yield _file_document(path, str(path), relative.with_suffix(""))
        except InputError as error:
            # A stray non-document in a tree is reported but must not stop the walk.
            yield InputFailure(str(path), str(error))


def _visible_files(root: Path) -> Iterator[Path]:
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = [d for d in subdirs if not d.startswith(".")]
        for name in files:
            if not name.startswith("."):
                yield Path(directory) / name
