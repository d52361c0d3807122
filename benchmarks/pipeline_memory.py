"""Peak RSS of ``docconv`` on a generated 300-page PDF versus a 10-page one.

The pipeline renders and reads one page (batch) at a time, so peak memory must not grow
with document length: the issue's bar is the 300-page run staying within 200 MB of the
10-page run. Each conversion is a fresh ``python -m docconv`` process and its peak RSS is
the kernel's own figure for that child (``os.wait4`` rusage), so short peaks are not missed.

    python benchmarks/pipeline_memory.py --model PATH/TO/CHECKPOINT [--pages 10 300] [--mode tiny] [--dpi 144]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pymupdf

LIMIT_MB = 200
LINES_PER_PAGE = 40


def make_text_pdf(path: Path, pages: int) -> Path:
    """A born-digital PDF of A4 pages full of text lines (a text layer and real glyphs to render)."""
    pdf = pymupdf.open()
    for number in range(1, pages + 1):
        page = pdf.new_page(width=595, height=842)
        for line in range(LINES_PER_PAGE):
            page.insert_text((50, 60 + 18 * line), f"Page {number}, line {line}: the quick brown fox jumps.")
    pdf.save(path)
    pdf.close()
    return path


def peak_rss_mb(command: list[str]) -> tuple[float, float, int]:
    """Run ``command``; return (peak RSS in MB, wall seconds, exit code)."""
    started = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        sys.stderr.write(process.stderr.read().decode(errors="replace") if process.stderr else "")
    return usage.ru_maxrss / 1024, time.monotonic() - started, process.returncode  # ru_maxrss is KiB on Linux


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="checkpoint directory or hub id")
    parser.add_argument("--pages", type=int, nargs="+", default=[10, 300])
    # Tiny mode and few tokens keep the model's share of the run small; --dpi 144 (the official PDF
    # script's resolution) still renders full-size A4 pages, which is where document length could leak.
    parser.add_argument("--mode", default="tiny")
    parser.add_argument("--dpi", type=int, default=144)
    parser.add_argument("--max-tokens", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    results: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for pages in args.pages:
            pdf = make_text_pdf(Path(scratch) / f"doc{pages}.pdf", pages)
            command = [
                sys.executable,
                "-m",
                "docconv",
                str(pdf),
                "-o",
                str(Path(scratch) / f"out{pages}.md"),
                "--model",
                args.model,
                "--device",
                args.device,
                "--mode",
                args.mode,
                "--dpi",
                str(args.dpi),
                "--max-tokens",
                str(args.max_tokens),
                "--quiet",
            ]
            rss, seconds, code = peak_rss_mb(command)
            if code != 0:
                print(f"{pages} pages: docconv exited {code}")
                return code
            results[pages] = rss
            print(f"{pages:>5} pages: peak RSS {rss:8.1f} MB, {seconds:6.1f} s")
    growth = results[max(results)] - results[min(results)]
    verdict = "within" if growth <= LIMIT_MB else "OVER"
    print(
        f"growth {min(results)} -> {max(results)} pages: {growth:+.1f} MB ({verdict} the {LIMIT_MB} MB bar)"
    )
    return 0 if growth <= LIMIT_MB else 1


if __name__ == "__main__":
    sys.exit(main())
