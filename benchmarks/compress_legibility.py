"""How ``docconv compress`` pages read back with Tesseract, and how fast they render, per mode
and ratio.

For each mode and ratio the same prose (the test suite's ``PROSE``: reflowing paragraphs) is
rendered; the first page's body font size, its Tesseract character error (Levenshtein distance /
reference length, whitespace collapsed, one Tesseract thread, each column read alone with
``--psm 4``: tests/compress/reading.py) and the render time per page are
printed as a Markdown table. Text tokens are counted with ``--model``'s tokenizer (default: the
tiny fixture checkpoint, about 1.5 characters per token) and, with ``--chars-per-token N``, with
a stand-in that counts one token per N characters instead, to see what a denser tokenizer gives.

    python benchmarks/compress_legibility.py [--model DIR] [--chars-per-token 4] [--modes tiny large] [--ratios 3 10 20]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from docconv.compress import render_text  # noqa: E402
from docconv.engines import text_token_counter  # noqa: E402
from docconv.engines.base import EngineOptions  # noqa: E402
from tests.compress.reading import character_error, column_starts  # noqa: E402
from tests.compress.texts import PROSE  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default=str(REPO.parent / "shared/fixtures/deepseek-ocr-parity/models/seed15")
    )
    parser.add_argument("--chars-per-token", type=float, default=None)
    parser.add_argument("--modes", nargs="+", default=["tiny", "small", "base", "large"])
    parser.add_argument("--ratios", nargs="+", type=float, default=[3, 10, 20])
    args = parser.parse_args()
    os.environ["OMP_THREAD_LIMIT"] = "1"
    if args.chars_per_token:
        per = args.chars_per_token

        def count(text: str) -> int:
            return max(1, round(len(text) / per))

        counter = f"1 token per {per:g} characters"
    else:
        count = text_token_counter(EngineOptions(model=args.model))
        counter = f"tokenizer of {args.model}"
    print(f"text tokens: {counter}\n")
    print(
        "| mode | ratio | pages | page ratio | characters | columns | font (px) | legible "
        "| Tesseract CER | render s/page |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for mode in args.modes:
        for ratio in args.ratios:
            started = time.perf_counter()
            pages = render_text(PROSE, mode=mode, ratio=ratio, count_tokens=count)
            per_page = (time.perf_counter() - started) / len(pages)
            page = pages[0]
            cells = [mode, f"{ratio:g}", len(pages), f"{page.ratio:.2f}", len(page.text)]
            cells += [len(column_starts(page)), f"{page.font_size:.1f}", "yes" if page.legible else "no"]
            cells += [f"{character_error(page):.4f}", f"{per_page:.2f}"]
            print("| " + " | ".join(str(cell) for cell in cells) + " |", flush=True)


if __name__ == "__main__":
    main()
