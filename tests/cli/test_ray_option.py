"""``--ray``'s checks before any run: the extra missing, companions without it, no -o."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from docconv.cli import app

from ..helpers import make_pdf

runner = CliRunner()


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_ray_without_the_extra_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets where it is not installed
    result = invoke(make_pdf(tmp_path / "a.pdf"), "-o", tmp_path / "out/", "--ray", "local")
    assert result.exit_code == 2
    assert "pip install 'docconv[ray]'" in result.output
    assert not (tmp_path / "out").exists()


def test_ray_workers_without_ray_is_a_usage_error(tmp_path: Path) -> None:
    result = invoke(make_pdf(tmp_path / "a.pdf"), "-o", tmp_path / "a.md", "--ray-workers", "2")
    assert result.exit_code == 2
    assert "add --ray ADDRESS" in result.output


def test_ray_needs_an_output_path(tmp_path: Path) -> None:
    pytest.importorskip("ray.data", reason="--ray needs the docconv[ray] extra")
    result = invoke(make_pdf(tmp_path / "a.pdf"), "--ray", "local")
    assert result.exit_code == 2
    assert "give -o" in result.output
