"""Engines: what reads page images and returns the model's raw text.

:mod:`docconv.engines.base` is the interface (:class:`~docconv.engines.base.Engine` and the
plain data it takes and returns); every other module here is one engine. A new engine
(vLLM, a remote server) is one module with a ``create_engine(options)`` function, and one line
in :data:`ENGINES`. Engines are imported only when a run needs one, so listing them, or
``docconv --help``, loads no model library. Which engine reads a ``--model`` is decided by the
checkpoint's config (:func:`docconv.models.checkpoint.model_family`), never by its name.
"""

from __future__ import annotations

import importlib

from docconv.engines.base import Engine, EngineError, EngineOptions
from docconv.models.registry import DEEPSEEK_OCR2_FAMILY, DEEPSEEK_OCR_FAMILY

#: Engine name (a model family of :mod:`docconv.models.registry`) -> the module that builds it.
ENGINES: dict[str, str] = {
    DEEPSEEK_OCR_FAMILY: "docconv.engines.deepseek",
    DEEPSEEK_OCR2_FAMILY: "docconv.engines.deepseek_ocr2",
}
DEFAULT_ENGINE = DEEPSEEK_OCR_FAMILY


def engine_for_model(options: EngineOptions) -> str:
    """The engine that reads ``options.model``: its checkpoint (downloaded first when it is a hub id
    not yet cached) says which model family it is."""
    from docconv.models.checkpoint import model_family
    from docconv.models.errors import WeightsError
    from docconv.models.resolve import resolve_model

    try:
        return model_family(resolve_model(options.model, offline=options.offline))
    except WeightsError as error:
        raise EngineError(str(error)) from None


def create_engine(options: EngineOptions, kind: str | None = None) -> Engine:
    """Build the engine ``kind`` (default: the one :func:`engine_for_model` picks); raises
    :class:`EngineError` when it cannot start."""
    kind = kind or engine_for_model(options)
    try:
        module = ENGINES[kind]
    except KeyError:
        raise EngineError(f"unknown engine {kind!r}; known: {', '.join(sorted(ENGINES))}") from None
    return importlib.import_module(module).create_engine(options)
