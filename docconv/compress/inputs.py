"""What ``docconv compress`` renders: the text of a text or Markdown file, stdin, or a PDF's text
layer, with the name its outputs go under."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pymupdf

from docconv.sources.inputs import STDIN, InputError, sniff_type

#: Files with these suffixes are plain text (their line breaks kept); every other text input,
#: stdin included (``docconv convert`` writes Markdown), is read as Markdown.
PLAIN_SUFFIXES = frozenset({".txt", ".text"})
#: The name stdin's outputs go under when several inputs share ``-o DIR``.
STDIN_NAME = "stdin"


@dataclass(frozen=True)
class TextInput:
    """One input's text, whether it is Markdown, and the name of its output directory."""

    source: str  # the path as given, or "-"
    name: str  # its output directory's name when there are several inputs
    text: str
    markdown: bool


def read_input(given: str, markdown: bool | None = None, stdin: BinaryIO | None = None) -> TextInput:
    """The text of one input; ``markdown`` None decides by kind and suffix (:data:`PLAIN_SUFFIXES`).

    Raises :class:`~docconv.sources.inputs.InputError` with a message that says what to do.
    """
    if given == STDIN:
        data = (stdin if stdin is not None else sys.stdin.buffer).read()
        name, suffix = STDIN_NAME, ""
    else:
        path = Path(given)
        if path.is_dir():
            raise InputError("is a directory; name the text, Markdown or PDF files in it")
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise InputError("no such file; check the path") from None
        except OSError as error:
            raise InputError(f"cannot read file ({error.strerror}); check its permissions") from None
        name, suffix = path.stem, path.suffix.lower()
    if _is_pdf(data):
        return TextInput(given, name, _pdf_text(data), markdown=bool(markdown))
    text = _decode(data)
    if not text.strip():
        raise InputError("no text to render (the input is empty or only whitespace)")
    return TextInput(given, name, text, suffix not in PLAIN_SUFFIXES if markdown is None else markdown)


def output_names(inputs: Iterable[TextInput]) -> list[str]:
    """Each input's output directory name: its stem, made unique by ``-2``, ``-3``... in order."""
    taken: set[str] = set()
    names = []
    for item in inputs:
        name, number = item.name, 1
        while name in taken:
            number += 1
            name = f"{item.name}-{number}"
        taken.add(name)
        names.append(name)
    return names


def _is_pdf(data: bytes) -> bool:
    try:
        return sniff_type(data[:1024]) == "pdf"
    except InputError:
        return False


def _decode(data: bytes) -> str:
    if b"\0" in data[:1024]:
        raise InputError("binary content, not text; give a UTF-8 text or Markdown file, or a PDF")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise InputError(
            f"not UTF-8 text (byte {error.start}); convert it first, e.g. `iconv -t UTF-8`"
        ) from None
    # One line-break convention, so spans index the text the pages show.
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _pdf_text(data: bytes) -> str:
    """The PDF's text layer, page after page."""
    try:
        with pymupdf.open("pdf", data) as document:
            if document.needs_pass:
                raise InputError("the PDF is encrypted; decrypt it first (e.g. `qpdf --decrypt`)")
            text = "\n".join(page.get_text() for page in document)
    except (pymupdf.FileDataError, RuntimeError) as error:
        raise InputError(f"cannot open the PDF ({error}); check that the file is complete") from None
    if not text.strip():
        raise InputError("the PDF has no text layer (a scan?); run `docconv` on it to get its text first")
    return text
