"""LaTeX math in the model's text: its delimiters, and the body of an equation block."""

from __future__ import annotations

import re

_DISPLAY_MATH = re.compile(r"(?<!\\)\\\[(.*?)(?<!\\)\\\]", re.DOTALL)
_INLINE_MATH = re.compile(r"(?<!\\)\\\((.*?)(?<!\\)\\\)", re.DOTALL)


def convert_math(text: str) -> str:
    """LaTeX ``\\[..\\]`` / ``\\(..\\)`` delimiters -> ``$$..$$`` / ``$..$`` (the content is kept)."""
    text = _DISPLAY_MATH.sub(lambda m: f"$${m.group(1).strip()}$$", text)
    return _INLINE_MATH.sub(lambda m: f"${m.group(1).strip()}$" if m.group(1).strip() else "", text)


def equation_body(text: str) -> str:
    """The LaTeX of an equation block without its delimiters (``\\[ \\]``, ``\\( \\)`` or ``$$``)."""
    body = text.strip()
    match = _DISPLAY_MATH.fullmatch(body) or _INLINE_MATH.fullmatch(body)
    if match:
        return match.group(1).strip()
    if body.startswith("$$") and body.endswith("$$") and len(body) > 4:
        return body[2:-2].strip()
    return body
