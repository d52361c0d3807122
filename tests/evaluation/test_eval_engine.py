"""``docconv eval`` end to end with the tiny real checkpoint: the numbers are noise, the layout,
the buckets, the JSON and the resumption are not."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from docconv.cli import app
from docconv.evaluation.progress import EvalProgress
from docconv.run.journal import journal_path

from ..conftest import REPO
from ..helpers import engine_args
from .manifests import write_manifest

runner = CliRunner()
TRUTH = [
    ("the cat sat on the mat and looked at the dog", 650),
    ("one two three four five six seven eight nine ten", 1250),
]


@pytest.fixture(autouse=True)
def isolated_settings(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [name for name in os.environ if name.startswith("DOCCONV_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("DOCCONV_CONFIG_DIR", str(tmp_path_factory.mktemp("config")))
    monkeypatch.setenv("DOCCONV_CACHE", str(tmp_path_factory.mktemp("cache")))


def invoke(*args: object):
    return runner.invoke(app, ["eval", *map(str, args)], catch_exceptions=False)


def journal_lines(report: Path) -> list[str]:
    return journal_path(report).read_text(encoding="utf-8").splitlines()


def interrupt_after(monkeypatch: pytest.MonkeyPatch, scored: int) -> None:
    """Ctrl-C right after the ``scored``-th page x mode result is journaled."""
    original = EvalProgress.advance
    count = {"n": 0}

    def advance(self: EvalProgress) -> None:
        original(self)
        count["n"] += 1
        if count["n"] == scored:
            raise KeyboardInterrupt

    monkeypatch.setattr(EvalProgress, "advance", advance)


def test_an_interrupted_eval_resumes_and_reports_every_page_in_each_mode(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    compressed = tmp_path / "compressed"
    write_manifest(compressed, TRUTH)
    report = tmp_path / "report.json"
    args = [compressed, "-o", report, "--batch-size", "2", *engine_args(tiny_model_dir)]

    interrupt_after(monkeypatch, 2)  # the first batch: both pages in tiny
    stopped = invoke(*args)
    assert stopped.exit_code == 130
    assert "scored pages are kept, run the same command again to resume" in stopped.stderr
    assert not report.exists()
    header, *kept = journal_lines(report)
    assert json.loads(header)["docconv_journal"] == 1 and len(kept) == 2
    with journal_path(report).open("a", encoding="utf-8") as journal:
        journal.write('{"key": "torn by a kill in the middle of a wri')  # a half-written last line

    monkeypatch.undo()
    resumed = invoke(*args)
    assert resumed.exit_code == 0, resumed.stderr
    assert "resuming: 2 of 4 page x mode results already scored" in resumed.stderr
    assert "ETA" in resumed.stderr
    assert not journal_path(report).exists()  # the report holds every result now

    data = json.loads(report.read_text())
    assert data["modes"] == ["tiny", "small"] and data["model"] == str(tiny_model_dir)
    assert [b["label"] for b in data["buckets"]] == [f"{low}-{low + 100}" for low in range(600, 1300, 100)]
    assert [(p["number"], p["mode"]) for p in data["pages"]] == [
        (n, m) for n in (1, 2) for m in ("tiny", "small")
    ]
    assert {p["mode"]: p["vision_tokens"] for p in data["pages"]} == {"tiny": 64, "small": 100}
    for journaled in map(json.loads, kept):
        assert journaled in data["pages"]  # the resumed run reused them as they were
    rows = {b["label"]: b["modes"] for b in data["buckets"]}
    assert rows["600-700"]["tiny"]["pages"] == 1 and rows["600-700"]["tiny"]["compression"] == round(
        650 / 64, 4
    )
    assert rows["1200-1300"]["small"]["compression"] == 12.5
    assert rows["1200-1300"]["tiny"]["compression"] == round(1250 / 64, 4)
    assert rows["900-1000"]["small"] == {
        "pages": 0,
        "precision": None,
        "compression": None,
        "edit_distance": None,
    }
    for page in data["pages"]:
        assert 0.0 <= page["precision"] <= 1.0 and 0.0 <= page["edit_distance"] <= 1.0
    # ~20x holds the tiny read of the 1250-token page (19.5x); <=10x the small read of 650 (6.5x)
    assert data["summary"]["about_20x"]["pages"] == 1 and data["summary"]["at_most_10x"]["pages"] == 1


def test_a_killed_eval_continues_where_it_stopped(tmp_path: Path, tiny_model_dir: Path) -> None:
    compressed = tmp_path / "compressed"
    write_manifest(compressed, [*TRUTH, ("a third page of text", 800)])
    report = tmp_path / "report.md"
    args = [compressed, "-o", report, "--modes", "tiny", "--batch-size", "1", *engine_args(tiny_model_dir)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "docconv", "eval", *map(str, args)],
        cwd=REPO,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    for line in process.stderr:
        if "scored 1/3" in line:
            process.send_signal(signal.SIGTERM)  # each read takes a second or more: it is mid-run
            break
    assert process.wait(timeout=120) == 143
    assert "terminated; scored pages are kept" in process.stderr.read()
    kept = len(journal_lines(report)) - 1
    assert 1 <= kept < 3

    resumed = invoke(*args)
    assert resumed.exit_code == 0, resumed.stderr
    assert f"resuming: {kept} of 3" in resumed.stderr
    table = report.read_text()
    assert table.startswith("| text tokens | precision tiny | compression tiny | pages tiny |\n")
    assert "| 600-700 |" in table and "| 1200-1300 |" in table and "| all |" in table


def test_an_engine_that_cannot_start_is_exit_3(tmp_path: Path) -> None:
    write_manifest(tmp_path / "compressed", TRUTH[:1])
    result = invoke(tmp_path / "compressed", "--model", tmp_path / "no-such-checkpoint", "--device", "cpu")
    assert result.exit_code == 3
    assert "the engine could not start" in result.stderr


def test_bad_options_are_usage_errors(tmp_path: Path) -> None:
    write_manifest(tmp_path / "compressed", TRUTH[:1])
    for args, message in [
        (["--modes", "tiny,huge"], "unknown mode huge"),
        (["--buckets", "700-600"], "--buckets '700-600'"),
        (["--json", "--format", "csv"], "--json and --format csv disagree"),
        (["--predictions", tmp_path / "none"], "not a directory"),
    ]:
        result = invoke(tmp_path / "compressed", *args)
        assert result.exit_code == 2 and message in result.stderr, result.stderr


def test_no_scoreable_truth_is_exit_1(tmp_path: Path) -> None:
    result = invoke(tmp_path / "missing.json")
    assert result.exit_code == 1
    assert "no such file or directory" in result.stderr


def test_compress_then_eval_reads_the_manifest_compress_wrote(tmp_path: Path, tiny_model_dir: Path) -> None:
    source = tmp_path / "notes.txt"
    source.write_text(" ".join(f"Sentence {n} of the notes is plain English text." for n in range(90)))
    compressed = tmp_path / "compressed"
    made = runner.invoke(
        app,
        ["compress", str(source), "-o", str(compressed), "--mode", "tiny", "--model", str(tiny_model_dir)],
    )
    assert made.exit_code == 0, made.stderr
    manifest = json.loads((compressed / "manifest.json").read_text())
    report = tmp_path / "report.json"
    result = invoke(compressed, "--modes", "tiny", "-o", report, *engine_args(tiny_model_dir))
    assert result.exit_code == 0, result.stderr
    pages = json.loads(report.read_text())["pages"]
    assert [(p["number"], p["text_tokens"]) for p in pages] == [
        (number, page["text_tokens"]) for number, page in enumerate(manifest["pages"], start=1)
    ]
    for page, made_page in zip(pages, manifest["pages"], strict=True):
        assert page["vision_tokens"] == made_page["vision_tokens"] == 64
        assert page["compression"] == round(made_page["text_tokens"] / 64, 4)
