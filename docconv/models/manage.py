"""``docconv models import / verify / rm / list``: what the cache holds, and keeping it honest."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, replace
from pathlib import Path

from docconv.models.checkpoint import checkpoint_problem
from docconv.models.errors import ModelDirectoryError
from docconv.models.registry import REGISTRY
from docconv.models.store import (
    CachedModel,
    FileRecord,
    cache_dir,
    file_digest,
    forget_record,
    get_record,
    hub_cache_dir,
    load_records,
    mismatched_files,
    model_lock,
    repo_folder,
    save_record,
    timestamp,
)


def import_model(directory: Path, as_id: str | None = None, copy: bool = False) -> CachedModel:
    """Register a checkpoint copied by hand so ``resolve_model(as_id)`` finds it offline."""
    source = directory.expanduser().resolve()
    if not source.is_dir():
        raise ModelDirectoryError(f"{directory} is not a directory; pass the folder that holds config.json")
    if problem := checkpoint_problem(source):
        raise ModelDirectoryError(f"{directory} {problem}; it is not a usable checkpoint")
    model_id = as_id or source.name
    target = _copy_into_cache(source, model_id) if copy else source
    files = {
        p.name: FileRecord(p.stat().st_size, "sha256", file_digest(p, "sha256"))
        for p in sorted(target.iterdir())
        if p.is_file() and not p.name.startswith(".")
    }
    record = CachedModel(
        id=model_id, path=str(target), source="import", files=files, copied=copy, recorded_at=timestamp()
    )
    save_record(record)
    return record


def _copy_into_cache(source: Path, model_id: str) -> Path:
    target = cache_dir() / "imported" / repo_folder(model_id)
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(source, staging)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target


@dataclass(frozen=True)
class VerifyReport:
    model: CachedModel
    mismatched: list[str]

    @property
    def ok(self) -> bool:
        return not self.mismatched


def verify_model(model_id: str) -> VerifyReport:
    """Re-hash every file against the hashes recorded at download/import; record the outcome."""
    with model_lock(model_id):
        record = get_record(model_id)
        bad = mismatched_files(record.directory, record.files)
        updated = replace(record, verified=not bad, verified_at=timestamp())
        save_record(updated)
    return VerifyReport(updated, bad)


def remove_model(model_id: str) -> CachedModel:
    """Forget a model and delete the files docconv owns (never a hand-copied dir nor the HF cache)."""
    with model_lock(model_id):
        record = get_record(model_id)
        if record.source == "hub":
            shutil.rmtree(hub_cache_dir() / repo_folder(model_id), ignore_errors=True)
        elif record.copied:
            shutil.rmtree(record.directory, ignore_errors=True)
        forget_record(model_id)
    return record


@dataclass(frozen=True)
class ModelListing:
    id: str
    revision: str
    size_bytes: int | None
    path: str | None
    verified: str  # yes | no | never | not downloaded
    licence: str
    note: str


def list_models() -> list[ModelListing]:
    """Cached and imported models, and the registry's models not downloaded yet, by id."""
    records = load_records()
    rows = [_listing_for(rec) for rec in records.values()]
    for known in REGISTRY.values():
        if known.id not in records:
            note = "known" if known.runnable else "known, not yet runnable"
            listing = ModelListing(
                known.id, known.revision, known.size_bytes or None, None, "not downloaded", known.licence, note
            )
            rows.append(listing)
    return sorted(rows, key=lambda row: row.id)


def _listing_for(record: CachedModel) -> ModelListing:
    revision = record.commit[:12] if record.commit else (record.revision or "-")
    verified = {True: "yes", False: "no", None: "never"}[record.verified]
    known = REGISTRY.get(record.id)
    note = record.source if known is None or known.runnable else f"{record.source}, not yet runnable"
    present = record.directory.is_dir()
    size = record.size_on_disk() if present else None
    licence = known.licence if known else "-"
    return ModelListing(record.id, revision, size, record.path, verified, licence, note)
