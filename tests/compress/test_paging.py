"""Page cuts: at the token target, at the best boundary in reach, Markdown kept whole across a cut.

Tokens are counted here as characters (``len``): paging takes any counter, and with this one the
expected cut positions can be worked out by hand.
"""

from __future__ import annotations

import pytest
from markdown_it import MarkdownIt

from docconv.compress.paging import TOLERANCE, split_pages

PARAGRAPH = "word " * 19 + "end\n\n"  # 100 characters


def block_types(markdown: str) -> list[str]:
    return [
        token.type for token in MarkdownIt("commonmark").enable("table").parse(markdown) if token.level == 0
    ]


def test_pages_end_after_a_paragraph_when_one_is_in_reach():
    text = PARAGRAPH * 10
    pieces = split_pages(text, 300, len, markdown=True)
    # 300 +- 5 % reaches exactly one paragraph end (300); cuts land there, not mid-paragraph.
    assert [piece.end for piece in pieces] == [300, 600, 900, 1000]
    assert "".join(text[piece.start : piece.end] for piece in pieces) == text


def test_without_a_paragraph_end_in_reach_the_cut_is_at_a_word_closest_to_the_target():
    text = "abcd " * 200
    pieces = split_pages(text, 333, len, markdown=False)
    for piece in pieces[:-1]:
        assert text[piece.end - 1] == " " and text[piece.end] != " "
        assert abs((piece.end - piece.start) - 333) <= 333 * TOLERANCE


def test_text_without_spaces_is_cut_between_characters():
    text = "光" * 1000
    pieces = split_pages(text, 250, len, markdown=False)
    assert [piece.end - piece.start for piece in pieces] == [250, 250, 250, 250]


def test_a_table_cut_repeats_its_delimiter_under_an_empty_header():
    rows = "".join(f"| r{n} | {n} |\n" for n in range(60))
    text = "| name | value |\n|:---|---:|\n" + rows
    pieces = split_pages(text, 200, len, markdown=True)
    assert len(pieces) > 3
    for piece in pieces:
        assert block_types(piece.source)[0] == "table_open", piece.source[:60]
        assert not text[piece.start :].startswith("|:---")  # never cut between header and delimiter
    for piece in pieces[1:]:
        assert piece.source.startswith("| | |\n|:---|---:|\n| r")


def test_a_fence_cut_closes_and_reopens_the_code_block():
    text = "```python\n" + "".join(f"x_{n} = {n}\n" for n in range(80)) + "```\n\nAfter.\n"
    pieces = split_pages(text, 150, len, markdown=True)
    assert len(pieces) > 3
    for piece in pieces[:-1]:
        assert block_types(piece.source) == ["fence"], piece.source
    assert block_types(pieces[-1].source)[0] == "fence"
    assert all(piece.source.startswith("```python\n") for piece in pieces)


def test_a_target_below_one_token_is_refused():
    with pytest.raises(ValueError, match="at least one text token"):
        split_pages("text", 0, len, markdown=False)
