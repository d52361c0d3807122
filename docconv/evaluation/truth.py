"""Ground truth: which page images to read and the text each one holds.

Three sources, each page an image plus its text:

* a ``docconv compress`` manifest (``manifest.json``, or a directory holding manifests): its
  pages' images, texts and text-token counts, images relative to the manifest's directory;
* a PDF with a text layer: each page rendered for the mode, its text layer as the truth;
* an image with a sidecar ``<stem>.txt`` or ``<stem>.md`` next to it.

Pages whose truth has no words cannot be scored (precision divides by the truth's words) and
are skipped with a warning; a source that cannot be used at all is a failure that names the
file and the fix, and the other sources are still scored.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from PIL import Image

from docconv.run.journal import file_identity
from docconv.sources.inputs import InputError, document_at
from docconv.sources.pages import dpi_for, open_document

MANIFEST_NAME = "manifest.json"
#: The manifest versions this reader understands (``docconv compress`` writes version 1).
MANIFEST_VERSIONS = (1,)
SIDECAR_SUFFIXES = (".txt", ".md")


@dataclass(frozen=True)
class TruthPage:
    """One page to read back: where its image comes from and the text it holds."""

    source: str  # the manifest, PDF or image it was listed in, as found
    number: int  # 1-based page number within ``source``
    image: Path  # the page image, or the PDF the page is rendered from
    text: str
    text_tokens: int | None  # from the manifest; None: count with the model's tokenizer
    pdf_index: int | None = None  # 0-based page of ``image`` when it is a PDF

    @cached_property
    def key(self) -> str:
        """Identity of this page's image and truth: a journal entry for another page never matches."""
        identity = f"{file_identity(self.image)}|{self.pdf_index}|{self.text}"
        return hashlib.sha256(identity.encode("utf-8")).hexdigest()[:24]

    @property
    def image_page(self) -> int:
        """The page's number within ``image`` (what a conversion of that file records): 1 for an image."""
        return 1 if self.pdf_index is None else self.pdf_index + 1

    def render(self, mode: str) -> Image.Image:
        """The page as an RGB image for ``mode`` (PDF pages at the DPI the mode needs)."""
        pages = open_document(document_at(self.image))
        try:
            if self.pdf_index is None:
                return pages.render(0, None)
            width, height = pages.page_size_points(self.pdf_index)
            return pages.render(self.pdf_index, dpi_for(mode, width, height))
        finally:
            pages.close()


@dataclass(frozen=True)
class TruthProblem:
    """A source or page that cannot be scored; ``fatal`` ones make the run exit 1."""

    source: str
    message: str
    fatal: bool = True


@dataclass
class Truth:
    pages: list[TruthPage]
    problems: list[TruthProblem]


def load_truth(paths: list[str]) -> Truth:
    """Every scoreable page of the given manifests, PDFs, sidecar images and directories of them."""
    truth = Truth([], [])
    for given in paths:
        for item in _expand(Path(given)):
            (truth.pages if isinstance(item, TruthPage) else truth.problems).append(item)
    return truth


def _expand(path: Path) -> Iterator[TruthPage | TruthProblem]:
    if path.is_dir():
        yield from _directory(path)
    elif not path.exists():
        yield TruthProblem(str(path), "no such file or directory; check the path")
    elif path.suffix.lower() == ".json":
        yield from _manifest(path)
    elif path.suffix.lower() in SIDECAR_SUFFIXES:
        yield TruthProblem(str(path), "a text file is the truth of an image: give the image next to it")
    else:
        yield from _document(path)


def _directory(root: Path) -> Iterator[TruthPage | TruthProblem]:
    """A directory's manifests when it has any (compress output), else its PDFs and sidecar images."""
    manifests = sorted(root.rglob(MANIFEST_NAME), key=lambda found: found.relative_to(root).parts)
    if manifests:
        for manifest in manifests:
            yield from _manifest(manifest)
        return
    files = sorted((p for p in root.rglob("*") if p.is_file() and not _hidden(p, root)), key=str)
    for path in files:
        if path.suffix.lower() not in SIDECAR_SUFFIXES:
            yield from _document(path)


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


# ---------------------------------------------------------------- compress manifests


def _manifest(path: Path) -> Iterator[TruthPage | TruthProblem]:
    source = str(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        yield TruthProblem(source, f"not a readable JSON manifest ({error}); run `docconv compress` again")
        return
    problem = _manifest_problem(data)
    if problem:
        yield TruthProblem(source, problem)
        return
    for number, entry in enumerate(data["pages"], start=1):
        yield _manifest_page(path, number, entry)


def _manifest_problem(data: Any) -> str | None:
    if not isinstance(data, dict) or not isinstance(data.get("pages"), list):
        return "not a docconv compress manifest (no 'pages' list); give the manifest.json compress wrote"
    if data.get("version") not in MANIFEST_VERSIONS:
        return f"manifest version {data.get('version')!r} is not one this docconv reads; update docconv"
    return None


def _manifest_page(path: Path, number: int, entry: Any) -> TruthPage | TruthProblem:
    where = f"{path} page {number}"
    if (
        not isinstance(entry, dict)
        or not isinstance(entry.get("image"), str)
        or not isinstance(entry.get("text"), str)
    ):
        return TruthProblem(where, "entry without 'image' and 'text'; run `docconv compress` again")
    image = path.parent / entry["image"]
    if not image.is_file():
        return TruthProblem(where, f"its image {image} is missing; run `docconv compress` again")
    tokens = entry.get("text_tokens")
    counted = tokens if isinstance(tokens, int) and not isinstance(tokens, bool) and tokens >= 0 else None
    return _scoreable(TruthPage(str(path), number, image, entry["text"], counted))


# ---------------------------------------------------------------- PDFs and sidecar images


def _document(path: Path) -> Iterator[TruthPage | TruthProblem]:
    try:
        document = document_at(path)
    except InputError as error:
        yield TruthProblem(str(path), str(error))
        return
    if document.is_pdf:
        yield from _pdf(path)
    else:
        yield _sidecar_image(path)


def _pdf(path: Path) -> Iterator[TruthPage | TruthProblem]:
    try:
        pages = open_document(document_at(path))
    except InputError as error:
        yield TruthProblem(str(path), str(error))
        return
    try:
        texts = [pages.text_layer(index) for index in range(pages.page_count)]
    finally:
        pages.close()
    if not any(texts):
        yield TruthProblem(str(path), "no text layer, so no ground truth; give an image with a sidecar .txt")
        return
    for index, text in enumerate(texts):
        if text is None:
            yield TruthProblem(f"{path} page {index + 1}", "no text layer; skipped", fatal=False)
        else:
            yield _scoreable(TruthPage(str(path), index + 1, path, text, None, pdf_index=index))


def _sidecar_image(path: Path) -> TruthPage | TruthProblem:
    for suffix in SIDECAR_SUFFIXES:
        sidecar = path.with_suffix(suffix)
        if sidecar.is_file():
            try:
                text = sidecar.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as error:
                return TruthProblem(str(sidecar), f"cannot read the ground truth ({error}); save it as UTF-8")
            return _scoreable(TruthPage(str(path), 1, path, text, None))
    names = " or ".join(path.with_suffix(suffix).name for suffix in SIDECAR_SUFFIXES)
    return TruthProblem(str(path), f"no ground truth next to it; write its text to {names}")


def _scoreable(page: TruthPage) -> TruthPage | TruthProblem:
    if page.text.split():
        return page
    return TruthProblem(
        f"{page.source} page {page.number}", "its ground truth is empty; skipped", fatal=False
    )
