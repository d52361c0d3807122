"""How ``docconv compress`` pages read back with Tesseract, and how fast they render, per mode
and ratio.

For each mode and ratio the same prose (the test suite's ``PROSE``: reflowing paragraphs) is
rendered; the first page's body font size, its Tesseract character error (Levenshtein distance /
reference length, whitespace collapsed, one Tesseract thread, ``--psm 4``) and the render time per page are
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

import pytesseract
from rapidfuzz.distance import Levenshtein

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from docconv.compress import render_text  # noqa: E402
from docconv.engines import text_token_counter  # noqa: E402
from docconv.engines.base import EngineOptions  # noqa: E402
from tests.compress.texts import PROSE  # noqa: E402


def character_error(page) -> float:
    reference = " ".join(page.text.split())
    # psm 4, one column: Tesseract's automatic segmentation splits ragged-right prose into false
    # columns. Multi-column pages are read across their columns, so they score badly here.
    read = " ".join(pytesseract.image_to_string(page.image, lang="eng", config="--psm 4").split())
    return Levenshtein.distance(reference, read) / len(reference)


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
        "| mode | ratio | pages | page ratio | characters | font (px) | legible | Tesseract CER | render s/page |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for mode in args.modes:
        for ratio in args.ratios:
            started = time.perf_counter()
            pages = render_text(PROSE, mode=mode, ratio=ratio, count_tokens=count)
            per_page = (time.perf_counter() - started) / len(pages)
            page = pages[0]
            print(
                f"| {mode} | {ratio:g} | {len(pages)} | {page.ratio:.2f} | {len(page.text)} | {page.font_size:.1f} "
                f"| {'yes' if page.legible else 'no'} | {character_error(page):.4f} | {per_page:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
