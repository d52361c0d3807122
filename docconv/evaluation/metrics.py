"""The scores of one page: the Fox benchmark's precision and its normalized edit distance.

The definitions follow the public evaluation code of the Fox benchmark
(``ucaslcl/Fox``, ``eval_tools/eval_ocr_test.py``), which GOT-OCR2.0 reuses
(``GOT/eval/pyevaltools/eval_ocr.py``) and the DeepSeek-OCR paper's Table 2 reports. The
formulas, and the quirks they keep, are written out in ``docs/evaluation.md``:

* Words are whitespace-separated (``str.split``); when either text contains a CJK unified
  ideograph (U+4E00..U+9FA5) both are segmented with jieba instead, as the original does.
* Precision compares the *sets* of words: the share of the ground truth's distinct words that
  the output contains. (The original calls nltk's ``precision(reference, test)`` with the output
  as ``reference`` and the ground truth as ``test``, which is this quantity.)
* The normalized edit distance is the character Levenshtein distance over the longer length.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache

from rapidfuzz.distance import Levenshtein

#: The original's test for Chinese text (CJK unified ideographs, basic block).
_CHINESE = re.compile(r"[\u4e00-\u9fa5]")
#: What to install when a Chinese page needs jieba.
EVAL_EXTRA = "docconv[eval]"


class MissingSegmenter(RuntimeError):
    """A Chinese page is scored but jieba, the original's word segmenter, is not installed."""


@dataclass(frozen=True)
class Scores:
    """How well one output reads back one page's ground truth."""

    precision: float  # 0..1, higher is better
    edit_distance: float  # 0..1, lower is better


def contains_chinese(text: str) -> bool:
    return _CHINESE.search(text) is not None


def words(ground_truth: str, output: str) -> tuple[list[str], list[str]]:
    """Both texts cut into the words the metric compares (jieba when either is Chinese)."""
    if contains_chinese(ground_truth) or contains_chinese(output):
        segment = _jieba_segmenter()
        return segment(ground_truth), segment(output)
    return ground_truth.split(), output.split()


def precision(ground_truth: str, output: str) -> float | None:
    """Share of the ground truth's distinct words found in ``output``; None without ground-truth words."""
    truth_words, output_words = (set(part) for part in words(ground_truth, output))
    if not truth_words:
        return None
    return len(truth_words & output_words) / len(truth_words)


def normalized_edit_distance(ground_truth: str, output: str) -> float:
    """Levenshtein distance of the two texts (characters) divided by the longer one's length."""
    longer = max(len(ground_truth), len(output))
    if longer == 0:
        return 0.0  # two empty texts are equal (the original divides by zero here)
    return Levenshtein.distance(ground_truth, output) / longer


def score(ground_truth: str, output: str) -> Scores | None:
    """Both scores of one page, or None when the ground truth has no words to find."""
    found = precision(ground_truth, output)
    if found is None:
        return None
    return Scores(precision=found, edit_distance=normalized_edit_distance(ground_truth, output))


@cache
def _jieba_segmenter() -> Callable[[str], list[str]]:
    try:
        import jieba
    except ImportError:
        raise MissingSegmenter(
            f"scoring Chinese text needs jieba, the Fox benchmark's word segmenter: pip install '{EVAL_EXTRA}'"
        ) from None
    jieba.setLogLevel(60)  # its dictionary-loading notices would land in docconv's stderr
    return jieba.lcut


def check_segmenter_for(texts: Iterable[str]) -> None:
    """Raise :class:`MissingSegmenter` now, before a long run, if Chinese truth will need jieba."""
    if any(contains_chinese(text) for text in texts):
        _jieba_segmenter()
