"""Blocks -> HTML: a fragment per block, a standalone page per document.

Math keeps its LaTeX delimiters (``\\( \\)``, ``\\[ \\]``) for MathJax or KaTeX; text is escaped; a
block whose lines are all list items becomes a list. Page furniture (headers, footers, page
numbers) is dropped unless ``keep_headers``, as in Markdown.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

from docconv.output.document import FURNITURE_TYPES, Block, Document
from docconv.output.latex import equation_body
from docconv.output.options import RenderOptions

_LIST_ITEM = re.compile(r"^\s*(?:[-*+•]|\d+[.)])\s+")


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
        body = equation_body(block.text)
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
    """Block fragments, one per line."""
    parts = (block_html(block, keep_headers) for block in blocks)
    return "\n".join(part for part in parts if part)


def render_html(doc: Document, options: RenderOptions) -> str:
    """A standalone HTML page; math keeps its LaTeX delimiters for MathJax or KaTeX."""
    sections = []
    for page in doc.pages:
        if options.task == "raw":
            body = f"<pre>{html.escape(page.raw)}</pre>"
        else:
            body = blocks_html(page.blocks, options.keep_headers)
        sections.append(f'<section class="page" data-page="{page.number}">\n{body}\n</section>')
    title = html.escape(Path(doc.source).name or doc.source)
    return (
        '<!DOCTYPE html>\n<html>\n<head>\n<meta charset="utf-8">\n'
        f"<title>{title}</title>\n</head>\n<body>\n" + "\n".join(sections) + "\n</body>\n</html>\n"
    )
