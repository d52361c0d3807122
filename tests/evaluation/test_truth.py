"""Ground truth from compress manifests, PDF text layers and images with a sidecar."""

from __future__ import annotations

import json
from pathlib import Path

from docconv.evaluation.truth import load_truth

from ..helpers import make_image, make_pdf
from .manifests import write_manifest


def test_a_manifest_gives_its_pages_images_texts_and_token_counts(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "doc", [("first page text", 650), ("second page", 720)])
    truth = load_truth([str(manifest)])
    assert truth.problems == []
    assert [(p.number, p.text, p.text_tokens) for p in truth.pages] == [
        (1, "first page text", 650),
        (2, "second page", 720),
    ]
    assert truth.pages[0].image == tmp_path / "doc" / "page_0001.png"
    assert truth.pages[0].render("tiny").size == (640, 640)  # drawn for small; the engine resizes


def test_a_directory_of_manifests_is_every_document_of_a_compress_run(tmp_path: Path) -> None:
    write_manifest(tmp_path / "out" / "b", [("bee", 600)])
    write_manifest(tmp_path / "out" / "a", [("ay", 600), ("ay two", 610)])
    (tmp_path / "out" / "stray.png").write_bytes(b"not looked at: the directory has manifests")
    truth = load_truth([str(tmp_path / "out")])
    assert [(Path(p.source).parent.name, p.number) for p in truth.pages] == [("a", 1), ("a", 2), ("b", 1)]


def test_pages_without_text_tokens_are_left_to_the_tokenizer(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path, [("no count", None)])
    assert load_truth([str(manifest)]).pages[0].text_tokens is None


def test_a_pdf_text_layer_is_the_truth_of_its_pages(tmp_path: Path) -> None:
    pdf = make_pdf(tmp_path / "doc.pdf", pages=2, texts=["alpha page", "beta page"])
    truth = load_truth([str(pdf)])
    assert [(p.number, p.text, p.pdf_index) for p in truth.pages] == [
        (1, "alpha page", 0),
        (2, "beta page", 1),
    ]
    small, tiny = truth.pages[0].render("small"), truth.pages[0].render("tiny")
    assert max(small.size) > max(tiny.size)  # each mode's page rendered at the DPI it needs


def test_an_image_takes_its_truth_from_a_sidecar(tmp_path: Path) -> None:
    image = make_image(tmp_path / "scan.png", text="Hello")
    (tmp_path / "scan.md").write_text("Hello\n", encoding="utf-8")
    truth = load_truth([str(image)])
    assert [(p.text, p.text_tokens, p.pdf_index) for p in truth.pages] == [("Hello\n", None, None)]


def test_unusable_truth_is_named_with_its_fix_and_the_rest_still_loads(tmp_path: Path) -> None:
    good = write_manifest(tmp_path / "good", [("fine", 650)])
    lonely = make_image(tmp_path / "lonely.png")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json", encoding="utf-8")
    future = write_manifest(tmp_path / "future", [("x", 1)], version=99)
    missing = write_manifest(tmp_path / "missing", [("gone", 650), ("here", 650)])
    (tmp_path / "missing" / "page_0001.png").unlink()
    blank = make_pdf(tmp_path / "blank.pdf", pages=1, texts=[" "])
    truth = load_truth(
        [str(good), str(lonely), str(broken), str(future), str(missing), str(blank), "nope.pdf"]
    )
    assert [p.text for p in truth.pages] == ["fine", "here"]
    messages = {Path(p.source.split(" page ")[0]).name: p.message for p in truth.problems}
    assert "write its text to lonely.txt or lonely.md" in messages["lonely.png"]
    assert "run `docconv compress` again" in messages["broken.json"]
    by_source = {p.source: p.message for p in truth.problems}
    assert "version 99 is not one this docconv reads" in by_source[str(future)]
    assert "page_0001.png is missing" in by_source[f"{missing} page 1"]
    assert "no text layer" in messages["blank.pdf"]
    assert "no such file" in messages["nope.pdf"]
    assert all(p.fatal for p in truth.problems)


def test_empty_truth_pages_are_skipped_with_a_warning(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path, [("words", 650), ("   ", 0)])
    truth = load_truth([str(manifest)])
    assert [p.number for p in truth.pages] == [1]
    assert [(p.fatal, p.message) for p in truth.problems] == [(False, "its ground truth is empty; skipped")]


def test_the_page_key_changes_with_the_truth(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path, [("words", 650)])
    before = load_truth([str(manifest)]).pages[0].key
    data = json.loads(manifest.read_text())
    data["pages"][0]["text"] = "other words"
    manifest.write_text(json.dumps(data))
    assert load_truth([str(manifest)]).pages[0].key != before
