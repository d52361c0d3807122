"""DeepSeek-OCR (arXiv 2510.18234) as a native transformers model: config, model, processor, generation.

Importing the package imports nothing heavy: each name below is loaded from its module on first
use (PEP 562), so the torch-free modules (:mod:`.modes`, :mod:`.prompts`,
:mod:`.generation_settings`) can be read by a command-line tool that has not loaded torch yet.
"""

from __future__ import annotations

import importlib
from typing import Any

#: module -> the names it contributes to the package's top level.
_PUBLIC: dict[str, tuple[str, ...]] = {
    "configuration": ("DeepseekOcrConfig",),
    "modeling": ("DeepseekOcrForConditionalGeneration", "DeepseekOcrModel"),
    "processing": ("DeepseekOcrProcessor",),
    "generation": ("GeneratedPage", "SlidingWindowNoRepeatNGram", "generate_pages"),
    "generation_settings": ("GenerationSettings", "StopReason"),
    "loading": ("CheckpointError", "RuntimePlan", "estimate_weight_bytes", "load_model", "plan_runtime"),
    "modes": ("MODES", "ResolutionMode"),
    "prompts": ("TASK_PROMPTS",),
}
_MODULE_OF = {name: module for module, names in _PUBLIC.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        # Not a public name: ``from deepseek_ocr import sam`` then imports the submodule itself.
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
