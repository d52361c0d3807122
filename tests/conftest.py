"""Shared test fixtures: where the read-only shared data lives, and what happens when it is missing.

Tests that need the shared data (parity fixtures, tiny checkpoints, the corpus, the reference
config) get it through the fixtures below, :func:`require_shared`, :func:`shared_params` or
:func:`needs_shared`, all of which end in :func:`missing_shared_data` when it is absent: the
test is skipped on a developer's machine, but fails under CI (``CI`` set to ``true``, ``1``,
``yes`` or ``on``), so a CI run without its data cannot pass by skipping.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NoReturn

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("DOCCONV_SHARED", REPO.parent / "shared"))
PARITY = Path(os.environ.get("DOCCONV_PARITY_FIXTURES", SHARED / "fixtures" / "deepseek-ocr-parity"))
CORPUS = SHARED / "corpus"
REFERENCE = SHARED / "reference" / "deepseek-ocr"
TINY_MODEL = PARITY / "models" / "seed15"

#: Marks a placeholder test (see :func:`shared_params`, :func:`needs_shared`): args (what, path).
MISSING_MARK = "shared_data_missing"


def running_in_ci() -> bool:
    """True when ``CI`` is set to a true value, as CI services (and ``.ci/run``'s caller) set it."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes", "on")


def missing_shared_data(what: str, path: Path) -> NoReturn:
    """Skip the current test for missing shared data, or fail it under CI."""
    message = f"{what} not found at {path} (shared data: DOCCONV_SHARED, default ../shared)"
    if running_in_ci():
        pytest.fail(
            f"{message}; CI={os.environ['CI']} requires the shared data, so this fails", pytrace=False
        )
    pytest.skip(message)


def require_shared(path: Path, what: str) -> Path:
    """``path`` if it exists, else :func:`missing_shared_data`."""
    if not path.exists():
        missing_shared_data(what, path)
    return path


def shared_params(values: Iterable[Any], what: str, path: Path) -> list[Any]:
    """Parameters found in the shared data (``PARITY.glob(...)``) for ``pytest.mark.parametrize``.

    With none found, one placeholder parameter that skips (fails under CI) instead of pytest's
    silent "got empty parameter set" skip.
    """
    found = list(values)
    if found:
        return found
    return [pytest.param(None, id="shared-data-missing", marks=pytest.mark.shared_data_missing(what, path))]


def needs_shared(available: bool, what: str, path: Path) -> pytest.MarkDecorator:
    """A decorator for tests whose shared data was looked for at import time."""
    return pytest.mark.shared_data_found if available else pytest.mark.shared_data_missing(what, path)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"{MISSING_MARK}(what, path): shared data the test needs is missing")
    config.addinivalue_line("markers", "shared_data_found: the shared data the test needs was found")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Before any fixture runs: a test marked as missing its shared data skips, or fails under CI."""
    marker = item.get_closest_marker(MISSING_MARK)
    if marker is not None:
        missing_shared_data(*marker.args)


@pytest.fixture(scope="session")
def parity_root() -> Path:
    return require_shared(PARITY, "parity fixtures")


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    return require_shared(TINY_MODEL, "tiny checkpoint")


@pytest.fixture(scope="session")
def tiny_ocr2_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random DeepSeek-OCR-2 checkpoint (transformers' classes, the tiny checkpoint's
    tokenizer), built once per session by ``scripts/make_tiny_ocr2_checkpoint.py``."""
    spec = importlib.util.spec_from_file_location(
        "make_tiny_ocr2", REPO / "scripts" / "make_tiny_ocr2_checkpoint.py"
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script.build_tiny_checkpoint(tmp_path_factory.mktemp("tiny-ocr2"), tokenizer_from=tiny_model_dir)


@pytest.fixture(scope="session")
def corpus_root() -> Path:
    return require_shared(CORPUS, "corpus")


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """The official DeepSeek-OCR config and checkpoint shapes (no weights)."""
    return require_shared(REFERENCE, "reference config")
