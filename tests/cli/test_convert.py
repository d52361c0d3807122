"""End-to-end runs of the docconv command in-process (Typer's runner) with the tiny real checkpoint."""

from __future__ import annotations

import json
import os
from pathlib import Path

import jsonschema
import pytest
import torch
from typer.testing import CliRunner

import docconv
from docconv.cli import app
from docconv.fsutil import TEMP_MARKER
from docconv.run.modes import MODE_ORDER, next_larger_mode

from ..helpers import engine_args, make_image, make_pdf, make_tiff

runner = CliRunner()
SCHEMA = json.loads((Path(docconv.__file__).parent / "schemas" / "document.schema.json").read_text())


@pytest.fixture(autouse=True)
def isolated_settings(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """The user's own config file and DOCCONV_* variables must not change what these tests see."""
    for name in [name for name in os.environ if name.startswith("DOCCONV_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("DOCCONV_CONFIG_DIR", str(tmp_path_factory.mktemp("config")))


def invoke(*args: str, input: bytes | None = None):
    return runner.invoke(app, [str(a) for a in args], input=input, catch_exceptions=False)


def pages_of(json_path: Path) -> list[dict]:
    return json.loads(json_path.read_text())["pages"]


@pytest.fixture
def tiny(tiny_model_dir: Path) -> list[str]:
    return engine_args(tiny_model_dir)


def test_single_pdf_to_markdown_file(tmp_path: Path, tiny: list[str]) -> None:
    pdf = make_pdf(tmp_path / "scan.pdf", pages=2)
    result = invoke(pdf, "-o", tmp_path / "scan.md", "--mode", "tiny", *tiny)
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "scan.md").read_text().strip()
    assert result.stdout == ""  # the document went to the file, not stdout
    assert not list(tmp_path.glob(f"*{TEMP_MARKER}*"))
    assert not list(tmp_path.glob(".*journal*"))  # journal removed once the output is complete


def test_single_input_without_output_writes_markdown_to_stdout(tmp_path: Path, tiny: list[str]) -> None:
    image = make_image(tmp_path / "note.png")
    result = invoke(image, "--mode", "tiny", "--quiet", *tiny)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip()
    assert list(tmp_path.iterdir()) == [image]


def test_directory_is_mirrored_into_the_output_tree(tmp_path: Path, tiny: list[str]) -> None:
    make_pdf(tmp_path / "in" / "a.pdf", pages=1)
    make_image(tmp_path / "in" / "sub" / "b.jpg", image_format="JPEG")
    make_tiff(tmp_path / "in" / "sub" / "deeper" / "c.tif", frames=2)
    result = invoke(tmp_path / "in", "-o", tmp_path / "out", "--mode", "tiny", "--batch-size", "4", *tiny)
    assert result.exit_code == 0, result.stderr
    written = sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*.md"))
    assert written == ["a.md", "sub/b.md", "sub/deeper/c.md"]


def test_several_inputs_without_output_dir_is_a_usage_error(tmp_path: Path, tiny: list[str]) -> None:
    a, b = make_pdf(tmp_path / "a.pdf", 1), make_pdf(tmp_path / "b.pdf", 1)
    result = invoke(a, b, *tiny)
    assert result.exit_code == 2
    assert "need -o DIR" in result.stderr


def test_pages_selects_pages_and_json_reports_them(tmp_path: Path, tiny: list[str]) -> None:
    pdf = make_pdf(tmp_path / "long.pdf", pages=6)
    out = tmp_path / "long.json"
    result = invoke(pdf, "-o", out, "--pages", "1-2,-1", "--mode", "tiny", *tiny)
    assert result.exit_code == 0, result.stderr
    document = json.loads(out.read_text())
    assert [p["number"] for p in document["pages"]] == [1, 2, 6]
    assert document["page_count"] == 6


@pytest.mark.parametrize("mode", MODE_ORDER)
def test_every_mode_reads_the_page_in_that_mode(tmp_path: Path, tiny: list[str], mode: str) -> None:
    # Both sides <= 640: the tiled modes read a single global view, which keeps this test fast.
    image = make_image(tmp_path / "p.png", size=(500, 600))
    out = tmp_path / "p.json"
    result = invoke(image, "-o", out, "--mode", mode, *tiny)
    assert result.exit_code == 0, result.stderr
    (page,) = pages_of(out)
    # The tiny checkpoint never stops by itself, so every page is retried one mode up and kept as degraded.
    assert page["mode"] == (next_larger_mode(mode) or mode)
    assert page["retried"] and page["degraded"] and page["stop_reason"] == "max_tokens"
    assert page["vision_tokens"] > 0 and page["text_tokens"] > 0


def test_auto_mode_uses_the_text_layer_and_picks_cheaper_modes_for_sparse_pages(
    tmp_path: Path, tiny: list[str]
) -> None:
    dense = " ".join(["lorem ipsum dolor sit amet"] * 40)
    pdf = make_pdf(tmp_path / "mixed.pdf", pages=2, size=(595, 842), texts=["Hi", dense])
    out = tmp_path / "mixed.json"
    result = invoke(pdf, "-o", out, "--mode", "auto", "--format", "json", *tiny)
    assert result.exit_code == 0, result.stderr
    sparse_page, dense_page = pages_of(out)
    assert MODE_ORDER.index(sparse_page["mode"]) <= MODE_ORDER.index(dense_page["mode"])


def test_json_output_matches_the_documented_schema(tmp_path: Path, tiny: list[str]) -> None:
    out = tmp_path / "doc.json"
    result = invoke(make_pdf(tmp_path / "doc.pdf", 2), "-o", out, "--mode", "tiny", *tiny)
    assert result.exit_code == 0, result.stderr
    jsonschema.validate(json.loads(out.read_text()), SCHEMA)


def test_jsonl_streams_schema_valid_lines_per_page_for_several_inputs(
    tmp_path: Path, tiny: list[str]
) -> None:
    make_pdf(tmp_path / "in" / "a.pdf", pages=2)
    make_image(tmp_path / "in" / "b.png")
    result = invoke(tmp_path / "in", "--format", "jsonl", "--mode", "tiny", "--batch-size", "2", *tiny)
    assert result.exit_code == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(Path(line["source"]).name, line["number"]) for line in lines] == [
        ("a.pdf", 1),
        ("a.pdf", 2),
        ("b.png", 1),
    ]
    for line in lines:
        jsonschema.validate(line, {"$defs": SCHEMA["$defs"], "$ref": "#/$defs/page_line"})


def test_existing_outputs_are_skipped_unless_overwrite(tmp_path: Path, tiny: list[str]) -> None:
    pdf = make_pdf(tmp_path / "a.pdf", pages=1)
    out = tmp_path / "a.md"
    out.write_text("keep me")
    assert invoke(pdf, "-o", out, *tiny).exit_code == 0
    assert out.read_text() == "keep me"
    assert invoke(pdf, "-o", out, "--overwrite", "--mode", "tiny", *tiny).exit_code == 0
    assert out.read_text() != "keep me"


def test_encrypted_pdf_converts_with_password(tmp_path: Path, tiny: list[str]) -> None:
    pdf = make_pdf(tmp_path / "secret.pdf", pages=1, password="pw")
    failed = invoke(pdf, "-o", tmp_path / "secret.md", *tiny)
    assert failed.exit_code == 1
    assert failed.stderr.splitlines()[0] == f"docconv: error: {pdf}: encrypted PDF; pass --password"
    assert not (tmp_path / "secret.md").exists()
    ok = invoke(pdf, "-o", tmp_path / "secret.md", "--password", "pw", "--mode", "tiny", *tiny)
    assert ok.exit_code == 0, ok.stderr
    assert (tmp_path / "secret.md").exists()


BAD_INPUTS = {
    "qpdf_bad1_not_a_pdf.pdf": "unsupported file type",
    "qpdf_empty_zero_pages.pdf": "no pages",
    "docling_2206.01062_pg3_encrypted.pdf": "pass --password",
    "gustavo_fig1_lfs_pointer.png": "git lfs pull",
    "pillow_broken.png": "damaged or truncated",
    "pillow_decompression_bomb.gif": "decompression bomb",
    "pillow_1x1_l.png": "too small",
}


def test_corpus_bad_inputs_fail_alone_with_one_line_each(
    corpus_root: Path, tmp_path: Path, tiny: list[str]
) -> None:
    good = make_pdf(tmp_path / "good.pdf", pages=1)
    bad = [corpus_root / "bad-inputs" / name for name in BAD_INPUTS]
    out = tmp_path / "out"
    result = invoke(good, *bad, "-o", out, "--mode", "tiny", "--quiet", *tiny)
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("docconv: error:")]
    assert len(errors) == len(BAD_INPUTS)
    for path, expected in zip(bad, BAD_INPUTS.values(), strict=True):
        assert any(str(path) in line and expected in line for line in errors), (path, errors)
    assert sorted(p.name for p in out.rglob("*")) == ["good.md"]  # nothing partial for the bad ones


