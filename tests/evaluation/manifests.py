"""Ground truth for the eval tests: compress-style manifests written here, pages drawn with Pillow.

The manifest has the schema ``docconv compress`` writes (docs/evaluation.md), so these tests do
not depend on the compress command; an end-to-end test checks the two together.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw

from deepseek_ocr.modes import MODES


def page_image(path: Path, text: str, side: int) -> Path:
    """A white square page with ``text`` drawn in Pillow's default font, wrapped by words."""
    image = Image.new("RGB", (side, side), "white")
    draw = ImageDraw.Draw(image)
    words, lines, line = text.split(), [], ""
    for word in words:
        if len(line) + len(word) > side // 7:
            lines.append(line)
            line = ""
        line = f"{line} {word}".strip()
    draw.multiline_text((8, 8), "\n".join([*lines, line]), fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def write_manifest(
    directory: Path, pages: Sequence[tuple[str, int | None]], mode: str = "small", version: int = 1
) -> Path:
    """``directory/manifest.json`` listing one drawn page per (text, text tokens) in ``pages``."""
    side = MODES[mode].image_size
    entries = []
    offset = 0
    for number, (text, tokens) in enumerate(pages, start=1):
        name = f"page_{number:04d}.png"
        page_image(directory / name, text, side)
        entry = {"image": name, "text": text, "span": [offset, offset + len(text)], "vision_tokens": 100}
        if tokens is not None:
            entry |= {"text_tokens": tokens, "ratio": tokens / 100}
        entries.append(entry | {"font_size": 10, "legible": True})
        offset += len(text)
    manifest = {
        "version": version,
        "mode": mode,
        "ratio_target": 10,
        "model": "test",
        "source": "test.md",
        "pages": entries,
        "totals": {"pages": len(entries)},
    }
    path = directory / "manifest.json"
    path.write_text(json.dumps(manifest, ensure_ascii=False, indent=1), encoding="utf-8")
    return path
