"""The models docconv knows about before anything is downloaded: ids, sizes, licences, files."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_MODEL = "deepseek-ai/DeepSeek-OCR"
#: The model families docconv reads; each is also the name of the engine that reads it.
DEEPSEEK_OCR_FAMILY = "deepseek-ocr"
DEEPSEEK_OCR2_FAMILY = "deepseek-ocr-2"

#: Files a checkpoint needs; everything else in a hub repo (README, images, remote code) is skipped.
MODEL_FILE_PATTERNS: tuple[str, ...] = (
    "config.json",
    "*.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "processor_config.json",
    "preprocessor_config.json",
    "generation_config.json",
)


@dataclass(frozen=True)
class KnownModel:
    """A model docconv knows about before anything is downloaded."""

    id: str
    revision: str  # "main" until a commit is known; the resolved commit is pinned at download
    size_bytes: int
    licence: str
    files: tuple[str, ...]
    family: str
    runnable: bool  # whether docconv's engine can run it today


REGISTRY: dict[str, KnownModel] = {
    m.id: m
    for m in (
        KnownModel(
            id="deepseek-ai/DeepSeek-OCR",
            revision="main",
            size_bytes=6_672_212_480,
            licence="MIT",
            files=(
                "config.json",
                "model-00001-of-000001.safetensors",
                "model.safetensors.index.json",
                "tokenizer.json",
                "tokenizer_config.json",
                "special_tokens_map.json",
                "processor_config.json",
            ),
            family=DEEPSEEK_OCR_FAMILY,
            runnable=True,
        ),
        KnownModel(
            id="deepseek-community/DeepSeek-OCR-2",
            revision="main",
            size_bytes=0,  # unknown until downloaded
            licence="see model card",
            files=MODEL_FILE_PATTERNS,
            family=DEEPSEEK_OCR2_FAMILY,
            runnable=True,
        ),
    )
}


def file_patterns(model_id: str) -> tuple[str, ...]:
    """The files to fetch for ``model_id``: a known model's list, else every checkpoint pattern."""
    known = REGISTRY.get(model_id)
    return known.files if known else MODEL_FILE_PATTERNS


def requested_revision(model_id: str, revision: str | None) -> str:
    """``revision`` when given, else the registry's for a known model, else ``main``."""
    return revision or (REGISTRY[model_id].revision if model_id in REGISTRY else "main")
