"""The memory tests count text tokens with the tiny checkpoint's tokenizer, as the compress tests do,
and render their texts once per session (rendering is the slow part of an add)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from docconv.compress import RenderedPage, render_text
from docconv.memory import OpticalMemory
from tests.compress.conftest import count_tokens  # noqa: F401 - the shared session fixture

#: One conversation round: a page at the default first level (large) and ratio.
ROUND = (
    "User: Which three cities did we shortlist for the meeting, and why?\n\n"
    "Assistant: Lisbon, because flights from both offices are direct and cheap; Krakow, because the "
    "venue offered the lowest price per day; and Tallinn, because two speakers already live there. "
    "We ruled out Vienna on price and Oslo on travel time."
)


@pytest.fixture(scope="session")
def round_pages(count_tokens: Callable[[str], int]) -> list[RenderedPage]:  # noqa: F811
    return render_text(ROUND, mode="large", ratio=4.0, count_tokens=count_tokens)


@pytest.fixture
def open_memory(tmp_path: Path, count_tokens: Callable[[str], int]) -> Callable[..., OpticalMemory]:  # noqa: F811
    """``open_memory(**options)``: an OpticalMemory in a fresh directory, counting with the tiny tokenizer."""
    opened = []

    def make(path: Path | None = None, **options) -> OpticalMemory:
        memory = OpticalMemory(path or tmp_path / "store", count_tokens=count_tokens, **options)
        opened.append(memory)
        return memory

    yield make
    for memory in opened:
        memory.close()