def test_corpus_tricky_images_convert(corpus_root: Path, tmp_path: Path, tiny: list[str]) -> None:
    names = [
        "pillow_i_trns.png",
        "pillow_pil_sample_cmyk.jpg",
        "rapidocr_img_exif_orientation.jpg",
        "rapidocr_empty_black.jpg",
        "pillow_multipage.tiff",
    ]
    result = invoke(
        *[corpus_root / "bad-inputs" / n for n in names],
        "-o",
        tmp_path / "out",
        "--mode",
        "tiny",
        "--format",
        "json",
        *tiny,
    )
    assert result.exit_code == 0, result.stderr
    assert len(pages_of(tmp_path / "out" / "pillow_multipage.json")) == 3


def test_int4_quantized_engine_converts_and_says_so(tmp_path: Path, tiny: list[str]) -> None:
    image = make_image(tmp_path / "note.png")
    out = tmp_path / "note.md"
    result = invoke(image, "-o", out, "--mode", "tiny", "--quant", "int4", "-v", *tiny)
    assert result.exit_code == 0, result.stderr
    assert out.read_text().strip()
    assert "on cpu, bfloat16, quant int4" in result.stderr


def test_verbose_says_when_bfloat16_weights_are_exponent_coded(tmp_path: Path, tiny: list[str]) -> None:
    from deepseek_ocr.cpu.exponent_coding import can_code

    if not can_code():
        pytest.skip("no AVX512-BF16: bfloat16 stays uncoded")
    image = make_image(tmp_path / "note.png")
    result = invoke(image, "-o", tmp_path / "note.md", "--mode", "tiny", "--dtype", "bfloat16", "--quant", "none", "-v", *tiny)
    assert result.exit_code == 0, result.stderr
    assert "quant none" in result.stderr and "exponent-coded" in result.stderr


