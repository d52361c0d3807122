"""``--ray``: the run on a real local Ray cluster of 2 CPUs with the tiny checkpoint.

One cluster serves the whole module (starting Ray costs seconds): in-process runs reuse it, and
the runs started as separate processes (to be killed) join it by its address.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from typer.testing import CliRunner

from docconv.cli import app
from docconv.fsutil import TEMP_MARKER
from docconv.run.journal import journal_path

from ..helpers import engine_args, make_image, make_pdf

ray = pytest.importorskip("ray", reason="--ray needs the docconv[ray] extra")
pytest.importorskip("ray.data", reason="--ray needs the docconv[ray] extra")

pytestmark = pytest.mark.slow
runner = CliRunner()
DOCCONV = [sys.executable, "-m", "docconv"]


@pytest.fixture(scope="module")
def cluster() -> str:
    """A local Ray of 2 CPUs for this module; its address, for runs in other processes."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture(autouse=True)
def isolated_settings(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [name for name in os.environ if name.startswith("DOCCONV_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("DOCCONV_CONFIG_DIR", str(tmp_path_factory.mktemp("config")))


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def start(*args: object) -> subprocess.Popen:
    return subprocess.Popen([*DOCCONV, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def journaled_pages(journal: Path) -> set[int]:
    """Pages a journal holds durably (a torn last line is not one)."""
    if not journal.exists():
        return set()
    lines = journal.read_bytes().split(b"\n")[1:-1]
    pages = set()
    for line in lines:
        try:
            pages.add(json.loads(line)["number"])
        except (ValueError, KeyError):
            break
    return pages


def wait_until(condition, process: subprocess.Popen, what: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if process.poll() is not None:
            pytest.fail(f"docconv ended before {what}: {process.stderr.read().decode()}")
        time.sleep(0.05)
    process.kill()
    pytest.fail(f"not in time: {what}")


def finished_in_log(log: str, source: str, pages: int) -> list[int]:
    """How often ``-v`` logged each page of ``source`` as finished (index 0 = page 1)."""
    return [log.count(f"{source} page {n}: mode") for n in range(1, pages + 1)]


def test_ray_local_gives_the_local_run_outputs_byte_for_byte(
    cluster: str, tmp_path: Path, tiny_model_dir: Path
) -> None:
    tree = tmp_path / "in"
    make_pdf(tree / "a.pdf", pages=3)
    make_pdf(tree / "sub" / "b.pdf", pages=2, texts=["Second document", "and its last page"])
    make_image(tree / "sub" / "deeper" / "c.png", text="An image page")
    flags = [*engine_args(tiny_model_dir), "--keep-raw", "--format", "json"]

    local = invoke(tree, "-o", tmp_path / "local", *flags)
    on_ray = invoke(tree, "-o", tmp_path / "ray", "--ray", "local", *flags)

    assert local.exit_code == 0, local.output
    assert on_ray.exit_code == 0, on_ray.output
    local_files = sorted(
        p.relative_to(tmp_path / "local") for p in (tmp_path / "local").rglob("*") if p.is_file()
    )
    ray_files = sorted(p.relative_to(tmp_path / "ray") for p in (tmp_path / "ray").rglob("*") if p.is_file())
    assert ray_files == local_files
    assert len(local_files) == 6  # three documents, each with its raw file; no journal or temporary left
    for name in local_files:
        local_doc, ray_doc = (tmp_path / "local" / name).read_text(), (tmp_path / "ray" / name).read_text()
        if name.suffix == ".json":  # the seconds a page took differ between any two runs
            local_doc, ray_doc = _without_seconds(local_doc), _without_seconds(ray_doc)
        assert ray_doc == local_doc, name


def _without_seconds(text: str) -> str:
    document = json.loads(text)
    for page in document["pages"]:
        page.pop("seconds")
    return json.dumps(document)


def test_a_killed_ray_run_rerun_reads_every_page_exactly_once(
    cluster: str, tmp_path: Path, tiny_model_dir: Path
) -> None:
    pdf = make_pdf(tmp_path / "long.pdf", pages=8)
    out = tmp_path / "out" / "long.json"
    args = [pdf, "-o", out, "--mode", "tiny", "-v", *engine_args(tiny_model_dir)]
    process = start(*args, "--ray", cluster)
    wait_until(lambda: len(journaled_pages(journal_path(out))) >= 2, process, "journaling 2 pages")
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not out.exists()
    before = journaled_pages(journal_path(out))
    assert before and len(before) < 8, before

    rerun = invoke(*args, "--ray", "local")

    assert rerun.exit_code == 0, rerun.output
    assert f"resuming, {len(before)} of 8 pages already done" in rerun.output
    redone = finished_in_log(rerun.output, str(pdf), 8)
    assert redone == [0 if n in before else 1 for n in range(1, 9)]
    assert [page["number"] for page in json.loads(out.read_text())["pages"]] == list(range(1, 9))
    assert not journal_path(out).exists()
    assert not list(out.parent.glob(f"*{TEMP_MARKER}*"))


def read_actor_processes() -> list[psutil.Process]:
    """The OCR actors of the module's cluster: worker processes under this test process."""
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if "ReadStage" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.Error:
            continue
    return found


def test_a_killed_ocr_worker_is_replaced_and_no_page_is_lost(
    cluster: str, tmp_path: Path, tiny_model_dir: Path
) -> None:
    pdf = make_pdf(tmp_path / "doc.pdf", pages=8)
    out = tmp_path / "doc.json"
    process = start(pdf, "-o", out, "--mode", "tiny", "-v", "--ray", cluster, *engine_args(tiny_model_dir))
    wait_until(lambda: len(journaled_pages(journal_path(out))) >= 2, process, "journaling 2 pages")
    victims = read_actor_processes()
    assert len(victims) == 1
    victims[0].kill()  # what an out-of-memory kill or a lost node does to it

    stdout, stderr = process.communicate(timeout=300)

    log = stderr.decode()
    assert process.returncode == 0, log
    assert [page["number"] for page in json.loads(out.read_text())["pages"]] == list(range(1, 9))
    assert finished_in_log(log, str(pdf), 8) == [1] * 8
    assert not victims[0].is_running()


def test_a_broken_input_is_reported_and_the_other_documents_are_written(
    cluster: str, tmp_path: Path, tiny_model_dir: Path
) -> None:
    tree = tmp_path / "in"
    make_pdf(tree / "good.pdf", pages=1)
    (tree / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)

    result = invoke(tree, "-o", tmp_path / "out", "--ray", "local", *engine_args(tiny_model_dir))

    assert result.exit_code == 1, result.output
    assert "broken.png" in result.output
    assert (tmp_path / "out" / "good.md").exists()
    assert not (tmp_path / "out" / "broken.md").exists()


def test_outputs_to_an_fsspec_url_are_uploaded_whole_and_a_rerun_skips_them(
    cluster: str, tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # where the staging directory goes
    tree = tmp_path / "in"
    make_pdf(tree / "sub" / "a.pdf", pages=1)
    url = f"file://{tmp_path}/bucket/out/"
    args = [tree, "-o", url, "--ray", "local", "--keep-raw", "-v", *engine_args(tiny_model_dir)]

    first = invoke(*args)
    again = invoke(*args)

    assert first.exit_code == 0, first.output
    uploaded = sorted(p.relative_to(tmp_path / "bucket" / "out") for p in (tmp_path / "bucket").rglob("*.*"))
    assert [p.as_posix() for p in uploaded] == ["sub/a.md", "sub/a.raw.json"]
    assert (tmp_path / "bucket" / "out" / "sub" / "a.md").read_text().strip()
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]  # nothing left staged
    assert again.exit_code == 0, again.output
    assert "exists, skipped" in again.output
