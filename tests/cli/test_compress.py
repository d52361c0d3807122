"""``docconv compress`` end to end (Typer's runner), counting tokens with the tiny checkpoint's tokenizer."""

from __future__ import annotations

import json
import os
from pathlib import Path

import jsonschema
import pymupdf
import pytest
from PIL import Image
from typer.testing import CliRunner

import docconv
from docconv.cli import app
from docconv.cli.exit_codes import ExitCode
from docconv.compress import min_legible_font_size, mode_vision_tokens
from docconv.fsutil import TEMP_MARKER

from ..compress.texts import LONG_MARKDOWN, PROSE
from ..helpers import make_image, make_pdf
from .test_startup import help_without_output, modules_loaded_by

runner = CliRunner()
SCHEMA = json.loads((Path(docconv.__file__).parent / "schemas" / "compress-manifest.schema.json").read_text())


@pytest.fixture(autouse=True)
def isolated_settings(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [name for name in os.environ if name.startswith("DOCCONV_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("DOCCONV_CONFIG_DIR", str(tmp_path_factory.mktemp("config")))


@pytest.fixture
def model(tiny_model_dir: Path) -> list[str]:
    return ["--model", str(tiny_model_dir)]


def invoke(*args, input: bytes | None = None):
    return runner.invoke(app, ["compress", *[str(a) for a in args]], input=input, catch_exceptions=False)


def manifest_at(directory: Path) -> dict:
    record = json.loads((directory / "manifest.json").read_text(encoding="utf-8"))
    jsonschema.validate(record, SCHEMA)
    return record


def test_one_markdown_file_gives_pages_a_manifest_and_a_pdf(tmp_path: Path, model: list[str]) -> None:
    source = tmp_path / "notes.md"
    source.write_text(LONG_MARKDOWN, encoding="utf-8")
    out = tmp_path / "out"
    result = invoke(source, "-o", out, "--mode", "tiny", "--ratio", "8", "--pdf", *model)
    assert result.exit_code == 0, result.stderr
    record = manifest_at(out)
    assert (record["mode"], record["ratio_target"], record["source"]) == ("tiny", 8.0, str(source))
    pages = record["pages"]
    assert len(pages) == record["totals"]["pages"] > 1
    assert "".join(page["text"] for page in pages) == LONG_MARKDOWN
    for number, page in enumerate(pages, start=1):
        assert page["image"] == f"page-{number:04d}.png"
        with Image.open(out / page["image"]) as image:
            assert image.size == (512, 512) and image.mode == "RGB"
        assert LONG_MARKDOWN[page["span"][0] : page["span"][1]] == page["text"]
        assert page["vision_tokens"] == mode_vision_tokens("tiny")
    assert record["totals"]["text_tokens"] == sum(page["text_tokens"] for page in pages)
    assert record["totals"]["vision_tokens"] == sum(page["vision_tokens"] for page in pages)
    with pymupdf.open(out / record["pdf"]) as pdf:
        assert pdf.page_count == len(pages)
        assert "Optical compression test document" in " ".join(pdf[0].get_text().split())
    assert not list(out.glob(f"*{TEMP_MARKER}*"))
    assert f"{record['totals']['ratio']:.2f}" in result.stdout  # the summary table


def test_several_inputs_get_a_directory_each_and_json_records(tmp_path: Path, model: list[str]) -> None:
    text = tmp_path / "a" / "prose.txt"
    text.parent.mkdir()
    text.write_text(PROSE[:3000], encoding="utf-8")
    pdf = make_pdf(tmp_path / "report.pdf", pages=2, texts=["First page text", "Second page text"])
    same_stem = tmp_path / "prose.md"
    same_stem.write_text("# Another prose\n\nWith a *different* body.\n", encoding="utf-8")
    out = tmp_path / "out"
    result = invoke(text, pdf, same_stem, "-", "-o", out, "--json", *model, input=b"stdin says hello\n")
    assert result.exit_code == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [record["source"] for record in records] == [str(text), str(pdf), str(same_stem), "-"]
    assert [Path(record["manifest"]).parent.name for record in records] == [
        "prose",
        "report",
        "prose-2",
        "stdin",
    ]
    assert manifest_at(out / "report")["pages"][0]["text"].split() == [
        "First",
        "page",
        "text",
        "Second",
        "page",
        "text",
    ]
    assert manifest_at(out / "stdin")["pages"][0]["text"] == "stdin says hello\n"
    assert manifest_at(out / "prose")["totals"]["pages"] == records[0]["pages"]


def test_the_same_input_gives_the_same_bytes(tmp_path: Path, model: list[str]) -> None:
    source = tmp_path / "notes.md"
    source.write_text(LONG_MARKDOWN[:4000], encoding="utf-8")
    for name in ("first", "second"):
        assert invoke(source, "-o", tmp_path / name, "--mode", "tiny", "--pdf", *model).exit_code == 0
    first = sorted(p.name for p in (tmp_path / "first").iterdir())
    assert first == sorted(p.name for p in (tmp_path / "second").iterdir())
    for name in first:
        assert (tmp_path / "first" / name).read_bytes() == (tmp_path / "second" / name).read_bytes(), name


def test_a_rerun_with_fewer_pages_leaves_no_stale_page(tmp_path: Path, model: list[str]) -> None:
    source = tmp_path / "notes.md"
    source.write_text(LONG_MARKDOWN, encoding="utf-8")
    out = tmp_path / "out"
    assert invoke(source, "-o", out, "--mode", "tiny", "--ratio", "5", "--pdf", *model).exit_code == 0
    assert invoke(source, "-o", out, "--mode", "tiny", "--ratio", "20", *model).exit_code == 0
    named = {page["image"] for page in manifest_at(out)["pages"]} | {"manifest.json"}
    assert {path.name for path in out.iterdir()} == named


def test_pages_below_the_legible_size_are_reported(tmp_path: Path, model: list[str]) -> None:
    source = tmp_path / "dense.txt"
    source.write_text(PROSE * 3, encoding="utf-8")
    result = invoke(source, "-o", tmp_path / "out", "--mode", "tiny", "--ratio", "400", *model)
    assert result.exit_code == 0, result.stderr
    warning = result.stderr.strip().splitlines()
    assert len(warning) == 1 and warning[0].startswith(f"docconv: warning: {source}: page")
    assert f"below the {min_legible_font_size():.1f} px" in warning[0]
    assert not manifest_at(tmp_path / "out")["pages"][0]["legible"]


def test_unreadable_inputs_fail_alone_with_one_line_each(tmp_path: Path, model: list[str]) -> None:
    good = tmp_path / "good.md"
    good.write_text("Fine text.\n", encoding="utf-8")
    image = make_image(tmp_path / "photo.png")
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\xe9".encode("latin-1"))
    locked = make_pdf(tmp_path / "locked.pdf", password="secret")
    scan = tmp_path / "scan.pdf"
    with pymupdf.open() as document:
        document.new_page()
        document.save(scan)
    empty = tmp_path / "empty.md"
    empty.write_text("  \n")
    inputs = [good, tmp_path / "missing.md", image, latin1, locked, scan, empty]
    result = invoke(*inputs, "-o", tmp_path / "out", *model)
    assert result.exit_code == ExitCode.FAILED
    errors = result.stderr.strip().splitlines()
    assert [line.split(": ")[2] for line in errors] == [str(path) for path in inputs[1:]]
    assert all(line.startswith("docconv: error: ") for line in errors)
    for needle in ("no such file", "binary content", "not UTF-8", "encrypted", "no text layer", "no text"):
        assert any(needle in line for line in errors), needle
    assert manifest_at(tmp_path / "out" / "good")["totals"]["pages"] == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--ratio", "0"], "--ratio 0.0: must be above 0"), (["--mode", "gundam"], "gundam")],
)
def test_usage_errors_exit_2(tmp_path: Path, model: list[str], args: list[str], message: str) -> None:
    source = tmp_path / "a.md"
    source.write_text("text")
    result = invoke(source, "-o", tmp_path / "out", *args, *model)
    assert result.exit_code == ExitCode.USAGE
    assert message in result.stderr
    assert not (tmp_path / "out").exists()


def test_an_output_that_is_a_file_is_a_usage_error(tmp_path: Path, model: list[str]) -> None:
    source = tmp_path / "a.md"
    source.write_text("text")
    result = invoke(source, "-o", source, *model)
    assert result.exit_code == ExitCode.USAGE
    assert "is not a directory" in result.stderr


def test_a_model_without_a_tokenizer_exits_3(tmp_path: Path) -> None:
    source = tmp_path / "a.md"
    source.write_text("text")
    result = invoke(source, "-o", tmp_path / "out", "--model", tmp_path)
    assert result.exit_code == ExitCode.UNAVAILABLE
    assert result.stderr.startswith("docconv: error: cannot count text tokens:")
    assert not (tmp_path / "out").exists()


def test_compress_help_loads_no_torch() -> None:
    assert modules_loaded_by(f"exec({help_without_output('compress')!r})") == []
