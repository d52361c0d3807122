"""Raw model text -> blocks: labels, boxes, tables, loops, truncation, plain output."""

from __future__ import annotations

from pathlib import Path

import pytest

from docconv.output.document import Block, Page
from docconv.output.latex import convert_math
from docconv.output.markdown import block_markdown, equation_markdown, render_page_markdown
from docconv.output.options import RenderOptions
from docconv.output.postprocess import (
    REASON_BOX,
    REASON_LOOP,
    REASON_TRUNCATED,
    cut_repetition_loop,
    parse_boxes,
    parse_page,
    split_raw_pages,
)


def record(label: str, box: str, content: str = "") -> str:
    return f"<|ref|>{label}<|/ref|><|det|>{box}<|/det|>\n{content}\n\n"


def markdown_of(raw: str, **options: object) -> str:
    page = Page(number=1, width=1000, height=2000, raw=raw, blocks=parse_page(raw, 1000, 2000).blocks)
    return render_page_markdown(page, RenderOptions(**options))  # type: ignore[arg-type]


def test_labels_become_block_types_and_unknown_labels_stay_text() -> None:
    raw = (
        record("title", "[[0, 0, 999, 50]]", "# Report")
        + record("sub_title", "[[0, 60, 999, 90]]", "### 1.2 Scope")
        + record("weird_label", "[[0, 100, 999, 200]]", "Body")
    )
    blocks = parse_page(raw, 999, 999).blocks
    assert [(b.type, b.label, b.level, b.text) for b in blocks] == [
        ("title", "title", 1, "Report"),
        ("sub_title", "sub_title", 3, "1.2 Scope"),
        ("text", "weird_label", 0, "Body"),
    ]


def test_boxes_are_scaled_by_999_and_clamped_to_the_page() -> None:
    boxes, dropped = parse_boxes("[[0, 0, 999, 999], [500, 250, 1000, 1000]]", 1487, 2105)
    assert boxes == [(0, 0, 1487, 2105), (744, 526, 1487, 2105)]
    assert not dropped
    # the web-UI that produced cloudman6__sample.json computed the same pixels
    assert parse_boxes("[[58, 33, 940, 465]]", 1487, 2105)[0] == [(86, 69, 1399, 979)]


def test_several_boxes_per_block_are_kept_and_swapped_corners_fixed() -> None:
    raw = record("text", "[[78, 846, 488, 905], [919, 544, 508, 350]]", "Two columns")
    (block,) = parse_page(raw, 999, 999).blocks
    assert block.bboxes == [(78, 846, 488, 905), (508, 350, 919, 544)]


@pytest.mark.parametrize(
    "payload", ["[[12, x, 40, 50]]", "[[-5, 0, 10, 10]]", "[[1, 2, 3]]", "[[5, 5, 5, 90]]"]
)
def test_malformed_box_drops_the_box_but_keeps_the_content(payload: str) -> None:
    parsed = parse_page(record("text", payload, "Kept words"), 999, 999)
    assert [b.text for b in parsed.blocks] == ["Kept words"]
    assert parsed.blocks[0].bboxes == []
    assert not parsed.degraded
    assert parsed.warnings == ["malformed box dropped"]


def test_payload_is_never_evaluated_and_non_box_text_is_content(tmp_path: Path) -> None:
    marker = tmp_path / "evaluated"
    payload = f"__import__('pathlib').Path({str(marker)!r}).touch()"
    parsed = parse_page(record("text", payload, "Kept words"), 999, 999)
    assert not marker.exists()
    assert parsed.blocks[0].text == payload + "\nKept words"
    assert parsed.blocks[0].bboxes == []


def test_malformed_figure_box_degrades_the_page_because_the_figure_is_lost() -> None:
    parsed = parse_page(record("image", "[[a, b, c, d]]"), 999, 999)
    assert parsed.degraded and parsed.reasons == [REASON_BOX]


