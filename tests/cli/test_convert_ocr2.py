"""DeepSeek-OCR-2 from the command line: the registry's id through the (fake) hub, every OCR-2 mode,
the modes it has not, and what ``docconv doctor`` says about it; on the tiny random OCR-2 checkpoint."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from docconv.cli.app import app
from docconv.cli.doctor import report_rows
from docconv.cli.exit_codes import ExitCode
from docconv.cli.settings import load_settings
from docconv.models import manage, registry

from ..fake_hub import FakeHub, FakeRepo
from ..helpers import make_image

OCR2_ID = "deepseek-community/DeepSeek-OCR-2"
runner = CliRunner()


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Temporary caches and config; no DOCCONV_* settings or HF offline flag from the caller."""
    for name in [name for name in os.environ if name.startswith("DOCCONV_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("DOCCONV_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("DOCCONV_CACHE", str(tmp_path / "docconv-cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-home" / "hub"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


@pytest.fixture
def hub(tiny_ocr2_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    """The tiny OCR-2 checkpoint served under the registry's OCR-2 id."""
    with FakeHub() as server:
        server.add_repo(FakeRepo.from_directory(OCR2_ID, tiny_ocr2_dir))
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        yield server


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def convert_args(model: str, page: Path, out: Path, mode: str) -> list[object]:
    return [page, "-o", out, "--format", "json", "--mode", mode, "--model", model, "--device", "cpu"]


def test_registry_id_downloads_verifies_and_reads_every_ocr2_mode_offline(
    hub: FakeHub, tmp_path: Path
) -> None:
    assert registry.REGISTRY[OCR2_ID].runnable
    assert invoke("models", "download", OCR2_ID).exit_code == 0
    assert invoke("models", "verify", OCR2_ID).exit_code == 0
    hub.stop()  # from here on, the cache alone
    page = make_image(tmp_path / "page.png", size=(1000, 500), text="Invoice 2026")  # gundam: 2 tiles

    for mode in ("base", "gundam", "auto"):
        out = tmp_path / f"{mode}.json"
        result = invoke(*convert_args(OCR2_ID, page, out, mode), "--offline", "--max-tokens", "2", "--quiet")
        assert result.exit_code == 0, result.stderr
        [read] = json.loads(out.read_text())["pages"]
        # A 2-token page is degraded and retried one OCR-2 mode up: base -> gundam, gundam as itself.
        assert read["mode"] in (("base", "gundam") if mode == "auto" else ("gundam",))
        assert read["vision_tokens"] == (256 if read["mode"] == "base" else 256 + 2 * 144)


def test_a_local_ocr2_directory_reads_in_base_mode(tiny_ocr2_dir: Path, tmp_path: Path) -> None:
    page = make_image(tmp_path / "note.png", size=(300, 200))
    out = tmp_path / "note.json"

    result = invoke(*convert_args(str(tiny_ocr2_dir), page, out, "base"), "--max-tokens", "2", "--quiet")

    assert result.exit_code == 0, result.stderr
    [read] = json.loads(out.read_text())["pages"]
    assert read["mode"] == "gundam"  # 2 tokens leave the page degraded: retried one OCR-2 mode up
    assert read["vision_tokens"] == 256  # a page within one tile gets no tiles, in either mode


def test_a_mode_ocr2_lacks_is_one_line_naming_the_modes_it_has(tiny_ocr2_dir: Path, tmp_path: Path) -> None:
    page = make_image(tmp_path / "note.png")

    result = invoke(*convert_args(str(tiny_ocr2_dir), page, tmp_path / "note.json", "tiny"))

    assert result.exit_code == ExitCode.UNAVAILABLE
    assert "--mode tiny: deepseek-ocr-2 reads only the modes base, gundam" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "note.json").exists()


def test_doctor_tells_an_ocr2_checkpoint_from_its_config(
    tiny_ocr2_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manage.import_model(tiny_ocr2_dir, as_id="test/named-like-v1")
    monkeypatch.setenv("DOCCONV_MODEL", "test/named-like-v1")

    report = dict(report_rows(load_settings()))

    assert report["model family"].startswith("deepseek-ocr-2")
    assert "quant none" in report["would use"]
    assert "DeepSeek-OCR-2 through transformers" in report["because"]
