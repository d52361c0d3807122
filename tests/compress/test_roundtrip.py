"""The layout loses no text: the rendered PDF's text layer holds exactly the input's text.

"Exactly" means: for plain text, the same words in the same order (line breaks and runs of spaces
are layout); for Markdown, the same words as its text content (what markdown-it parses out of
it: inline text, code spans, code blocks, table cells; not the syntax around them). List markers
the layout draws (bullets, item numbers) are not source text and are dropped before comparing.
CJK text has no spaces to delimit words and wraps between any two characters, so there the
characters must match in order with whitespace removed. The PDF's ligature glyphs (fi, fl) are
read back as their letters, as PDF readers do. The layout breaks lines after a hyphen
("forty-|two") but never adds one, so a line ending in a hyphen continues on the next.
"""

from __future__ import annotations

import re

import pymupdf
import pytest
from markdown_it import MarkdownIt

from docconv.compress import pdf_bytes, render_text
from tests.compress.texts import LONG_MARKDOWN, PROSE

ACCENTED = "".join(
    f"Élodie {n} a visité Ærøskøbing, Malmö et Łódź; Straße, señor, naïve façade, Øresund, "
    "crème brûlée à São Paulo, Dvořák, İstanbul, Ðakovo.\n\n"
    for n in range(40)
)
CJK = "".join(
    f"第{n}段：光学压缩把文本渲染成图像，视觉令牌比文本令牌少十倍。日本語の文章も読みます。"
    "한국어 문장도 있습니다.\n\n"
    for n in range(40)
)
TABLES = "".join(
    f"| city {n} | population | área |\n|---|---:|:---:|\n"
    + "".join(f"| Zürich {n}.{row} | {row * 1000 + n} | {row}.5 km² |\n" for row in range(12))
    + "\n"
    for n in range(6)
)
_LIST_MARKER = re.compile(r"^[ \t]*(?:•|\d+\.)[ \t]+", re.MULTILINE)


def text_layer(pdf: bytes, markdown: bool = False) -> str:
    """The PDF's text; for Markdown without the list markers the layout drew."""
    flags = pymupdf.TEXTFLAGS_TEXT & ~pymupdf.TEXT_PRESERVE_LIGATURES
    with pymupdf.open("pdf", pdf) as document:
        text = "\n".join(page.get_text(flags=flags) for page in document).replace("-\n", "-")
    return _LIST_MARKER.sub("", text) if markdown else text


def markdown_content(markdown: str) -> str:
    parts = []
    for token in MarkdownIt("commonmark").enable(["table", "strikethrough"]).parse(markdown):
        if token.type == "inline":
            parts += [_inline_text(child) for child in token.children]
            parts.append(" ")
        elif token.type in ("fence", "code_block"):
            parts.append(token.content)
    return "".join(parts)


def _inline_text(token) -> str:
    if token.type in ("text", "code_inline"):
        return token.content
    return " " if token.type in ("softbreak", "hardbreak") else ""  # emphasis marks are syntax


@pytest.mark.parametrize(
    ("name", "source", "markdown"),
    [
        ("ascii", PROSE, False),
        ("accented", ACCENTED, False),
        ("markdown", LONG_MARKDOWN, True),
        ("tables", TABLES, True),
    ],
)
def test_the_text_layer_holds_the_same_words(name, source, markdown, count_tokens):
    pages = render_text(source, mode="tiny", ratio=10, count_tokens=count_tokens, markdown=markdown)
    assert len(pages) > 1, "the text must span pages so page cuts are tested too"
    expected = markdown_content(source) if markdown else source
    assert text_layer(pdf_bytes(pages), markdown).split() == expected.split()


def test_cjk_text_comes_back_character_for_character(count_tokens):
    pages = render_text(CJK, mode="tiny", ratio=10, count_tokens=count_tokens, markdown=False)
    assert len(pages) > 1
    assert "".join(text_layer(pdf_bytes(pages)).split()) == "".join(CJK.split())


def test_a_table_cut_between_pages_stays_a_table(count_tokens):
    pages = render_text(TABLES, mode="tiny", ratio=10, count_tokens=count_tokens)
    cut = next(
        page for page in pages[1:] if not page.text.startswith("|---") and page.text.startswith("| Zürich")
    )
    with pymupdf.open("pdf", cut.pdf) as document:
        assert document[0].find_tables().tables, "the continued rows are drawn as a table"


def test_a_code_block_cut_between_pages_stays_code(count_tokens):
    code = "```python\n" + "".join(f"value_{n} = compute({n}, 'élan')\n" for n in range(300)) + "```\n"
    pages = render_text(code, mode="tiny", ratio=10, count_tokens=count_tokens)
    assert len(pages) > 2
    for page in pages:
        with pymupdf.open("pdf", page.pdf) as document:
            fonts = {font[3] for font in document[0].get_fonts()}
        assert all("Mono" in font for font in fonts), fonts
    assert text_layer(pdf_bytes(pages), markdown=True).split() == markdown_content(code).split()
