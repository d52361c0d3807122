"""Writers: Markdown/JSON/JSONL/HTML of a document, table CSVs, figure crops; JSON Schema."""

from __future__ import annotations

import csv
import json
from importlib import resources
from pathlib import Path

import jsonschema
import pytest
from PIL import Image

from docconv.output.document import Document, Page
from docconv.output.options import DEFAULT_PAGE_SEPARATOR, RenderOptions
from docconv.output.postprocess import parse_page
from docconv.output.writers import page_jsonl_line, render_document, save_figures, write_tables_csv

RAW_PAGE_1 = (
    "<|ref|>title<|/ref|><|det|>[[100, 50, 900, 100]]<|/det|>\n# Quarterly <report>  \n\n"
    "<|ref|>image<|/ref|><|det|>[[250, 250, 500, 500]]<|/det|>\n"
    "<|ref|>image_caption<|/ref|><|det|>[[250, 510, 500, 530]]<|/det|>\nFigure 1: red square  \n\n"
    "<|ref|>footer<|/ref|><|det|>[[0, 950, 999, 999]]<|/det|>\nPage 1\n\n"
)
RAW_PAGE_2 = (
    "<|ref|>table<|/ref|><|det|>[[100, 100, 900, 400]]<|/det|>\n"
    "<table><tr><td>Item</td><td>Price</td></tr><tr><td>Tea</td><td>3</td></tr></table>\n\n"
    "<|ref|>table<|/ref|><|det|>[[100, 500, 900, 800]]<|/det|>\n"
    '<table><tr><td colspan="2">Total</td></tr><tr><td>1</td><td>2</td></tr></table>'
)


def make_page(number: int, raw: str, size: int = 1000) -> Page:
    parsed = parse_page(raw, size, size)
    return Page(
        number=number,
        width=size,
        height=size,
        mode="base",
        raw=raw,
        blocks=parsed.blocks,
        degraded=parsed.degraded,
        degraded_reasons=parsed.reasons,
        text_tokens=120,
        valid_vision_tokens=256,
    )


@pytest.fixture
def doc() -> Document:
    return Document(
        source="report.pdf", pages=[make_page(1, RAW_PAGE_1), make_page(2, RAW_PAGE_2)], page_count=3
    )


@pytest.fixture(scope="module")
def schema() -> dict:
    return json.loads(
        resources.files("docconv").joinpath("schemas/document.schema.json").read_text(encoding="utf-8")
    )


def test_markdown_document_has_pages_separated_and_footers_dropped(doc: Document) -> None:
    text = render_document(doc, RenderOptions())
    page_1, page_2 = text.split(DEFAULT_PAGE_SEPARATOR.format(page=2))
    assert page_1 == "# Quarterly <report>\n\nFigure 1: red square"
    assert page_2.startswith("| Item | Price |\n| --- | --- |\n| Tea | 3 |\n\n<table>")
    assert text.endswith("</table>\n")
    assert "Page 1" in render_document(doc, RenderOptions(keep_headers=True))


def test_custom_page_separator_gets_the_page_number(doc: Document) -> None:
    text = render_document(doc, RenderOptions(page_separator="\n\n---page {page}---\n\n"))
    assert "\n\n---page 2---\n\n| Item" in text


def test_tables_format_forces_html_or_markdown(doc: Document) -> None:
    as_html = render_document(doc, RenderOptions(tables_format="html"))
    assert as_html.count("<table>") == 2 and "| --- |" not in as_html
    as_md = render_document(doc, RenderOptions(tables_format="md"))
    assert "<table>" not in as_md and "| Total | Total |" in as_md


def test_json_validates_against_the_schema_and_round_trips(doc: Document, schema: dict) -> None:
    data = json.loads(render_document(doc, RenderOptions(format="json")))
    jsonschema.validate(data, schema)
    assert data["pages"][1]["blocks"][0]["table"]["rows"] == [["Item", "Price"], ["Tea", "3"]]
    assert data["pages"][0]["blocks"][1]["bboxes"] == [[250, 250, 500, 500]]
    assert data["pages"][0]["ratio"] == 0.47
    assert Document.from_dict(data) == doc


