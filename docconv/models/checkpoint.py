"""The one check docconv makes that a directory is a usable checkpoint, before any engine loads it.

It reads file names, ``config.json`` and the safetensors headers, never the tensors: enough to
refuse a hand-copied folder at ``docconv models import``, a partial Hugging Face cache snapshot,
or a ``--model`` directory, with one line that says what is wrong. Whether the tensors fit the
model (names, shapes, memory) is the model package's to say when it loads them.
"""

from __future__ import annotations

import json
from pathlib import Path

from docconv.models.errors import ModelDirectoryError
from docconv.models.registry import DEEPSEEK_OCR2_FAMILY, DEEPSEEK_OCR_FAMILY, DEFAULT_MODEL

#: ``model_type`` in a checkpoint's config.json -> the model family that reads it (the families of
#: :mod:`docconv.models.registry`, which are also the engines' names). Every other type is left to
#: DeepSeek-OCR's engine, whose loader names the types it accepts when it refuses one.
FAMILY_OF_MODEL_TYPE: dict[str, str] = {"deepseek_ocr2": DEEPSEEK_OCR2_FAMILY}
DEFAULT_FAMILY = DEEPSEEK_OCR_FAMILY


def checkpoint_problem(directory: Path) -> str | None:
    """Why ``directory`` is not a usable checkpoint (a phrase to follow its name), or None."""
    from safetensors import safe_open

    if not (directory / "config.json").is_file():
        return "has no config.json"
    try:
        json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except ValueError:
        return "has a config.json that is not valid JSON"
    weights = sorted(directory.glob("*.safetensors"))
    if not weights:
        return "has no *.safetensors weights"
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        shards = set(json.loads(index.read_text(encoding="utf-8")).get("weight_map", {}).values())
        if missing := sorted(s for s in shards if not (directory / s).is_file()):
            return f"is missing weight shard {missing[0]}"
    for path in weights:
        try:
            with safe_open(str(path), framework="pt") as handle:
                handle.keys()
        except Exception as exc:  # safetensors raises its own error types for every kind of damage
            return f"has an unreadable {path.name} ({exc})"
    return None


def local_checkpoint(directory: Path) -> Path:
    """``directory`` when it is a usable checkpoint; else :class:`ModelDirectoryError` (for ``--model``)."""
    if not directory.is_dir():
        raise ModelDirectoryError(
            f"model directory {directory} does not exist; pass a checkpoint directory or a hub id like {DEFAULT_MODEL}"
        )
    if problem := checkpoint_problem(directory):
        raise ModelDirectoryError(f"{directory} {problem}; point --model at a checkpoint directory")
    return directory


def model_family(directory: Path) -> str:
    """Which model a checkpoint directory holds, from its config.json's ``model_type`` (never from
    the directory's or the hub id's name). ``directory`` has passed :func:`checkpoint_problem`."""
    config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    model_type = config.get("model_type") if isinstance(config, dict) else None
    return FAMILY_OF_MODEL_TYPE.get(model_type, DEFAULT_FAMILY)
