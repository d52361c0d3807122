"""Missing shared data skips a test on a developer's machine and fails it under CI.

Runs pytest in a subprocess on a small test file that uses every route in ``conftest.py``
(fixtures, :func:`require_shared`, :func:`shared_params`, :func:`needs_shared`), with
``DOCCONV_SHARED`` pointing at an empty directory.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO

PROBE = '''
import pytest

from tests.conftest import CORPUS, PARITY, needs_shared, require_shared, shared_params


def test_tiny_model_fixture(tiny_model_dir):
    pass


def test_corpus_fixture(corpus_root):
    pass


def test_reference_fixture(reference_dir):
    pass


def test_require_shared():
    require_shared(PARITY / "cases", "parity cases")


@pytest.mark.parametrize("case", shared_params(sorted(PARITY.glob("cases/*")), "parity cases", PARITY / "cases"))
def test_parametrized_over_cases(case):
    pass


@needs_shared(False, "corpus raw outputs", CORPUS / "raw-outputs")
def test_marked_at_import():
    pass


def test_needs_nothing():
    pass


def test_a_legitimate_skip_stays_a_skip():
    pytest.skip("zsh is not installed")
'''
NEEDS_SHARED = 6


def run_probe(tmp_path: Path, ci: str | None) -> tuple[subprocess.CompletedProcess[str], dict[str, int]]:
    probe = tmp_path / "probe" / "test_probe.py"
    probe.parent.mkdir()
    probe.write_text(PROBE, encoding="utf-8")
    empty = tmp_path / "empty-shared"
    empty.mkdir()
    env = {key: value for key, value in os.environ.items() if key not in ("CI", "DOCCONV_PARITY_FIXTURES")}
    env |= {"DOCCONV_SHARED": str(empty), "PYTHONPATH": str(REPO)}
    if ci is not None:
        env["CI"] = ci
    done = subprocess.run(
        # -p tests.conftest: the repository's fixtures and hook, for a test file outside tests/.
        [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider", "-rA", "-q", str(probe)],
        cwd=probe.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    summary = done.stdout.strip().splitlines()[-1]
    counts = {word: int(number) for number, word in re.findall(r"(\d+) (\w+)", summary)}
    return done, counts


@pytest.mark.parametrize("ci", ["true", "1", "yes", "TRUE"])
def test_under_ci_missing_shared_data_fails_the_run(tmp_path: Path, ci: str) -> None:
    done, counts = run_probe(tmp_path, ci)
    assert done.returncode == 1, done.stdout
    assert counts.get("failed", 0) + counts.get("errors", 0) == NEEDS_SHARED, done.stdout
    assert counts.get("passed") == 1 and counts.get("skipped") == 1, done.stdout
    assert f"CI={ci} requires the shared data" in done.stdout
    assert str(tmp_path / "empty-shared" / "corpus") in done.stdout  # names what is missing


@pytest.mark.parametrize("ci", [None, "false", "0", ""])
def test_outside_ci_missing_shared_data_skips(tmp_path: Path, ci: str | None) -> None:
    done, counts = run_probe(tmp_path, ci)
    assert done.returncode == 0, done.stdout
    assert counts == {"passed": 1, "skipped": NEEDS_SHARED + 1}, done.stdout
    assert "not found at" in done.stdout
