"""The Fox benchmark's precision and normalized edit distance, on cases computed by hand."""

from __future__ import annotations

import random
import re

import jieba
import nltk
import pytest
from nltk.metrics import precision as nltk_precision

from docconv.evaluation import metrics
from docconv.evaluation.metrics import normalized_edit_distance, precision, score


def test_english_precision_is_the_share_of_distinct_truth_words_found() -> None:
    # truth words {the, cat, sat, on, mat}: the output has 4 of the 5 ("the" twice counts once)
    assert precision("the cat sat on the mat", "the cat sat on a hat") == pytest.approx(4 / 5)


def test_edit_distance_is_levenshtein_over_the_longer_text() -> None:
    # common prefix "the cat sat on ", then "the mat" -> "a hat": delete t, h; e->a; m->h = 4 edits
    assert normalized_edit_distance("the cat sat on the mat", "the cat sat on a hat") == pytest.approx(4 / 22)


def test_words_are_compared_as_sets() -> None:
    assert precision("a a a b", "a") == pytest.approx(1 / 2)
    assert precision("a b", "b b b b") == pytest.approx(1 / 2)


def test_extra_output_words_do_not_lower_precision_but_do_raise_the_edit_distance() -> None:
    assert precision("alpha beta", "alpha beta gamma delta") == 1.0
    assert normalized_edit_distance("alpha beta", "alpha beta gamma delta") == pytest.approx(12 / 22)


def test_no_normalisation_beyond_whitespace() -> None:
    # case and attached punctuation make different words: {"Hello,", "world."} vs {"hello", "world"}
    assert precision("Hello, world.", "hello world") == 0.0
    # runs of whitespace and newlines only separate words ...
    assert precision("a  b\nc", "a b c") == 1.0
    # ... but they are characters to the edit distance: drop one space, "\n" -> " "
    assert normalized_edit_distance("a  b\nc", "a b c") == pytest.approx(2 / 6)


def test_chinese_text_is_segmented_into_words_with_jieba() -> None:
    # jieba: 我 / 爱 / 北京 / 天安门; the output has three of the four words
    assert precision("我爱北京天安门", "我爱北京") == pytest.approx(3 / 4)
    # seven characters against four: three deletions
    assert normalized_edit_distance("我爱北京天安门", "我爱北京") == pytest.approx(3 / 7)


def test_chinese_in_either_text_segments_both_and_spaces_become_words() -> None:
    # jieba keeps the space: truth {hello, " ", world}; output {hello, " ", 世界}
    assert precision("hello world", "hello 世界") == pytest.approx(2 / 3)


def test_a_truth_without_words_cannot_be_scored() -> None:
    assert precision(" \n", "anything") is None
    assert score("", "anything") is None
    assert normalized_edit_distance("", "") == 0.0
    assert normalized_edit_distance("abc", "") == 1.0


def test_a_perfect_reading() -> None:
    assert score("one two three", "one two three") == metrics.Scores(precision=1.0, edit_distance=0.0)


def test_chinese_without_jieba_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(__import__("sys").modules, "jieba", None)
    metrics._jieba_segmenter.cache_clear()
    try:
        with pytest.raises(metrics.MissingSegmenter, match=r"pip install 'docconv\[eval\]'"):
            precision("北京", "北京")
        metrics.check_segmenter_for(["only English here"])  # English never needs it
    finally:
        metrics._jieba_segmenter.cache_clear()


def _fox_original(label: str, answer: str) -> tuple[float, float]:
    """The public Fox evaluation's two figures, through nltk, in the order it passes the texts."""
    pred, gt = label, answer  # cal_per_metrics(predict_root_, ann["label"], ann["answer"])
    if re.search(r"[\u4e00-\u9fa5]", gt) or re.search(r"[\u4e00-\u9fa5]", pred):
        reference, hypothesis = jieba.lcut(gt), jieba.lcut(pred)
    else:
        reference, hypothesis = gt.split(), pred.split()
    return nltk_precision(set(reference), set(hypothesis)), nltk.edit_distance(pred, gt) / max(
        len(pred), len(gt)
    )


def test_the_figures_equal_the_fox_evaluation_code_on_random_texts() -> None:
    rng = random.Random(17)
    vocabulary = ["the", "cat", "sat", "on", "mat", "Hello,", "world.", "北京", "我", "爱", "a", "\n", "  "]
    for _ in range(200):
        truth = " ".join(rng.choice(vocabulary) for _ in range(rng.randint(1, 12)))
        output = " ".join(rng.choice(vocabulary) for _ in range(rng.randint(0, 12)))
        if score(truth, output) is None:
            continue
        expected_precision, expected_distance = _fox_original(truth, output)
        assert precision(truth, output) == pytest.approx(expected_precision), (truth, output)
        assert normalized_edit_distance(truth, output) == pytest.approx(expected_distance), (truth, output)
