"""Reusing a model the user already has in their Hugging Face cache instead of downloading it again."""

from __future__ import annotations

import re
from pathlib import Path

from huggingface_hub import snapshot_download
from huggingface_hub.errors import LocalEntryNotFoundError

from docconv.models.checkpoint import checkpoint_problem
from docconv.models.registry import REGISTRY, file_patterns
from docconv.models.store import (
    CachedModel,
    FileRecord,
    algo_for,
    file_digest,
    huggingface_cache_dir,
    save_record,
    timestamp,
)

_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def adopt_snapshot(model_id: str, revision: str) -> CachedModel | None:
    """Record a complete snapshot of ``model_id`` from the user's Hugging Face cache, or None."""
    snapshot = _complete_snapshot(model_id, revision)
    return None if snapshot is None else _record(model_id, revision, snapshot)


def _complete_snapshot(model_id: str, revision: str) -> Path | None:
    """A complete snapshot of ``model_id`` already in the user's Hugging Face cache, or None."""
    try:
        folder = snapshot_download(
            model_id,
            revision=revision,
            cache_dir=huggingface_cache_dir(),
            local_files_only=True,
            allow_patterns=list(file_patterns(model_id)),
        )
    except (LocalEntryNotFoundError, OSError, ValueError):
        return None
    snapshot = Path(folder)
    if checkpoint_problem(snapshot) is not None:
        return None
    known = REGISTRY.get(model_id)
    if known and not all((snapshot / name).is_file() for name in known.files):
        return None
    return snapshot


def _record(model_id: str, revision: str, snapshot: Path) -> CachedModel:
    """Adopt a snapshot from the HF cache; its blob names are the hub's hashes, so verify still works."""
    files = {}
    for pointer in sorted(snapshot.iterdir()):
        if pointer.is_file():
            digest = pointer.resolve().name if pointer.is_symlink() else file_digest(pointer, "sha256")
            files[pointer.name] = FileRecord(pointer.stat().st_size, algo_for(digest), digest)
    record = CachedModel(
        id=model_id,
        path=str(snapshot),
        source="hf-cache",
        revision=revision,
        commit=snapshot.name if _COMMIT.match(snapshot.name) else None,
        files=files,
        recorded_at=timestamp(),
    )
    save_record(record)
    return record
