"""An unexpected error inside the engine while reading a page: one error line naming the page, the
page's document failed (and resumable), the other documents converted, exit code 1; the
traceback only with -v. Runs the real tiny engine with a failure injected for chosen pages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pymupdf
import pytest
from typer.testing import CliRunner

from docconv.cli import app
from docconv.engines.base import PageJob
from docconv.engines.deepseek import DeepseekOcrEngine
from docconv.run import pipeline
from docconv.run.journal import journal_path

from ..helpers import engine_args, make_image

runner = CliRunner()

#: What torch raised on an AMD Zen 3 for SAM's first bfloat16 linear, with the C++ frames some
#: builds append: only its first line belongs in the error line.
ONEDNN_ERROR = (
    "could not create a primitive descriptor for the inner product forward propagation primitive. "
    "Run workload with environment variable ONEDNN_VERBOSE=all to get additional diagnostic information.\n"
    "Exception raised from create at ../aten/src/ATen/native/mkldnn/Linear.cpp:123 "
    "(most recent call first):\n"
    "frame #0: c10::Error::Error(...)"
)
ERROR_LINE_CAUSE = (
    "the engine failed: RuntimeError: could not create a primitive descriptor for the inner product forward "
    "propagation primitive. Run workload with environment variable ONEDNN_VERBOSE=all to get additional "
    "diagnostic information. (-v shows the traceback)"
)


@pytest.fixture(autouse=True)
def isolated_settings(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """The user's own config file and DOCCONV_* variables must not change what these tests see."""
    for name in [name for name in os.environ if name.startswith("DOCCONV_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("DOCCONV_CONFIG_DIR", str(tmp_path_factory.mktemp("config")))


@pytest.fixture
def tiny(tiny_model_dir: Path) -> list[str]:
    return engine_args(tiny_model_dir)


def landscape(job: PageJob) -> bool:
    return job.image.width > job.image.height


def fail_in_engine(
    monkeypatch: pytest.MonkeyPatch, fails: Callable[[PageJob], bool], error: BaseException | None = None
) -> list[list[PageJob]]:
    """The real engine, raising ``error`` (the oneDNN refusal by default) inside ``generate`` for any
    batch holding a page that ``fails``; returns the batches it was given, failed ones included."""
    original = DeepseekOcrEngine._generate_batch
    batches: list[list[PageJob]] = []

    def generate_batch(self, jobs, job_indices, on_token):  # noqa: ANN001, ANN202 (the engine's signature)
        batches.append(list(jobs))
        if any(fails(job) for job in jobs):
            raise error if error is not None else RuntimeError(ONEDNN_ERROR)
        return original(self, jobs, job_indices, on_token)

    monkeypatch.setattr(DeepseekOcrEngine, "_generate_batch", generate_batch)
    return batches


def make_mixed_pdf(path: Path) -> Path:
    """Page 1 portrait, page 2 landscape (the page the injected failure picks)."""
    pdf = pymupdf.open()
    for number, size in ((1, (298, 420)), (2, (420, 298))):
        pdf.new_page(width=size[0], height=size[1]).insert_text((36, 72), f"Page {number}", fontsize=18)
    pdf.save(path)
    pdf.close()
    return path


def portrait_image(path: Path) -> Path:
    return make_image(path, size=(120, 200))


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def outputs(directory: Path) -> list[str]:
    """The outputs written, without the hidden journals of unfinished documents."""
    return (
        sorted(p.name for p in directory.glob("*") if not p.name.startswith("."))
        if directory.exists()
        else []
    )


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("docconv: error:")]


def test_an_engine_error_fails_its_page_with_one_line_and_the_other_document_converts(
    tmp_path: Path, tiny: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    fail_in_engine(monkeypatch, landscape)
    bad, good = make_mixed_pdf(tmp_path / "a.pdf"), portrait_image(tmp_path / "b.png")
    out = tmp_path / "out"
    result = invoke(bad, good, "-o", out, "--mode", "tiny", *tiny)
    assert result.exit_code == 1
    assert error_lines(result.stderr) == [f"docconv: error: {bad}: page 2: {ERROR_LINE_CAUSE}"]
    assert "Traceback" not in result.stderr and "mkldnn/Linear.cpp" not in result.stderr
    assert f"failed: {bad}: page 2: the engine failed" in result.stderr  # in the summary too
    assert outputs(out) == ["b.md"]  # no a.md missing its page 2
    # Page 1 stays journaled, so the same command, once the engine reads page 2, only reads that.
    journal = journal_path(out / "a.md")
    assert [json.loads(line).get("number") for line in journal.read_text().splitlines()[1:]] == [1]
    monkeypatch.undo()
    again = invoke(bad, good, "-o", out, "--mode", "tiny", *tiny)
    assert again.exit_code == 0, again.stderr
    assert (out / "a.md").read_text().count("<!-- page") == 1 and not journal.exists()


def test_verbose_shows_the_traceback_of_an_engine_error(
    tmp_path: Path, tiny: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    fail_in_engine(monkeypatch, landscape)
    bad = make_mixed_pdf(tmp_path / "a.pdf")
    result = invoke(bad, "-o", tmp_path / "a.md", "--mode", "tiny", "-v", *tiny)
    assert result.exit_code == 1
    assert error_lines(result.stderr) == [f"docconv: error: {bad}: page 2: {ERROR_LINE_CAUSE}"]
    assert f"{bad} page 2: the engine failed:\nTraceback (most recent call last):" in result.stderr
    assert "in generate_batch" in result.stderr and "mkldnn/Linear.cpp" in result.stderr


@pytest.mark.parametrize("verbose", ["-v", "-vv"])
def test_an_engine_that_fails_on_every_page_reports_each_document_once(
    tmp_path: Path, tiny: list[str], monkeypatch: pytest.MonkeyPatch, verbose: str
) -> None:
    batches = fail_in_engine(monkeypatch, lambda job: True)
    documents = [make_mixed_pdf(tmp_path / f"{name}.pdf") for name in "abc"]
    result = invoke(*documents, "-o", tmp_path / "out", "--mode", "tiny", verbose, *tiny)
    assert result.exit_code == 1  # some inputs failed, not "the engine could not start"
    assert error_lines(result.stderr) == [
        f"docconv: error: {d}: page 1: {ERROR_LINE_CAUSE}" for d in documents
    ]
    assert len(batches) == 3  # a failed page ends its document: its later pages are not tried
    # -v shows the traceback once and the same error again in one line; -vv shows every one.
    assert result.stderr.count("Traceback (most recent call last)") == (1 if verbose == "-v" else 3)
    repeated = f"{documents[2]} page 1: the engine failed with the error above"
    assert (repeated in result.stderr) == (verbose == "-v")
    assert outputs(tmp_path / "out") == []


def test_a_failed_batch_is_read_again_page_by_page_so_only_the_failing_page_fails(
    tmp_path: Path, tiny: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    batches = fail_in_engine(monkeypatch, landscape)
    first, second = portrait_image(tmp_path / "first.png"), portrait_image(tmp_path / "second.png")
    bad = make_mixed_pdf(tmp_path / "mixed.pdf")
    out = tmp_path / "out"
    result = invoke(first, bad, second, "-o", out, "--mode", "tiny", "--batch-size", "4", "--quiet", *tiny)
    assert result.exit_code == 1
    assert error_lines(result.stderr) == [f"docconv: error: {bad}: page 2: {ERROR_LINE_CAUSE}"]
    assert outputs(out) == ["first.md", "second.md"]
    assert [len(batch) for batch in batches[:5]] == [4, 1, 1, 1, 1]  # the batch, then each of its pages


def test_a_failed_retry_keeps_the_first_degraded_read(
    tmp_path: Path, tiny: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The tiny checkpoint never stops by itself, so each page is retried one mode up: that read fails.
    fail_in_engine(monkeypatch, lambda job: job.mode != "tiny")
    image = portrait_image(tmp_path / "note.png")
    result = invoke(image, "-o", tmp_path / "note.json", "--mode", "tiny", *tiny)
    assert result.exit_code == 0, result.stderr
    assert not error_lines(result.stderr) and "Traceback" not in result.stderr
    assert (
        f"docconv: warning: {image}: page 1: the retry one mode up failed (RuntimeError: could not create"
        in result.stderr
    )
    (page,) = json.loads((tmp_path / "note.json").read_text())["pages"]
    assert (page["mode"], page["retried"], page["degraded"]) == ("tiny", False, True)


@pytest.mark.parametrize(("stop", "code"), [(KeyboardInterrupt(), 130), (SystemExit(143), 143)])
def test_ctrl_c_and_exits_inside_the_engine_still_stop_the_run(
    tmp_path: Path, tiny: list[str], monkeypatch: pytest.MonkeyPatch, stop: BaseException, code: int
) -> None:
    fail_in_engine(monkeypatch, lambda job: True, error=stop)
    result = runner.invoke(
        app, [str(portrait_image(tmp_path / "a.png")), "-o", str(tmp_path / "a.md"), *tiny]
    )
    assert result.exit_code == code
    assert not error_lines(result.stderr)


def test_an_unexpected_error_while_loading_the_engine_is_exit_3_in_one_line(
    tmp_path: Path, tiny: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise RuntimeError(ONEDNN_ERROR)

    monkeypatch.setattr("docconv.engines.deepseek.load_model", refuse)
    monkeypatch.setattr(pipeline, "_ENGINES", {})  # load anew, with the failure
    result = invoke(portrait_image(tmp_path / "a.png"), "-o", tmp_path / "a.md", *tiny)
    assert result.exit_code == 3
    (line,) = result.stderr.splitlines()
    assert line.startswith("docconv: error: the engine could not start: RuntimeError: could not create")
    assert line.endswith("(-v shows the traceback)")


#: Runs the docconv command with the engine failing on landscape pages (a subprocess cannot be monkeypatched).
FAILING_DOCCONV = """
import sys
from docconv.cli import main
from docconv.engines.deepseek import DeepseekOcrEngine

original = DeepseekOcrEngine._generate_batch

def generate_batch(self, jobs, job_indices, on_token):
    if any(job.image.width > job.image.height for job in jobs):
        raise RuntimeError({error!r})
    return original(self, jobs, job_indices, on_token)

DeepseekOcrEngine._generate_batch = generate_batch
sys.argv[0] = "docconv"
main()
"""


@pytest.mark.parametrize("verbose", [False, True])
def test_the_docconv_process_reports_an_engine_error_in_one_line(
    tmp_path: Path, tiny_model_dir: Path, verbose: bool
) -> None:
    bad, good = make_mixed_pdf(tmp_path / "a.pdf"), portrait_image(tmp_path / "b.png")
    environment = {key: value for key, value in os.environ.items() if not key.startswith("DOCCONV_")}
    environment["DOCCONV_CONFIG_DIR"] = str(tmp_path / "config")
    command = [sys.executable, "-c", FAILING_DOCCONV.format(error=ONEDNN_ERROR), str(bad), str(good)]
    command += ["-o", str(tmp_path / "out"), "--mode", "tiny", *(["-v"] if verbose else [])]
    result = subprocess.run(
        command + engine_args(tiny_model_dir), capture_output=True, text=True, env=environment, timeout=300
    )
    assert result.returncode == 1
    assert error_lines(result.stderr) == [f"docconv: error: {bad}: page 2: {ERROR_LINE_CAUSE}"]
    assert ("Traceback (most recent call last)" in result.stderr) == verbose
    assert outputs(tmp_path / "out") == ["b.md"]
