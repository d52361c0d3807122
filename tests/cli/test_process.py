"""The real ``docconv`` process: stdin, --from-list -0, SIGKILL then resume, Ctrl-C (exit 130)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from docconv.fsutil import TEMP_MARKER
from docconv.run.journal import journal_path

from ..helpers import engine_args, make_pdf

DOCCONV = [sys.executable, "-m", "docconv"]


@pytest.fixture(autouse=True)
def isolated_settings(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """The user's own config file and DOCCONV_* variables must not change what these tests see."""
    for name in [name for name in os.environ if name.startswith("DOCCONV_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("DOCCONV_CONFIG_DIR", str(tmp_path_factory.mktemp("config")))


def run(*args: object, stdin: bytes | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*DOCCONV, *map(str, args)], input=stdin, capture_output=True, cwd=cwd, timeout=300)


def start(*args: object) -> subprocess.Popen:
    return subprocess.Popen(
        [*DOCCONV, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=_default_sigint
    )


def _default_sigint() -> None:
    # A test run started in the background by a shell without job control (`.ci/run &`) ignores
    # SIGINT, and children inherit that: docconv would then never see the Ctrl-C these tests send.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def complete_lines(path: Path) -> int:
    return path.read_bytes().count(b"\n")


def wait_for_journaled_pages(
    journal: Path, pages: int, process: subprocess.Popen, timeout: float = 120
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if journal.exists() and complete_lines(journal) > pages:  # + header line
            return
        if process.poll() is not None:
            pytest.fail(f"docconv ended before journaling {pages} pages: {process.stderr.read().decode()}")
        time.sleep(0.02)
    process.kill()
    pytest.fail("no pages journaled in time")


def test_stdin_document_to_stdout_keeps_stderr_separate(tmp_path: Path, tiny_model_dir: Path) -> None:
    pdf = make_pdf(tmp_path / "in.pdf", pages=1).read_bytes()
    result = run("-", "--mode", "tiny", "--format", "jsonl", *engine_args(tiny_model_dir), stdin=pdf)
    assert result.returncode == 0, result.stderr.decode()
    (line,) = result.stdout.decode().splitlines()
    assert json.loads(line)["source"] == "-"
    assert b"\x1b[" not in result.stderr  # no live display (cursor control) when stderr is not a terminal
    assert b"summary" in result.stderr


def test_from_list_with_nul_separated_paths(tmp_path: Path, tiny_model_dir: Path) -> None:
    first = make_pdf(tmp_path / "docs" / "a b.pdf", pages=1)
    second = make_pdf(tmp_path / "docs" / "sub" / "c.pdf", pages=1)
    listing = f"{first.relative_to(tmp_path)}\0{second.relative_to(tmp_path)}\0".encode()
    result = run(
        "--from-list",
        "-",
        "-0",
        "-o",
        "out",
        "--mode",
        "tiny",
        "-q",
        *engine_args(tiny_model_dir),
        stdin=listing,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr.decode()
    assert result.stderr == b""  # --quiet: nothing on stderr when all goes well
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.md")) == [
        "docs/a b.md",
        "docs/sub/c.md",
    ]


def test_killed_run_resumes_and_every_page_appears_exactly_once(tmp_path: Path, tiny_model_dir: Path) -> None:
    pdf = make_pdf(tmp_path / "long.pdf", pages=6)
    out = tmp_path / "long.json"
    args = [pdf, "-o", out, "--mode", "tiny", "-v", *engine_args(tiny_model_dir)]
    process = start(*args)
    wait_for_journaled_pages(journal_path(out), 2, process)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not out.exists()
    journaled = complete_lines(journal_path(out)) - 1  # a torn last line is not a journaled page

    resumed = run(*args)
    assert resumed.returncode == 0, resumed.stderr.decode()
    assert f"resuming, {journaled} of 6 pages already done" in resumed.stderr.decode()
    redone = [n for n in range(1, 7) if f"long.pdf page {n}:" in resumed.stderr.decode()]
    assert redone == list(range(journaled + 1, 7))
    assert [page["number"] for page in json.loads(out.read_text())["pages"]] == list(range(1, 7))
    assert not journal_path(out).exists()
    assert not list(tmp_path.glob(f"*{TEMP_MARKER}*"))


@pytest.mark.parametrize(
    ("sent", "exit_code", "said"), [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")]
)
def test_ctrl_c_or_sigterm_keeps_finished_pages_and_leaves_no_partial_files(
    tmp_path: Path, tiny_model_dir: Path, sent: signal.Signals, exit_code: int, said: str
) -> None:
    pdf = make_pdf(tmp_path / "long.pdf", pages=40)  # long enough that the signal lands mid-document
    out = tmp_path / "long.md"
    process = start(pdf, "-o", out, "--mode", "tiny", *engine_args(tiny_model_dir))
    wait_for_journaled_pages(journal_path(out), 1, process)
    process.send_signal(sent)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == exit_code
    assert said in stderr.decode().splitlines()[-1]
    assert "Traceback" not in stderr.decode()
    assert not out.exists()
    assert journal_path(out).exists()
    assert not list(tmp_path.glob(f"*{TEMP_MARKER}*"))
