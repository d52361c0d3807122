"""``docconv eval --predictions``: saved outputs scored against the truth without a model."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from docconv.cli import app
from docconv.output.document import Document, Page
from docconv.output.raw import write_raw_file
from docconv.output.writers import page_jsonl_line

from .manifests import write_manifest

runner = CliRunner()

TRUTH = [
    ("the cat sat on the mat", 650),  # 600-700
    ("alpha beta gamma delta", 1250),  # 1200-1300
    ("one two three four", 2000),  # outside the default buckets
]
GROUNDED = "<|ref|>text<|/ref|><|det|>[[10, 10, 990, 300]]<|/det|>\nalpha beta gamma"


@pytest.fixture(autouse=True)
def isolated_settings(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [name for name in os.environ if name.startswith("DOCCONV_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("DOCCONV_CONFIG_DIR", str(tmp_path_factory.mktemp("config")))


def invoke(*args: object):
    return runner.invoke(app, ["eval", *map(str, args)], catch_exceptions=False)


def page(number: int, mode: str, raw: str, valid: int, side: int = 640) -> Page:
    return Page(
        number=number,
        width=side,
        height=side,
        mode=mode,
        vision_tokens=valid,
        valid_vision_tokens=valid,
        raw=raw,
    )


def saved_outputs(directory: Path) -> Path:
    """What a GPU machine's conversion runs left: tiny pages as --keep-raw files, small as one JSONL.

    The sources are the paths on that machine: only their last components match the truth here.
    """
    elsewhere = "/gpu-box/runs/compressed"
    tiny = {1: "the cat sat on a hat", 2: "alpha beta", 3: "one two"}
    for number, raw in tiny.items():
        source = f"{elsewhere}/page_{number:04d}.png"
        write_raw_file(
            directory / "tiny" / f"page_{number:04d}.raw.json",
            Document(source, [page(1, "tiny", raw, 64)], 1),
        )
    lines = [
        page_jsonl_line(f"{elsewhere}/page_0001.png", page(1, "small", "the cat sat on the mat", 100)),
        page_jsonl_line(f"{elsewhere}/page_0002.png", page(1, "small", GROUNDED, 100)),
    ]
    (directory / "small").mkdir(parents=True)
    (directory / "small" / "run.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return directory


def test_saved_outputs_are_scored_with_the_values_computed_by_hand(tmp_path: Path) -> None:
    write_manifest(tmp_path / "compressed", TRUTH)
    outputs = saved_outputs(tmp_path / "outputs")
    result = invoke(
        tmp_path / "compressed", "--predictions", outputs, "--json", "--model", tmp_path / "no-model"
    )
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["modes"] == ["tiny", "small"]  # the modes found, cheapest first
    rows = {bucket["label"]: bucket["modes"] for bucket in report["buckets"]}
    # page 1, tiny: truth words {the, cat, sat, on, mat}, 4 found; 4 edits over 22 characters; 650 / 64
    assert rows["600-700"]["tiny"] == {
        "pages": 1,
        "precision": 0.8,
        "compression": round(650 / 64, 4),
        "edit_distance": round(4 / 22, 4),
    }
    assert rows["600-700"]["small"] == {
        "pages": 1,
        "precision": 1.0,
        "compression": 6.5,
        "edit_distance": 0.0,
    }
    # page 2, tiny: 2 of 4 words; small: the grounded output reads "alpha beta gamma" = 3 of 4
    assert rows["1200-1300"]["tiny"]["precision"] == 0.5
    assert rows["1200-1300"]["small"]["precision"] == 0.75
    assert rows["1200-1300"]["small"]["edit_distance"] == round(6 / 22, 4)  # " delta" missing
    assert rows["800-900"]["tiny"]["pages"] == 0
    # page 3 is in no bucket: only in "all" (tiny: 0.8, 0.5, 0.5)
    assert report["outside_buckets"] == 1
    assert report["all"]["modes"]["tiny"]["precision"] == 0.6
    assert report["all"]["modes"]["small"]["pages"] == 2
    # <=10x: both small pages (6.5x, 12.5x? no: 1250 / 100 = 12.5x is out) -> page 1 small only
    assert (
        report["summary"]["at_most_10x"]["pages"] == 1
        and report["summary"]["at_most_10x"]["precision"] == 1.0
    )
    # ~20x: page 2 tiny at 1250 / 64 = 19.5x
    assert report["summary"]["about_20x"] == {
        "band": [18.0, 22.0],
        "pages": 1,
        "precision": 0.5,
        "compression": round(1250 / 64, 4),
        "edit_distance": round(12 / 22, 4),
    }


def test_modes_restrict_the_saved_outputs_scored(tmp_path: Path) -> None:
    write_manifest(tmp_path / "compressed", TRUTH)
    outputs = saved_outputs(tmp_path / "outputs")
    result = invoke(tmp_path / "compressed", "--predictions", outputs, "--modes", "small", "--format", "csv")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "bucket,low,high,mode,pages,precision,compression,edit_distance"
    assert {line.split(",")[3] for line in lines[1:]} == {"small"}
    assert "600-700,600,700,small,1,1.0,6.5,0.0" in lines


def test_a_prediction_matching_two_truth_pages_equally_is_an_error(tmp_path: Path) -> None:
    write_manifest(tmp_path / "truth" / "a", [("same name", 650)])
    write_manifest(tmp_path / "truth" / "b", [("same name", 650)])
    outputs = tmp_path / "outputs"
    write_raw_file(outputs / "x.raw.json", Document("page_0001.png", [page(1, "tiny", "same name", 64)], 1))
    write_raw_file(outputs / "y.raw.json", Document("/far/b/page_0001.png", [page(1, "tiny", "same", 64)], 1))
    result = invoke(tmp_path / "truth", "--predictions", outputs, "--json")
    assert result.exit_code == 1
    assert "matches 2 ground-truth pages equally" in result.stderr
    report = json.loads(result.stdout)
    assert [(p["source"].split(os.sep)[-2], p["precision"]) for p in report["pages"]] == [("b", 0.5)]


def test_truth_without_token_counts_is_counted_with_the_checkpoint_tokenizer(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    from deepseek_ocr.tokenization import DeepseekOcrTokenizer

    image = tmp_path / "truth" / "note.png"
    image.parent.mkdir()
    Image.new("RGB", (640, 640), "white").save(image)
    text = "A sidecar holds the text of this page, in words the tokenizer counts."
    (tmp_path / "truth" / "note.txt").write_text(text, encoding="utf-8")
    outputs = tmp_path / "outputs"
    write_raw_file(outputs / "note.raw.json", Document("note.png", [page(1, "small", text, 100)], 1))
    result = invoke(tmp_path / "truth", "--predictions", outputs, "--json", "--model", tiny_model_dir)
    assert result.exit_code == 0, result.stderr
    [scored] = json.loads(result.stdout)["pages"]
    assert scored["text_tokens"] == DeepseekOcrTokenizer.from_file(tiny_model_dir).count_tokens(text)
    assert scored["precision"] == 1.0


def test_nothing_matching_is_a_failure_naming_the_directory(tmp_path: Path) -> None:
    write_manifest(tmp_path / "truth", TRUTH)
    outputs = tmp_path / "outputs"
    write_raw_file(outputs / "x.raw.json", Document("other.png", [page(1, "tiny", "x", 64)], 1))
    result = invoke(tmp_path / "truth", "--predictions", outputs, "--json")
    assert result.exit_code == 1
    assert "no saved output matches a ground-truth page" in result.stderr


def test_plot_draws_a_png(tmp_path: Path) -> None:
    write_manifest(tmp_path / "compressed", TRUTH)
    outputs = saved_outputs(tmp_path / "outputs")
    plot = tmp_path / "plot.png"
    result = invoke(
        tmp_path / "compressed", "--predictions", outputs, "-o", tmp_path / "r.md", "--plot", plot
    )
    assert result.exit_code == 0, result.stderr
    with Image.open(plot) as drawn:
        assert drawn.format == "PNG" and drawn.width > 400
    assert (tmp_path / "r.md").read_text().startswith("| text tokens |")


def test_plot_without_matplotlib_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(__import__("sys").modules, "matplotlib.figure", None)
    write_manifest(tmp_path / "compressed", TRUTH)
    result = invoke(tmp_path / "compressed", "--predictions", tmp_path, "--plot", tmp_path / "p.png")
    assert result.exit_code == 2
    assert "--plot needs matplotlib: pip install 'docconv[eval]'" in result.stderr


def test_the_table_in_a_pipe_is_one_record_per_row_and_the_summary_goes_to_stderr(tmp_path: Path) -> None:
    write_manifest(tmp_path / "compressed", TRUTH)
    outputs = saved_outputs(tmp_path / "outputs")
    result = invoke(tmp_path / "compressed", "--predictions", outputs, "--buckets", "600-1300/350")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == [
        "600-950\t80.0%\t10.2x\t1\t100.0%\t6.5x\t1",
        "950-1300\t50.0%\t19.5x\t1\t75.0%\t12.5x\t1",
        "all\t60.0%\t20.3x\t3\t87.5%\t9.5x\t2",  # (650 + 1250 + 2000) / 64 / 3
    ]
    assert (
        "precision at <=10x: 100.0% (1 page reads) / at ~20x (18-22x): 50.0% (1 page reads)" in result.stderr
    )
    assert "1 pages outside the buckets" in result.stderr


def test_the_table_written_to_a_file_keeps_its_summary(tmp_path: Path) -> None:
    write_manifest(tmp_path / "compressed", TRUTH)
    outputs = saved_outputs(tmp_path / "outputs")
    result = invoke(tmp_path / "compressed", "--predictions", outputs, "-o", tmp_path / "report.txt")
    assert result.exit_code == 0, result.stderr
    text = (tmp_path / "report.txt").read_text()
    assert "text" in text and "1200-1300" in text and "precision at <=10x: 100.0%" in text
