"""Shared test fixtures: where the read-only shared data lives."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("DOCCONV_SHARED", REPO.parent / "shared"))
PARITY = Path(os.environ.get("DOCCONV_PARITY_FIXTURES", SHARED / "fixtures" / "deepseek-ocr-parity"))
CORPUS = SHARED / "corpus"
REFERENCE = SHARED / "reference" / "deepseek-ocr"
TINY_MODEL = PARITY / "models" / "seed15"


@pytest.fixture(scope="session")
def parity_root() -> Path:
    if not PARITY.is_dir():
        pytest.skip(f"parity fixtures not found at {PARITY}")
    return PARITY


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    if not TINY_MODEL.is_dir():
        pytest.skip(f"tiny checkpoint not found at {TINY_MODEL}")
    return TINY_MODEL


@pytest.fixture(scope="session")
def corpus_root() -> Path:
    if not CORPUS.is_dir():
        pytest.skip(f"corpus not found at {CORPUS}")
    return CORPUS