def test_jsonl_has_one_valid_line_per_page(doc: Document, schema: dict) -> None:
    text = render_document(doc, RenderOptions(format="jsonl"))
    lines = text.splitlines()
    assert len(lines) == 2 and text.endswith("\n")
    line_schema = {"$schema": schema["$schema"], "$defs": schema["$defs"], "$ref": "#/$defs/page_line"}
    for line, page in zip(lines, doc.pages, strict=True):
        assert line == page_jsonl_line(doc.source, page)
        record = json.loads(line)
        jsonschema.validate(record, line_schema)
        assert record["source"] == "report.pdf" and record["raw"] == page.raw


def test_schema_rejects_a_block_without_type(doc: Document, schema: dict) -> None:
    data = doc.to_dict()
    del data["pages"][0]["blocks"][0]["type"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(data, schema)


def test_html_escapes_text_and_keeps_structure(doc: Document) -> None:
    text = render_document(doc, RenderOptions(format="html"))
    assert text.startswith("<!DOCTYPE html>") and "<title>report.pdf</title>" in text
    assert "<h1>Quarterly &lt;report&gt;</h1>" in text
    assert '<section class="page" data-page="2">' in text and 'colspan="2"' in text


def test_tables_csv_files_are_named_by_page_and_table(doc: Document, tmp_path: Path) -> None:
    written = write_tables_csv(doc, tmp_path, "report")
    assert [p.name for p in written] == ["report_p2_t1.csv", "report_p2_t2.csv"]
    with written[1].open(newline="", encoding="utf-8") as handle:
        assert list(csv.reader(handle)) == [["Total", "Total"], ["1", "2"]]


@pytest.mark.parametrize("scale", [1, 2])
def test_figures_are_cropped_from_the_page_image_and_linked(
    doc: Document, tmp_path: Path, scale: int
) -> None:
    # The page image may be larger than the page size the boxes refer to (full resolution).
    image = Image.new("RGB", (1000 * scale, 1000 * scale), "white")
    image.paste((255, 0, 0), (250 * scale, 250 * scale, 500 * scale, 500 * scale))
    page = doc.pages[0]
    save_figures(page, image, tmp_path / "report_images", "report_images/")
    figure = page.blocks[1]
    assert figure.image_path == "report_images/1_0.png"
    with Image.open(tmp_path / "report_images" / "1_0.png") as crop:
        assert abs(crop.width - 250 * scale) <= 2 * scale and abs(crop.height - 250 * scale) <= 2 * scale
        colours = crop.convert("RGB").getcolors()
        assert colours is not None and max(colours)[1] == (255, 0, 0)
    assert "![Figure 1: red square](report_images/1_0.png)" in render_document(doc, RenderOptions())


def test_a_figure_with_several_boxes_is_one_crop_around_all_of_them(tmp_path: Path) -> None:
    raw = "<|ref|>image<|/ref|><|det|>[[0, 0, 99, 99], [899, 899, 999, 999]]<|/det|>\n"
    page = make_page(3, raw)
    save_figures(page, Image.new("RGB", (1000, 1000), "white"), tmp_path, "img/")
    assert [b.image_path for b in page.blocks] == ["img/3_0.png"]
    with Image.open(tmp_path / "3_0.png") as crop:
        assert crop.size == (1000, 1000)


def test_raw_task_writes_the_model_text_unchanged(doc: Document) -> None:
    assert render_document(doc, RenderOptions(task="raw")).startswith(RAW_PAGE_1.strip("\n"))
    assert "<pre>&lt;|ref|&gt;title" in render_document(doc, RenderOptions(format="html", task="raw"))
