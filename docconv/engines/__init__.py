"""Engines: what reads page images and returns the model's raw text.

:mod:`docconv.engines.base` is the interface (:class:`~docconv.engines.base.Engine` and the
plain data it takes and returns); every other module here is one engine. A new engine
(vLLM, a remote server) is one module with a ``create_engine(options)`` function (and, where its
model's tokenizer can be had without the weights, a ``text_token_counter(options)``), and one
line in :data:`ENGINES`. Engines are imported only when a run needs one, so listing them, or
``docconv --help``, loads no model library. Which engine reads a ``--model`` is decided by the
checkpoint's config (:func:`docconv.models.checkpoint.model_family`), never by its name.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from deepseek_ocr.modes import MODES
from docconv.engines.base import DEFAULT_ENGINE, Engine, EngineError, EngineOptions
from docconv.models.registry import DEEPSEEK_OCR2_FAMILY, DEEPSEEK_OCR_FAMILY

#: ``--engine`` name -> the module that builds it. ``native`` (docconv's own engines) stands for
#: the module of the model's family (:data:`NATIVE_ENGINES`).
ENGINES: dict[str, str] = {DEFAULT_ENGINE: "docconv.engines.deepseek", "vllm": "docconv.engines.vllm"}

#: Model family (:mod:`docconv.models.registry`) -> docconv's own engine for it.
NATIVE_ENGINES: dict[str, str] = {
    DEEPSEEK_OCR_FAMILY: "docconv.engines.deepseek",
    DEEPSEEK_OCR2_FAMILY: "docconv.engines.deepseek_ocr2",
}

#: The resolution modes each engine may read, known before it loads (so ``--mode`` is checked at
#: once); the loaded engine's ``modes`` narrow them to the model's (DeepSeek-OCR-2: base, gundam).
#: vLLM's DeepSeek-OCR processor hard-codes gundam's sizes and cropping (its module constants
#: BASE_SIZE 1024, IMAGE_SIZE 640, CROP_MODE True); the engine checks them at start.
SERVED_MODES: dict[str, tuple[str, ...]] = {DEFAULT_ENGINE: tuple(MODES), "vllm": ("gundam",)}

__all__ = [
    "DEFAULT_ENGINE",
    "ENGINES",
    "NATIVE_ENGINES",
    "SERVED_MODES",
    "create_engine",
    "engine_for_model",
    "text_token_counter",
]


def engine_for_model(options: EngineOptions) -> str:
    """The model family of ``options.model``: its checkpoint (downloaded first when it is a hub id
    not yet cached) says which it is."""
    from docconv.models.checkpoint import model_family
    from docconv.models.errors import WeightsError
    from docconv.models.resolve import resolve_model

    try:
        return model_family(resolve_model(options.model, offline=options.offline))
    except WeightsError as error:
        raise EngineError(str(error)) from None


def engine_module(options: EngineOptions) -> str:
    """The module that builds the engine ``options.kind`` for ``options.model``."""
    if options.kind == DEFAULT_ENGINE:
        return NATIVE_ENGINES[engine_for_model(options)]
    try:
        return ENGINES[options.kind]
    except KeyError:
        raise EngineError(f"unknown engine {options.kind!r}; known: {', '.join(sorted(ENGINES))}") from None


def create_engine(options: EngineOptions) -> Engine:
    """Build the engine ``options.kind`` for ``options.model``; raises :class:`EngineError` when it
    cannot start."""
    return importlib.import_module(engine_module(options)).create_engine(options)


def text_token_counter(options: EngineOptions) -> Callable[[str], int]:
    """The text-token count of ``options.model``, from its tokenizer alone (no weights); raises
    :class:`EngineError` when the tokenizer cannot be had."""
    module = importlib.import_module(engine_module(options))
    if not hasattr(module, "text_token_counter"):
        raise EngineError(f"--engine {options.kind} cannot count text tokens without its model; use --engine native")
    return module.text_token_counter(options)
