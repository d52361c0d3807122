"""``docconv rerender``: --keep-raw files and plain raw text -> outputs again, without a model."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pymupdf
import pytest
from PIL import Image

from docconv.output.document import Document, Page
from docconv.output.options import RenderOptions
from docconv.output.postprocess import REASON_TOKEN_LIMIT, parse_page
from docconv.output.raw import raw_record, write_raw_file
from docconv.output.rerender import RerenderError, load_raw, output_stem, rerender_files
from docconv.output.writers import render_document

FIGURE_PAGE = (
    "<|ref|>sub_title<|/ref|><|det|>[[100, 50, 900, 100]]<|/det|>\n## Results  \n\n"
    "<|ref|>image<|/ref|><|det|>[[250, 250, 500, 500]]<|/det|>\n"
    "<|ref|>image_caption<|/ref|><|det|>[[250, 510, 500, 530]]<|/det|>\nFigure 2: a red box  \n\n"
)
TABLE_PAGE = (
    "<|ref|>table<|/ref|><|det|>[[100, 100, 900, 400]]<|/det|>\n<table><tr><td>a</td><td>b</td></tr></table>"
)


def red_square_image(size: int = 800) -> Image.Image:
    image = Image.new("RGB", (size, size), "white")
    image.paste((255, 0, 0), (size // 4, size // 4, size // 2, size // 2))
    return image


def assert_mostly_red(path: Path) -> None:
    with Image.open(path) as crop:
        colours = crop.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colours is not None and max(colours)[1] == (255, 0, 0)


def kept_raw_document(source: str) -> Document:
    pages = []
    for number, raw in ((1, FIGURE_PAGE), (2, TABLE_PAGE)):
        parsed = parse_page(raw, 800, 800)
        pages.append(
            Page(
                number=number,
                width=800,
                height=800,
                mode="gundam",
                raw=raw,
                blocks=parsed.blocks,
                text_tokens=50,
                vision_tokens=100,
                valid_vision_tokens=90,
                stop_reason="eos",
            )
        )
    return Document(source=source, pages=pages, page_count=2)


def test_keep_raw_file_rerenders_to_the_same_outputs(tmp_path: Path) -> None:
    doc = kept_raw_document(str(tmp_path / "missing.pdf"))
    raw_file = tmp_path / "paper.raw.json"
    write_raw_file(raw_file, doc)
    record = json.loads(raw_file.read_text(encoding="utf-8"))["pages"][0]
    assert record == raw_record(doc.pages[0], doc.source)
    assert {record["mode"], record["width"], record["height"], record["raw"]} == {"gundam", 800, FIGURE_PAGE}

    for output_format in ("md", "json", "html"):
        out = tmp_path / f"out.{output_format}"
        assert rerender_files([raw_file], out, RenderOptions(format=output_format), stderr=io.StringIO()) == [
            out
        ]
        assert out.read_text(encoding="utf-8") == render_document(doc, RenderOptions(format=output_format))


def test_source_pdf_is_rerendered_for_figure_crops(tmp_path: Path) -> None:
    pdf_path = tmp_path / "paper.pdf"
    with pymupdf.open() as pdf:
        for _ in range(2):
            page = pdf.new_page(width=400, height=400)
            page.draw_rect(pymupdf.Rect(100, 100, 200, 200), color=(1, 0, 0), fill=(1, 0, 0))
        pdf.save(pdf_path)
    raw_file = tmp_path / "paper.raw.json"
    write_raw_file(raw_file, kept_raw_document(str(pdf_path)))
    out = tmp_path / "md" / "paper.md"
    stderr = io.StringIO()
    rerender_files([raw_file], out, RenderOptions(), stderr=stderr)
    assert_mostly_red(out.parent / "paper_images" / "1_0.png")
    assert "![Figure 2: a red box](paper_images/1_0.png)" in out.read_text(encoding="utf-8")
    assert stderr.getvalue() == ""


def test_plain_raw_text_with_page_splits_and_tables_csv(tmp_path: Path) -> None:
    raw_file = tmp_path / "scan_det.mmd"
    raw_file.write_text(
        f"{TABLE_PAGE}\n\n<--- Page Split --->\n{TABLE_PAGE}\n\n<--- Page Split --->\n", encoding="utf-8"
    )
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    written = rerender_files([raw_file], out_dir, RenderOptions(format="json", tables_csv=True))
    assert [p.name for p in written] == ["scan.json", "scan_p1_t1.csv", "scan_p2_t1.csv"]
    data = json.loads((out_dir / "scan.json").read_text(encoding="utf-8"))
    assert [p["number"] for p in data["pages"]] == [1, 2]
    # page size unknown: boxes stay on the model's 0-999 grid
    assert data["pages"][0]["width"] == 0 and data["pages"][0]["blocks"][0]["bboxes"] == [
        [100, 100, 900, 400]
    ]


def test_image_option_crops_figures_of_a_single_raw_page(tmp_path: Path) -> None:
    raw_file = tmp_path / "page.raw.txt"
    raw_file.write_text(FIGURE_PAGE, encoding="utf-8")
    image_path = tmp_path / "page.png"
    red_square_image(800).save(image_path)
    out = tmp_path / "page.json"
    rerender_files([raw_file], out, RenderOptions(format="json"), image=image_path)
    page = json.loads(out.read_text(encoding="utf-8"))["pages"][0]
    assert (page["width"], page["height"]) == (800, 800)
    figure = page["blocks"][1]
    assert figure["bboxes"] == [[200, 200, 400, 400]] and figure["image_path"] == "page_images/1_0.png"
    assert_mostly_red(tmp_path / "page_images" / "1_0.png")


def test_figures_are_cropped_from_pages_read_as_a_conversion_reads_them(tmp_path: Path) -> None:
    """One loader: a transparent page is flattened onto white, as the model saw it, not onto black."""
    clear = Image.new("RGBA", (800, 800), (0, 0, 0, 0))
    clear.paste((255, 0, 0, 255), (250, 250, 350, 350))
    clear.save(tmp_path / "page.png")
    raw_file = tmp_path / "page.raw.txt"
    raw_file.write_text(FIGURE_PAGE, encoding="utf-8")
    rerender_files([raw_file], tmp_path / "page.md", RenderOptions(), source_document=tmp_path / "page.png")
    with Image.open(tmp_path / "page_images" / "1_0.png") as crop:
        colours = dict((colour, count) for count, colour in crop.convert("RGB").getcolors(maxcolors=1 << 20))
    assert (0, 0, 0) not in colours and colours[(255, 255, 255)] > colours[(255, 0, 0)] > 0


def test_a_source_that_is_not_a_document_crops_nothing(tmp_path: Path) -> None:
    raw_file = tmp_path / "page.raw.txt"
    raw_file.write_text(FIGURE_PAGE, encoding="utf-8")
    notes = tmp_path / "notes.txt"
    notes.write_text("not a page image", encoding="utf-8")
    stderr = io.StringIO()
    rerender_files([raw_file], tmp_path / "page.md", RenderOptions(), source_document=notes, stderr=stderr)
    assert "figures not cropped" in stderr.getvalue()


def test_without_an_image_figures_are_skipped_with_one_notice(tmp_path: Path) -> None:
    raw_file = tmp_path / "two.raw.txt"
    raw_file.write_text(f"{FIGURE_PAGE}<--- Page Split --->\n{FIGURE_PAGE}", encoding="utf-8")
    stderr = io.StringIO()
    rerender_files([raw_file], tmp_path / "two.md", RenderOptions(), stderr=stderr)
    assert stderr.getvalue().count("figures not cropped") == 1
    text = (tmp_path / "two.md").read_text(encoding="utf-8")
    assert "![" not in text and text.count("Figure 2: a red box") == 2
    assert not (tmp_path / "two_images").exists()


def test_stdout_when_no_output_is_given(tmp_path: Path) -> None:
    raw_file = tmp_path / "t.raw.md"
    raw_file.write_text(TABLE_PAGE, encoding="utf-8")
    stdout = io.StringIO()
    assert rerender_files([raw_file], None, RenderOptions(), stdout=stdout) == []
    assert stdout.getvalue() == "| a | b |\n| --- | --- |\n"


def test_web_ui_response_uses_its_image_size(tmp_path: Path) -> None:
    raw_file = tmp_path / "resp.json"
    raw_file.write_text(
        json.dumps({"raw_text": TABLE_PAGE, "image_dims": {"w": 1998, "h": 999}}), encoding="utf-8"
    )
    page = load_raw(raw_file).pages[0]
    assert (page.width, page.height) == (1998, 999)


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "file not found"), ('{"pages": []}', "raw_text"), (b"\xff\xfe\x00bad", "UTF-8")],
)
def test_bad_raw_files_give_a_one_line_error_naming_the_file(
    tmp_path: Path, content: object, message: str
) -> None:
    raw_file = tmp_path / "bad.json"
    if isinstance(content, str):
        raw_file.write_text(content, encoding="utf-8")
    elif isinstance(content, bytes):
        raw_file.write_bytes(content)
    with pytest.raises(RerenderError) as error:
        rerender_files([raw_file], tmp_path / "o.md", RenderOptions())
    assert str(raw_file) in str(error.value) and message in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "o.md").exists()


def test_image_option_needs_a_single_page(tmp_path: Path) -> None:
    raw_file = tmp_path / "two.raw.txt"
    raw_file.write_text("a\n<--- Page Split --->\nb", encoding="utf-8")
    image_path = tmp_path / "p.png"
    red_square_image(10).save(image_path)
    with pytest.raises(RerenderError, match="single-page"):
        rerender_files([raw_file], tmp_path / "o.md", RenderOptions(), image=image_path)


def test_output_stem_strips_raw_suffixes() -> None:
    names = ["paper.raw.json", "X_det.mmd", "p1.raw.txt", "notes.txt"]
    assert [output_stem(Path(n)) for n in names] == ["paper", "X", "p1", "notes"]


def test_inputs_with_the_same_stem_do_not_overwrite_each_other(tmp_path: Path) -> None:
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "scan.raw.txt").write_text(TABLE_PAGE, encoding="utf-8")
    with pytest.raises(RerenderError, match="several raw inputs"):
        rerender_files(
            [tmp_path / "a" / "scan.raw.txt", tmp_path / "b" / "scan.raw.txt"],
            tmp_path / "out",
            RenderOptions(),
        )
    assert not (tmp_path / "out").exists()


def test_a_page_that_hit_the_token_limit_is_degraded_after_rerender(tmp_path: Path) -> None:
    doc = kept_raw_document("gone.pdf")
    doc.pages[1].stop_reason = "max_tokens"
    raw_file = tmp_path / "doc.raw.json"
    write_raw_file(raw_file, doc)
    rerender_files([raw_file], tmp_path / "doc.json", RenderOptions(format="json"), stderr=io.StringIO())
    pages = json.loads((tmp_path / "doc.json").read_text(encoding="utf-8"))["pages"]
    assert [(p["degraded"], p["degraded_reasons"]) for p in pages] == [
        (False, []),
        (True, [REASON_TOKEN_LIMIT]),
    ]