def test_engine_that_cannot_start_exits_3(tmp_path: Path) -> None:
    result = invoke(make_pdf(tmp_path / "a.pdf", 1), "--model", tmp_path / "no-such-model", "--device", "cpu")
    assert result.exit_code == 3
    assert "engine could not start" in result.stderr


def test_a_setting_the_model_refuses_is_named_by_its_option(tmp_path: Path, tiny_model_dir: Path) -> None:
    """The model package says "quant 4bit"; the user typed options, so docconv names those."""
    if torch.cuda.is_available():
        pytest.skip("CUDA is available: --quant int4 on cuda is a different refusal")
    args = ["--model", str(tiny_model_dir), "--device", "cuda", "--quant", "int4"]
    result = invoke(make_pdf(tmp_path / "a.pdf", 1), "-o", tmp_path / "a.md", *args)
    assert result.exit_code == 3
    assert "--device cuda requested but CUDA is not available; use --device cpu" in result.stderr
    assert not (tmp_path / "a.md").exists()


def test_bad_pages_value_is_a_usage_error(tmp_path: Path, tiny: list[str]) -> None:
    result = invoke(make_pdf(tmp_path / "a.pdf", 1), "--pages", "0", *tiny)
    assert result.exit_code == 2
    assert "--pages" in result.stderr


def test_corpus_documents_convert(corpus_root: Path, tmp_path: Path, tiny: list[str]) -> None:
    documents = corpus_root / "documents"
    inputs = [
        documents / "docling_multi_page.pdf",
        documents / "phototest-rotated-R.png",
        documents / "docling_webp-test.webp",
        documents / "docling_odf_presentation_01.odp.pdf",
    ]
    result = invoke(
        *inputs, "-o", tmp_path / "out", "--pages", "1", "--mode", "tiny", "--format", "json", *tiny
    )
    assert result.exit_code == 0, result.stderr
    for path in inputs:
        (page,) = pages_of(tmp_path / "out" / (path.stem + ".json"))
        assert page["mode"] in MODE_ORDER and page["width"] > 0


def test_tables_need_an_output_path(tmp_path: Path, tiny: list[str]) -> None:
    result = invoke(make_pdf(tmp_path / "a.pdf", 1), "--tables", *tiny)
    assert result.exit_code == 2
    assert "--tables" in result.stderr


def test_rerender_writes_table_csvs_from_saved_raw_output(corpus_root: Path, tmp_path: Path) -> None:
    raw = corpus_root / "raw-outputs" / "docling__deepseek_example.raw.md"
    result = invoke("rerender", raw, "-o", tmp_path / "example.md", "--tables")
    assert result.exit_code == 0, result.stderr
    csvs = sorted(tmp_path.glob("example_p*_t*.csv"))
    assert csvs and all(csv.read_text().count(",") > 0 for csv in csvs)
    assert "|" in (tmp_path / "example.md").read_text() or "<table" in (tmp_path / "example.md").read_text()