def test_table_html_arriving_with_its_caption_is_attached_to_the_table_record() -> None:
    raw = (
        "<|ref|>table<|/ref|><|det|>[[58, 490, 940, 616]]<|/det|>\n"
        "<|ref|>table_caption<|/ref|><|det|>[[64, 473, 162, 492]]<|/det|>\n健康问卷  \n\n"
        "<table><tr><td>项目名称</td><td>检查结果</td></tr><tr><td>过敏</td><td>无特殊</td></tr></table>  \n\n"
    )
    blocks = parse_page(raw, 999, 999).blocks
    assert [b.type for b in blocks] == ["table_caption", "table"]
    assert blocks[1].bboxes == [(58, 490, 940, 616)]
    assert blocks[1].table is not None and blocks[1].table.rows[1] == ["过敏", "无特殊"]
    assert blocks[0].text == "健康问卷"


def test_text_around_a_table_is_kept_in_reading_order() -> None:
    raw = record(
        "table", "[[1, 2, 300, 400]]", "Table 3: costs\n<table><tr><td>a</td></tr></table>\nSource: survey"
    )
    blocks = parse_page(raw, 999, 999).blocks
    assert [(b.type, b.text if b.type != "table" else "") for b in blocks] == [
        ("text", "Table 3: costs"),
        ("table", ""),
        ("text", "Source: survey"),
    ]
    assert blocks[1].bboxes == [(1, 2, 300, 400)]


def test_figure_gets_the_caption_that_follows_it() -> None:
    raw = record("image", "[[530, 310, 905, 666]]") + record(
        "image_caption", "[[515, 677, 912, 704]]", "<center>Figure 1: Four examples </center>"
    )
    image, caption = parse_page(raw, 999, 999).blocks
    assert image.type == "image" and image.caption == "Figure 1: Four examples"
    assert caption.text == "Figure 1: Four examples"


def test_text_before_the_first_record_is_kept() -> None:
    raw = "order to compute the TED score.  \n\n" + record("text", "[[1, 2, 3, 4]]", "Next")
    assert [b.text for b in parse_page(raw, 999, 999).blocks] == ["order to compute the TED score.", "Next"]


def test_plain_output_becomes_paragraphs_and_tables() -> None:
    raw = "First line\nsecond line\n\nNext paragraph\n<table><tr><td>a</td></tr></table>\ntail"
    blocks = parse_page(raw, 100, 100).blocks
    assert [(b.type, b.bboxes) for b in blocks] == [("text", []), ("text", []), ("table", []), ("text", [])]
    assert blocks[0].text == "First line\nsecond line"


def test_truncated_record_marks_the_page_degraded_and_keeps_the_text() -> None:
    parsed = parse_page(
        record("text", "[[1, 2, 3, 4]]", "Complete.") + "<|ref|>text<|/ref|><|det|>[[1, 2, ", 999, 999
    )
    assert parsed.reasons == [REASON_TRUNCATED]
    assert [b.text for b in parsed.blocks] == ["Complete."]


def test_missing_closing_det_keeps_the_content_after_the_box() -> None:
    parsed = parse_page("<|ref|>text<|/ref|><|det|>[[10, 20, 30, 40]]\nHello world", 999, 999)
    assert [(b.text, b.bboxes) for b in parsed.blocks] == [("Hello world", [(10, 20, 30, 40)])]


def test_truncated_table_is_kept_as_a_table_and_degrades_the_page() -> None:
    parsed = parse_page(
        record("table", "[[1, 2, 300, 400]]", "<table><tr><td>1</td><td>2</td></tr><tr><td>3"), 999, 999
    )
    assert REASON_TRUNCATED in parsed.reasons
    assert parsed.blocks[0].table is not None and parsed.blocks[0].table.rows == [["1", "2"], ["3", ""]]


def test_stray_special_tokens_are_removed() -> None:
    raw = record("text", "[[1, 2, 3, 4]]", "Hello<|grounding|> world<｜end▁of▁sentence｜>")
    assert parse_page(raw, 999, 999).blocks[0].text == "Hello world"


