"""Where the cache lives, the locked JSON record of what it holds, and file hashing.

``docconv-models.json`` is read and rewritten under a file lock so two docconv processes never
lose each other's updates; each model has its own lock, held around download and resolve.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import filelock
import platformdirs

from docconv.fsutil import atomic_write_text
from docconv.models.errors import ModelNotFoundError, WeightsError

METADATA_FILE = "docconv-models.json"
METADATA_VERSION = 1
_HASH_CHUNK = 8 * 1024 * 1024

Source = Literal["hub", "hf-cache", "import"]
HashAlgo = Literal["sha256", "git-sha1"]


# -- where things live ----------------------------------------------------------------------------
def cache_dir() -> Path:
    """docconv's weight cache: ``$DOCCONV_CACHE``, else the platform's user cache directory."""
    override = os.environ.get("DOCCONV_CACHE")
    return Path(override).expanduser() if override else Path(platformdirs.user_cache_dir("docconv"))


def hub_cache_dir() -> Path:
    """The Hugging Face cache docconv downloads into (its own, not the user's)."""
    return cache_dir() / "hub"


def huggingface_cache_dir() -> Path:
    """The user's standard Hugging Face cache, read at call time so env changes apply."""
    if explicit := os.environ.get("HF_HUB_CACHE"):
        return Path(explicit).expanduser()
    if hf_home := os.environ.get("HF_HOME"):
        return Path(hf_home).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def metadata_path() -> Path:
    return cache_dir() / METADATA_FILE


def repo_folder(model_id: str) -> str:
    """huggingface_hub's folder name for a repo: ``org/name`` -> ``models--org--name``."""
    return "models--" + model_id.replace("/", "--")


def timestamp() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def say(message: str) -> None:
    """A notice for the user on stderr (stdout is for the command's own output)."""
    print(message, file=sys.stderr)


# -- records --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FileRecord:
    size: int
    algo: HashAlgo
    digest: str


@dataclass(frozen=True)
class CachedModel:
    id: str
    path: str
    source: Source
    revision: str | None = None
    commit: str | None = None
    files: dict[str, FileRecord] = field(default_factory=dict)
    copied: bool = False  # an import that docconv copied into its cache (and may delete)
    recorded_at: str = ""
    verified: bool | None = None  # None: never verified
    verified_at: str | None = None

    @property
    def directory(self) -> Path:
        return Path(self.path)

    def files_present(self) -> bool:
        """Cheap completeness check (existence and size), done on every resolve."""
        for name, rec in self.files.items():
            target = self.directory / name
            if not target.is_file() or target.stat().st_size != rec.size:
                return False
        return bool(self.files)

    def size_on_disk(self) -> int:
        return sum((self.directory / n).stat().st_size for n in self.files if (self.directory / n).is_file())

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CachedModel:
        files = {name: FileRecord(**rec) for name, rec in data.get("files", {}).items()}
        return cls(**{**data, "files": files})


def load_records() -> dict[str, CachedModel]:
    """Every cached model docconv knows, by id (read without a lock: writes are atomic)."""
    path = metadata_path()
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return {mid: CachedModel.from_json(rec) for mid, rec in data.get("models", {}).items()}
    except (ValueError, TypeError, KeyError) as exc:
        raise WeightsError(f"{path} is damaged ({exc}); delete it and run `docconv models download` again") from None


def get_record(model_id: str) -> CachedModel:
    """The record of a cached or imported model; :class:`ModelNotFoundError` names both ways to add it."""
    record = load_records().get(model_id)
    if record is None:
        raise ModelNotFoundError(
            f"model {model_id} is not cached; run `docconv models download {model_id}` "
            f"or `docconv models import <dir> --as {model_id}`"
        )
    return record


@contextlib.contextmanager
def records_for_update() -> Iterator[dict[str, CachedModel]]:
    """Read-modify-write the metadata under a lock so concurrent processes never lose an update."""
    lock_dir = cache_dir() / "locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    with filelock.FileLock(str(lock_dir / f"{METADATA_FILE}.lock")):
        records = load_records()
        yield records
        payload = {"version": METADATA_VERSION, "models": {mid: asdict(rec) for mid, rec in sorted(records.items())}}
        atomic_write_text(metadata_path(), json.dumps(payload, indent=2) + "\n")


def save_record(record: CachedModel) -> None:
    with records_for_update() as records:
        records[record.id] = record


def forget_record(model_id: str) -> None:
    with records_for_update() as records:
        records.pop(model_id, None)


@contextlib.contextmanager
def model_lock(model_id: str) -> Iterator[None]:
    """Hold the per-model lock; tell the user (stderr) when another process holds it."""
    lock_dir = cache_dir() / "locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(str(lock_dir / f"{repo_folder(model_id)}.lock"))
    try:
        lock.acquire(timeout=0.5)
    except filelock.Timeout:
        say(f"waiting for another docconv process using {model_id} ...")
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


# -- hashing --------------------------------------------------------------------------------------
def file_digest(path: Path, algo: HashAlgo) -> str:
    """``path``'s sha256, or its git blob sha1 (what the hub announces for small non-LFS files)."""
    if algo == "sha256":
        hasher = hashlib.sha256()
    else:
        hasher = hashlib.sha1()
        hasher.update(b"blob %d\0" % path.stat().st_size)
    with path.open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            hasher.update(chunk)
    return hasher.hexdigest()


def algo_for(digest: str) -> HashAlgo:
    """Which hash a hub digest is, by its length."""
    return "sha256" if len(digest) == 64 else "git-sha1"


def mismatched_files(directory: Path, files: dict[str, FileRecord]) -> list[str]:
    """Names of ``files`` missing from ``directory`` or not matching their recorded hash."""
    bad = []
    for name, rec in files.items():
        path = directory / name
        if not path.is_file() or path.stat().st_size != rec.size or file_digest(path, rec.algo) != rec.digest:
            bad.append(name)
    return bad
