"""Engines: what reads page images and returns the model's raw text.

:mod:`docconv.engines.base` is the interface (:class:`~docconv.engines.base.Engine` and the
plain data it takes and returns); every other module here is one engine. A new engine
(DeepSeek-OCR-2, vLLM, a remote server) is one module with a ``create_engine(options)``
function, and one line in :data:`ENGINES`. Engines are imported only when a run needs one, so
listing them, or ``docconv --help``, loads no model library.
"""

from __future__ import annotations

import importlib

from deepseek_ocr.modes import MODES
from docconv.engines.base import DEFAULT_ENGINE, Engine, EngineError, EngineOptions

#: Engine name -> the module that builds it.
ENGINES: dict[str, str] = {"deepseek-ocr": "docconv.engines.deepseek", "vllm": "docconv.engines.vllm"}

#: The resolution modes each engine reads, known before it loads (so ``--mode`` is checked at
#: once). vLLM's DeepSeek-OCR processor hard-codes gundam's sizes and cropping (its module
#: constants BASE_SIZE 1024, IMAGE_SIZE 640, CROP_MODE True); the engine checks them at start.
SERVED_MODES: dict[str, tuple[str, ...]] = {"deepseek-ocr": tuple(MODES), "vllm": ("gundam",)}

__all__ = ["DEFAULT_ENGINE", "ENGINES", "SERVED_MODES", "create_engine"]


def create_engine(options: EngineOptions) -> Engine:
    """Build the engine ``options.kind``; raises :class:`EngineError` when it cannot start."""
    try:
        module = ENGINES[options.kind]
    except KeyError:
        raise EngineError(f"unknown engine {options.kind!r}; known: {', '.join(sorted(ENGINES))}") from None
    return importlib.import_module(module).create_engine(options)
