"""Where one page's text ends: about a target number of text tokens, cut where a reader expects.

A page's text is a slice of the source. Its end is placed so the slice counts about the target
tokens (within :data:`TOLERANCE`), at the best kind of boundary that window offers: between
Markdown blocks or paragraphs, else at a line end, else between words, else (CJK, long
unbroken strings) between any two characters. A Markdown page cut inside a table or a fenced
code block gets the syntax that keeps its part a table or code (:class:`Piece`), so the page
renders as what it holds.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum

from docconv.compress.markdown import markdown_parser

#: A page's text may count this much more or fewer tokens than the target, so its end can move to
#: a paragraph, line or word boundary (the manifest promises +-10 %; this leaves room to spare).
TOLERANCE = 0.05


class Boundary(IntEnum):
    """How good a place to end a page is; higher is better."""

    CHARACTER = 0
    WORD = 1
    LINE = 2
    BLOCK = 3


@dataclass(frozen=True)
class Block:
    """A top-level Markdown block that needs syntax repeated when a page cut falls inside it."""

    start: int
    end: int
    body: int  # where its rows or code lines begin: after a table's delimiter row, a fence's opening
    reopen: str  # what a page starting inside it begins with
    close: str  # what a page ending inside it ends with


@dataclass(frozen=True)
class Piece:
    """One page's slice of the source, and what to render for it."""

    start: int
    end: int
    source: str  # the Markdown (or plain text) the page renders: the slice plus repaired syntax


def split_pages(
    text: str, target_tokens: int, count_tokens: Callable[[str], int], markdown: bool
) -> list[Piece]:
    """Cut ``text`` into consecutive slices of about ``target_tokens`` each; the last holds the rest.

    The slices cover ``text`` exactly: their concatenation is ``text``.
    """
    if target_tokens < 1:
        raise ValueError(f"a page must hold at least one text token, got a target of {target_tokens}")
    blocks = _split_sensitive_blocks(text) if markdown else []
    pieces: list[Piece] = []
    start = 0
    while start < len(text):
        end = _page_end(text, start, target_tokens, count_tokens, blocks)
        pieces.append(Piece(start, end, _repaired(text, start, end, blocks)))
        start = end
    return pieces


def _page_end(
    text: str, start: int, target: int, count_tokens: Callable[[str], int], blocks: list[Block]
) -> int:
    def tokens_to(end: int) -> int:
        return count_tokens(text[start:end])

    stop = _search_stop(text, start, target * (1 + TOLERANCE), tokens_to)
    if stop == len(text) and tokens_to(stop) <= target * (1 + TOLERANCE):
        return len(text)
    low = _last_end_within(tokens_to, start, stop, target * (1 - TOLERANCE))
    best = _last_end_within(tokens_to, start, stop, target)
    high = _last_end_within(tokens_to, start, stop, target * (1 + TOLERANCE))
    return max(
        range(low, high + 1), key=lambda end: (_boundary(text, end, blocks), -abs(end - best)), default=best
    )


def _search_stop(text: str, start: int, budget: float, tokens_to: Callable[[int], int]) -> int:
    """An end beyond which the page surely cannot reach, found by doubling a guess of a few
    characters per token, so a page's search never tokenizes the whole rest of a long document."""
    reach = max(int(budget) * 4, 64)
    while start + reach < len(text) and tokens_to(start + reach) <= budget:
        reach *= 2
    return min(start + reach, len(text))


def _last_end_within(tokens_to: Callable[[int], int], start: int, stop: int, budget: float) -> int:
    """The largest end in ``(start, stop]`` whose slice counts at most ``budget`` tokens (binary
    search; token counts grow with the slice up to BPE merges at its very end). At least one
    character, so a page always advances."""
    low, high = start + 1, stop
    while low < high:
        middle = (low + high + 1) // 2
        if tokens_to(middle) <= budget:
            low = middle
        else:
            high = middle - 1
    return low


def _boundary(text: str, end: int, blocks: list[Block]) -> Boundary:
    """How good it is to end a page just before ``text[end]``; pages end after whitespace."""
    if end >= len(text):
        return Boundary.BLOCK
    before = text[end - 1]
    if not before.isspace() or text[end].isspace():
        return Boundary.CHARACTER
    inside = _block_at(end, blocks)
    if inside is not None and end < inside.body:
        return Boundary.CHARACTER  # a table's header without its delimiter row would be no table
    if before == "\n":
        blank_line_before = text.endswith("\n\n", 0, end)
        return Boundary.BLOCK if blank_line_before and inside is None else Boundary.LINE
    # Between words inside a table row or a code line is no place to end a page.
    return Boundary.CHARACTER if inside is not None else Boundary.WORD


def _block_at(position: int, blocks: list[Block]) -> Block | None:
    """The table or fence that ``position`` lies strictly inside, if any."""
    return next((block for block in blocks if block.start < position < block.end), None)


def _repaired(text: str, start: int, end: int, blocks: list[Block]) -> str:
    """The slice, with a table's header or a fence's opening repeated at its start and a fence
    closed at its end, where the slice cuts through them."""
    opened = _block_at(start, blocks)
    closed = _block_at(end, blocks)
    head = opened.reopen if opened is not None else ""
    tail = closed.close if closed is not None else ""
    return head + text[start:end] + tail


_LINE_START = re.compile(r"^", re.MULTILINE)


def _split_sensitive_blocks(text: str) -> list[Block]:
    """Top-level tables and fenced code blocks, with the syntax that re-opens and closes them."""
    line_starts = [match.start() for match in _LINE_START.finditer(text)] + [len(text)]
    blocks = []
    for token in markdown_parser().parse(text):
        if token.level != 0 or token.map is None or token.nesting == -1:
            continue
        first, last = token.map
        start, end = line_starts[first], line_starts[min(last, len(line_starts) - 1)]
        if token.type == "fence":
            fence = token.markup
            body = line_starts[first + 1]
            blocks.append(Block(start, end, body, f"{fence}{token.info}\n", f"\n{fence}\n"))
        elif token.type == "table_open":
            delimiter = text[line_starts[first + 1] : line_starts[first + 2]]
            columns = len(delimiter.strip().strip("|").split("|"))
            # An empty header row: the page's rows stay a table and no text is repeated.
            reopen = "|" + " |" * columns + "\n" + delimiter.rstrip("\n") + "\n"
            blocks.append(Block(start, end, line_starts[first + 2], reopen, ""))
    return blocks
