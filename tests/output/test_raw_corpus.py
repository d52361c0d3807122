"""Golden tests over every real DeepSeek-OCR output in the shared corpus (raw-outputs/).

Known, documented differences from the official post-processing (docs/output-schema.md):
math delimiters become ``$``/``$$``, simple tables become GitHub tables, ``<center>`` is
dropped, figures are PNG crops named ``<page>_<k>.png``. The comparison below strips
that markup from both sides and compares the words.
"""

from __future__ import annotations

import difflib
import json
import re
from pathlib import Path

import pytest

from docconv.output.document import Page
from docconv.output.markdown import render_page_markdown
from docconv.output.options import RenderOptions
from docconv.output.postprocess import parse_page, split_raw_pages
from docconv.output.rerender import rerender_files

from ..conftest import CORPUS, needs_shared

RAW = CORPUS / "raw-outputs"
SIMILARITY = 0.9


def corpus_pages() -> list[tuple[str, str]]:
    """(id, raw text) of every raw page in the corpus."""
    pages: list[tuple[str, str]] = []
    for path in sorted([*RAW.glob("*.raw.txt"), *RAW.glob("*.raw.md"), *RAW.glob("*_det.mmd")]):
        for number, raw in enumerate(split_raw_pages(path.read_text(encoding="utf-8")), start=1):
            pages.append((f"{path.name}:p{number}", raw))
    for path in sorted(RAW.glob("cloudman6__*.json")):
        pages.append((path.name, json.loads(path.read_text(encoding="utf-8"))["raw_text"]))
    return pages


PAGES = corpus_pages() if RAW.is_dir() else []
needs_corpus = needs_shared(bool(PAGES), "raw outputs of the corpus", RAW)


def markdown(raw: str, **options: object) -> str:
    page = Page(number=1, width=1000, height=1400, raw=raw, blocks=parse_page(raw, 1000, 1400).blocks)
    return render_page_markdown(page, RenderOptions(**options))  # type: ignore[arg-type]


def words(text: str) -> list[str]:
    """Text content only: no grounding records, image links, HTML tags, math delimiters or table rules."""
    text = re.sub(r"<\|ref\|>.*?<\|/ref\|><\|det\|>.*?<\|/det\|>", " ", text, flags=re.DOTALL)
    text = re.sub(r"!\[[^\]]*\]\([^)]*\)", " ", text)
    text = re.sub(r"</?[a-zA-Z][^>]*>", " ", text)
    text = re.sub(r"\\[()\[\]]|\$|\||#|-{3,}", " ", text)
    return text.split()


def similarity(ours: str, official: str) -> float:
    return difflib.SequenceMatcher(None, words(ours), words(official), autojunk=False).ratio()


@needs_corpus
def test_corpus_has_every_group() -> None:
    names = {page_id.split("__")[0] for page_id, _ in PAGES}
    assert names == {"cloudman6", "docling", "mygateway2021", "shamitv"}
    assert len(PAGES) >= 40


@needs_corpus
@pytest.mark.parametrize(("page_id", "raw"), PAGES, ids=[p for p, _ in PAGES])
def test_no_markup_leaks_and_every_table_is_a_table(page_id: str, raw: str) -> None:
    parsed = parse_page(raw, 1000, 1400)
    assert not parsed.degraded, parsed.reasons
    for tables_format in ("auto", "md", "html"):
        text = markdown(raw, tables_format=tables_format)
        assert "<|" not in text and "<｜" not in text
        assert not re.search(r"\[\[\s*\d+\s*,", text), "coordinate list leaked"
        rendered_tables = text.count("<table>") + len(re.findall(r"^\|( --- \|)+$", text, flags=re.MULTILINE))
        assert rendered_tables == raw.count("<table>")
    tables = [b for b in parsed.blocks if b.type == "table" and b.table is not None and b.table.rows]
    assert len(tables) == raw.count("<table>")
    assert all(len({len(row) for row in t.table.rows}) == 1 for t in tables if t.table)  # rectangular grids


OFFICIAL_PAIRS = sorted(
    (path, path.with_name(path.name.replace(".raw.txt", ".result.mmd"))) for path in RAW.glob("*.raw.txt")
)


@needs_corpus
@pytest.mark.parametrize(
    ("raw_path", "official_path"), OFFICIAL_PAIRS, ids=[p.name for p, _ in OFFICIAL_PAIRS]
)
def test_text_agrees_with_the_official_result_mmd(raw_path: Path, official_path: Path) -> None:
    ours = markdown(raw_path.read_text(encoding="utf-8"))
    assert similarity(ours, official_path.read_text(encoding="utf-8")) >= SIMILARITY


@needs_corpus
def test_paper_agrees_with_the_official_markdown_page_by_page() -> None:
    raw_pages = split_raw_pages(
        (RAW / "mygateway2021__DeepSeek_OCR_paper_det.mmd").read_text(encoding="utf-8")
    )
    official = split_raw_pages((RAW / "mygateway2021__DeepSeek_OCR_paper.md").read_text(encoding="utf-8"))
    assert len(raw_pages) == len(official) == 22
    scores = [similarity(markdown(raw), ref) for raw, ref in zip(raw_pages, official, strict=True)]
    assert min(scores) >= SIMILARITY, scores


@needs_corpus
def test_figure_regions_match_the_official_crops_of_the_paper() -> None:
    raw_pages = split_raw_pages(
        (RAW / "mygateway2021__DeepSeek_OCR_paper_det.mmd").read_text(encoding="utf-8")
    )
    official_crops = sorted(p.stem for p in (RAW / "mygateway2021__DeepSeek_OCR_paper_images").glob("*.jpg"))
    ours = [
        f"{index}_{k}"
        for index, raw in enumerate(raw_pages)
        for k, _ in enumerate(b for b in parse_page(raw, 1000, 1400).blocks if b.type == "image" and b.bboxes)
    ]
    assert sorted(ours) == official_crops


@needs_corpus
@pytest.mark.parametrize(
    "name", ["cloudman6__sample.json", "cloudman6__sample1.json", "cloudman6__sample3.json"]
)
def test_pixel_boxes_match_the_web_ui(name: str) -> None:
    data = json.loads((RAW / name).read_text(encoding="utf-8"))
    dims = data["image_dims"]
    parsed = parse_page(data["raw_text"], dims["w"], dims["h"])
    ours = sorted((b.label, list(box)) for b in parsed.blocks for box in b.bboxes)
    assert ours == sorted((b["label"], b["box"]) for b in data["boxes"])


@needs_corpus
@pytest.mark.parametrize(
    ("raw_name", "source_name", "figures"),
    [
        ("docling__deepseek_title.raw.md", "docling__deepseek_title.tif", 1),
        ("docling__deepseek_example.raw.md", "docling__deepseek_example.pdf", 0),
    ],
)
def test_every_figure_region_becomes_a_file_when_the_source_is_present(
    tmp_path: Path, raw_name: str, source_name: str, figures: int
) -> None:
    out = tmp_path / "page.md"
    rerender_files([RAW / raw_name], out, RenderOptions(), source_document=RAW / source_name)
    crops = sorted((tmp_path / "page_images").glob("*.png")) if figures else []
    assert len(crops) == figures == len(re.findall(r"<\|ref\|>image<\|/ref\|>", (RAW / raw_name).read_text()))
    text = out.read_text(encoding="utf-8")
    for crop in crops:
        assert f"](page_images/{crop.name})" in text
