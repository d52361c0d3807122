"""Blocks -> Markdown, the way a person would write the page by hand.

Decisions (documented in docs/output-schema.md, "Markdown conventions"):

* math: ``\\[ … \\]`` becomes ``$$ … $$`` and inline ``\\( … \\)`` becomes ``$…$`` (what
  GitHub, Obsidian, Pandoc and KaTeX render); the LaTeX inside is left untouched, so unlike
  the official ``.mmd`` ``\\coloneqq`` stays ``\\coloneqq`` (valid with mathtools and KaTeX).
* the model's text is already Markdown, so it is never escaped; only table cells are
  (``|`` would end the cell).
* line-by-line tasks (``text``, ``handwriting``) keep every line: lines inside a paragraph
  end with two spaces, Markdown's hard line break, and nothing else is changed.
* page headers, footers and page numbers are dropped unless ``keep_headers``.
"""

from __future__ import annotations

import re

from docconv.output.document import FURNITURE_TYPES, Block, Document, Page
from docconv.output.latex import convert_math, equation_body
from docconv.output.options import RenderOptions
from docconv.output.tables import render_table

#: Tasks whose output is read line by line rather than as a laid-out document.
LINE_TASKS = frozenset({"text", "handwriting"})


def equation_markdown(text: str) -> str:
    """An equation block as a display-math paragraph."""
    body = equation_body(text)
    return f"$$\n{body}\n$$" if body else ""


def _image_markdown(block: Block) -> str:
    if not block.image_path:
        return ""
    alt = " ".join((block.caption or "").split()).replace("[", "\\[").replace("]", "\\]")
    target = f"<{block.image_path}>" if re.search(r"[\s()<>]", block.image_path) else block.image_path
    return f"![{alt}]({target})"


def block_markdown(block: Block, tables_format: str = "auto", keep_headers: bool = False) -> str:
    """One block as Markdown ("" when it renders to nothing)."""
    if block.type in FURNITURE_TYPES and not keep_headers:
        return ""
    if block.type in ("title", "sub_title"):
        level = block.level or (1 if block.type == "title" else 2)
        title = " ".join(convert_math(block.text).split())
        return f"{'#' * min(level, 6)} {title}" if title else ""
    if block.type == "equation":
        return equation_markdown(block.text)
    if block.type == "table" and block.table is not None:
        return render_table(block.table, tables_format)
    if block.type == "image":
        parts = [_image_markdown(block), convert_math(block.text)]
        return "\n\n".join(part for part in parts if part)
    return convert_math(block.text)


def blocks_markdown(blocks: list[Block], tables_format: str = "auto", keep_headers: bool = False) -> str:
    """Blocks separated by blank lines."""
    parts = (block_markdown(block, tables_format, keep_headers) for block in blocks)
    return "\n\n".join(part for part in parts if part.strip())


def line_by_line_markdown(blocks: list[Block], tables_format: str = "auto") -> str:
    """Plain OCR text keeping every line break (two trailing spaces = Markdown hard break)."""
    parts = []
    for block in blocks:
        if block.type == "table" and block.table is not None:
            parts.append(render_table(block.table, tables_format))
        elif block.text.strip():
            parts.append("  \n".join(line.rstrip() for line in block.text.strip("\n").split("\n")))
    return "\n\n".join(parts)


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
    """The whole document as Markdown, pages joined by ``options.page_separator``."""
    parts: list[str] = []
    for index, page in enumerate(doc.pages):
        if index:
            parts.append(_separator(options, page))
        parts.append(render_page_markdown(page, options).strip("\n"))
    return "".join(parts).strip("\n") + "\n"
