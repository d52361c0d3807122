"""Blocks -> Markdown or HTML, the way a person would write the page by hand.

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

import html
import re

from docconv.document import Block
from docconv.tables import render_table

#: Block types that repeat on every page and are dropped from the text by default.
FURNITURE_TYPES = frozenset({"header", "footer", "page_number"})

#: Tasks whose output is read line by line rather than as a laid-out document.
LINE_TASKS = frozenset({"text", "handwriting"})

_DISPLAY_MATH = re.compile(r"(?<!\\)\\\[(.*?)(?<!\\)\\\]", re.DOTALL)
_INLINE_MATH = re.compile(r"(?<!\\)\\\((.*?)(?<!\\)\\\)", re.DOTALL)
_LIST_ITEM = re.compile(r"^\s*(?:[-*+•]|\d+[.)])\s+")


def convert_math(text: str) -> str:
    """LaTeX ``\\[..\\]`` / ``\\(..\\)`` delimiters -> ``$$..$$`` / ``$..$`` (the content is kept)."""
    text = _DISPLAY_MATH.sub(lambda m: f"$${m.group(1).strip()}$$", text)
    return _INLINE_MATH.sub(lambda m: f"${m.group(1).strip()}$" if m.group(1).strip() else "", text)


def equation_markdown(text: str) -> str:
    """An equation block as a display-math paragraph."""
    body = text.strip()
    match = _DISPLAY_MATH.fullmatch(body) or _INLINE_MATH.fullmatch(body)
    if match:
        body = match.group(1).strip()
    elif body.startswith("$$") and body.endswith("$$") and len(body) > 4:
        body = body[2:-2].strip()
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


# --------------------------------------------------------------------------- HTML


def _text_html(text: str) -> str:
    lines = [line for line in text.strip("\n").split("\n") if line.strip()]
    if lines and all(_LIST_ITEM.match(line) for line in lines):
        items = "".join(f"<li>{html.escape(_LIST_ITEM.sub('', line, count=1))}</li>" for line in lines)
        return f"<ul>{items}</ul>"
    return "<p>" + "<br>\n".join(html.escape(line) for line in lines) + "</p>" if lines else ""


def block_html(block: Block, keep_headers: bool = False) -> str:
    """One block as an HTML fragment; LaTeX keeps its ``\\( \\)`` delimiters for MathJax/KaTeX."""
    if block.type in FURNITURE_TYPES and not keep_headers:
        return ""
    if block.type in ("title", "sub_title"):
        level = min(block.level or (1 if block.type == "title" else 2), 6)
        return (
            f"<h{level}>{html.escape(' '.join(block.text.split()))}</h{level}>" if block.text.strip() else ""
        )
    if block.type == "equation":
        body = equation_markdown(block.text)[3:-3].strip()
        return f'<div class="equation">\\[{html.escape(body)}\\]</div>' if body else ""
    if block.type == "table" and block.table is not None:
        return block.table.html
    if block.type == "image":
        caption = html.escape(block.caption or "")
        image = f'<img src="{html.escape(block.image_path)}" alt="{caption}">' if block.image_path else ""
        text = _text_html(block.text)
        return f"<figure>{image}{text}</figure>" if image or text else ""
    return _text_html(block.text)


def blocks_html(blocks: list[Block], keep_headers: bool = False) -> str:
    parts = (block_html(block, keep_headers) for block in blocks)
    return "\n".join(part for part in parts if part)