def test_split_raw_pages_uses_the_official_marker() -> None:
    text = "page one\n\n<--- Page Split --->\npage two\n\n<--- Page Split --->\n"
    assert split_raw_pages(text) == ["page one", "page two"]
    assert split_raw_pages("single") == ["single"]


# --------------------------------------------------------------------------- repetition loops


def test_repeated_tail_is_cut_to_one_occurrence_and_degrades_the_page() -> None:
    unit = "The quick brown fox jumps over the lazy dog. "
    raw = record("text", "[[1, 2, 3, 4]]", "Intro. " + unit * 40 + unit[:17])
    parsed = parse_page(raw, 999, 999)
    assert parsed.reasons == [REASON_LOOP]
    assert parsed.blocks[0].text.count("quick brown fox") == 1
    assert parsed.blocks[0].text.startswith("Intro.")


def test_short_unit_loop_is_cut() -> None:
    text, cut = cut_repetition_loop("Total: " + "0" * 500)
    assert cut and text == "Total: 0"


def test_legitimate_repeats_are_not_cut() -> None:
    rows = "<tr><td>0</td><td>0</td></tr>" * 12
    complete = f"<table>{rows}</table>"
    assert cut_repetition_loop(complete) == (complete, False)
    empty_cells = "<table><tr>" + "<td></td>" * 40  # a sparse table cut by the token limit
    assert cut_repetition_loop(empty_cells) == (empty_cells, False)
    refrain = "La la la, sing along. " * 3
    assert cut_repetition_loop(refrain) == (refrain, False)


def test_endless_empty_cells_are_eventually_a_loop() -> None:
    text, cut = cut_repetition_loop("<table><tr>" + "<td></td>" * 400)
    assert cut and text == "<table><tr><td></td>"


# --------------------------------------------------------------------------- Markdown


def test_headers_footers_and_page_numbers_are_dropped_unless_kept() -> None:
    raw = (
        record("header", "[[1, 1, 9, 9]]", "ACME Journal")
        + record("text", "[[1, 20, 9, 29]]", "Body")
        + record("page_number", "[[1, 90, 9, 99]]", "17")
    )
    assert markdown_of(raw) == "Body"
    assert markdown_of(raw, keep_headers=True) == "ACME Journal\n\nBody\n\n17"


def test_equations_become_display_math_and_inline_math_dollars() -> None:
    raw = record("equation", "[[1, 1, 9, 9]]", r"\[a \coloneqq b \quad (1)\]") + record(
        "text", "[[1, 20, 9, 29]]", r"where \( x_{1} \) is small"
    )
    assert markdown_of(raw) == "$$\na \\coloneqq b \\quad (1)\n$$\n\nwhere $x_{1}$ is small"


def test_escaped_backslash_brackets_are_not_math_delimiters() -> None:
    assert convert_math(r"\(a \\[2pt] b\)") == r"$a \\[2pt] b$"
    assert equation_markdown("$$x$$") == "$$\nx\n$$"


def test_lists_keep_their_line_breaks() -> None:
    raw = record("text", "[[1, 1, 9, 9]]", "- first item  \n- second item  ")
    assert markdown_of(raw) == "- first item\n- second item"


def test_text_task_keeps_lines_without_escaping() -> None:
    raw = "Dear *friend* of my_old_house,\n# 3 apples\n\n1. milk"
    assert markdown_of(raw, task="text") == "Dear *friend* of my_old_house,  \n# 3 apples\n\n1. milk"
    assert markdown_of(raw, task="raw") == raw


def test_figure_without_crop_renders_only_its_caption() -> None:
    block = Block(type="image", text="", bboxes=[(1, 1, 5, 5)], caption="Fig. 2")
    assert block_markdown(block) == ""
    block.image_path = "doc_images/1_0.png"
    assert block_markdown(block) == "![Fig. 2](doc_images/1_0.png)"
