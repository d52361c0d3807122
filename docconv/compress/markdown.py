"""The one Markdown dialect of the stage: CommonMark with GFM tables and strikethrough, raw HTML
shown as text (a page renders what the text says, not markup hidden in it)."""

from __future__ import annotations

from functools import lru_cache

from markdown_it import MarkdownIt


@lru_cache(maxsize=1)
def markdown_parser() -> MarkdownIt:
    return MarkdownIt("commonmark", {"html": False}).enable(["table", "strikethrough"])
