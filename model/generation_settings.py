"""How a page is read, and why reading stopped (torch-free, so a CLI can show the defaults).

:mod:`deepseek_ocr.generation` does the reading; these are its settings and their defaults,
the official single-image vLLM recipe.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

#: ``eos``: the model ended the page; ``max_tokens``: it was cut at ``max_new_tokens``.
StopReason = Literal["eos", "max_tokens"]

#: Table cells legitimately repeat; the official recipe exempts them from the repetition guard.
REPEATABLE_TOKENS: tuple[str, ...] = ("<td>", "</td>")


@dataclass(frozen=True)
class GenerationSettings:
    """How to read a page: a token limit and the repetition guard (no n-gram of ``ngram_size``
    tokens repeats within ``ngram_window`` tokens)."""

    max_new_tokens: int = 8192
    ngram_size: int = 30  # 0 disables the repetition guard
    ngram_window: int = 90