def test_rerender_of_a_missing_file_is_one_error_line(tmp_path: Path) -> None:
    result = invoke("rerender", tmp_path / "nope.raw.json")
    assert result.exit_code == 1
    assert result.stderr.startswith("docconv: error:") and len(result.stderr.splitlines()) == 1


def test_settings_precedence_cli_over_env_over_file(tmp_path: Path, tiny_model_dir: Path) -> None:
    (tmp_path / "config.toml").write_text('mode = "large"\nmax_tokens = 2\n')
    env = {"DOCCONV_CONFIG_DIR": str(tmp_path), "DOCCONV_MODEL": str(tiny_model_dir), "DOCCONV_MODE": "small"}
    pdf = make_pdf(tmp_path / "a.pdf", 1)
    from_env = runner.invoke(app, [str(pdf), "-o", str(tmp_path / "env.json"), "--device", "cpu"], env=env)
    assert from_env.exit_code == 0, from_env.stderr
    (page,) = pages_of(tmp_path / "env.json")
    assert (page["mode"], page["text_tokens"]) == (
        "base",
        2,
    )  # small from env, retried one up; 2 from the file
    from_cli = runner.invoke(
        app, [str(pdf), "-o", str(tmp_path / "cli.json"), "--device", "cpu", "--mode", "tiny"], env=env
    )
    assert from_cli.exit_code == 0, from_cli.stderr
    assert pages_of(tmp_path / "cli.json")[0]["mode"] == "small"  # tiny from the command line, retried one up


def test_bad_setting_in_environment_is_a_usage_error(tmp_path: Path) -> None:
    result = runner.invoke(app, [str(make_pdf(tmp_path / "a.pdf", 1))], env={"DOCCONV_BATCH_SIZE": "many"})
    assert result.exit_code == 2
    assert result.stderr.startswith("docconv: error: environment variable DOCCONV_BATCH_SIZE")


def test_unwritable_output_fails_that_input_only(tmp_path: Path, tiny: list[str]) -> None:
    (tmp_path / "blocker").write_text("a file where a directory is expected")
    result = invoke(
        make_pdf(tmp_path / "a.pdf", 1), "-o", tmp_path / "blocker" / "a.md", "--mode", "tiny", "-q", *tiny
    )
    assert result.exit_code == 1
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("docconv:")]
    assert line.startswith("docconv: error:") and "cannot write" in line


def test_trailing_slash_makes_a_new_output_directory_for_one_input(tmp_path: Path, tiny: list[str]) -> None:
    pdf = make_pdf(tmp_path / "scan.pdf", 1)
    result = invoke(pdf, "-o", f"{tmp_path / 'new'}/", "--mode", "tiny", *tiny)
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "new" / "scan.md").is_file()


def test_output_suffix_picks_the_format_and_a_mismatch_is_a_usage_error(
    tmp_path: Path, tiny: list[str]
) -> None:
    pdf = make_pdf(tmp_path / "scan.pdf", 1)
    assert invoke(pdf, "-o", tmp_path / "scan.html", "--mode", "tiny", *tiny).exit_code == 0
    assert "<" in (tmp_path / "scan.html").read_text()
    mismatch = invoke(pdf, "-o", tmp_path / "scan.md", "--format", "json", *tiny)
    assert mismatch.exit_code == 2
    assert "must end in .json" in mismatch.stderr


def test_offline_without_cached_weights_exits_3_with_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCCONV_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    result = invoke(make_pdf(tmp_path / "a.pdf", 1), "--offline", "--model", "some-org/not-cached", "-q")
    assert result.exit_code == 3
    assert "docconv models download some-org/not-cached" in result.stderr


def test_keep_raw_then_rerender_reproduces_the_markdown_without_the_model(
    tmp_path: Path, tiny: list[str]
) -> None:
    pdf = make_pdf(tmp_path / "doc.pdf", pages=2)
    converted = invoke(pdf, "-o", tmp_path / "doc.md", "--keep-raw", "--mode", "tiny", *tiny)
    assert converted.exit_code == 0, converted.stderr
    raw = tmp_path / "doc.raw.json"
    assert raw.is_file()
    rerendered = invoke("rerender", raw, "-o", tmp_path / "again.md")
    assert rerendered.exit_code == 0, rerendered.stderr
    assert (tmp_path / "again.md").read_text() == (tmp_path / "doc.md").read_text()
