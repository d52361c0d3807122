"""Engines: what reads page images and returns the model's raw text.

:mod:`docconv.engines.base` is the interface (:class:`~docconv.engines.base.Engine` and the
plain data it takes and returns); every other module here is one engine. A new engine
(DeepSeek-OCR-2, vLLM, a remote server) is one module with a ``create_engine(options)``
function and a ``text_token_counter(options)`` (its model's text-token count, from the tokenizer
alone), and one line in :data:`ENGINES`. Engines are imported only when a run needs one, so
listing them, or ``docconv --help``, loads no model library.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from docconv.engines.base import Engine, EngineError, EngineOptions

#: Engine name -> the module that builds it.
ENGINES: dict[str, str] = {"deepseek-ocr": "docconv.engines.deepseek"}
DEFAULT_ENGINE = "deepseek-ocr"


def create_engine(options: EngineOptions, kind: str = DEFAULT_ENGINE) -> Engine:
    """Build the engine ``kind``; raises :class:`EngineError` when it cannot start."""
    return _engine_module(kind).create_engine(options)


def text_token_counter(options: EngineOptions, kind: str = DEFAULT_ENGINE) -> Callable[[str], int]:
    """The text-token count of engine ``kind``'s model, from its tokenizer alone (no weights);
    raises :class:`EngineError` when the tokenizer cannot be had."""
    return _engine_module(kind).text_token_counter(options)


def _engine_module(kind: str):
    try:
        module = ENGINES[kind]
    except KeyError:
        raise EngineError(f"unknown engine {kind!r}; known: {', '.join(sorted(ENGINES))}") from None
    return importlib.import_module(module)
