"""The tiny checkpoint's tokenizer, loaded once: the compress tests count text tokens with it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from docconv.engines import text_token_counter
from docconv.engines.base import EngineOptions


@pytest.fixture(scope="session")
def count_tokens(tiny_model_dir: Path) -> Callable[[str], int]:
    return text_token_counter(EngineOptions(model=str(tiny_model_dir)))
