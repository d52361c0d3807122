"""Model weights: a registry of known models and a verified, lockable cache built on huggingface_hub.

Layout under :func:`cache_dir` (``DOCCONV_CACHE`` or the platform user cache dir):

* ``hub/`` - a standard Hugging Face cache (``models--org--name/{blobs,snapshots,refs}``), pinned
  to a commit; huggingface_hub lays it out and docconv streams the blobs with huggingface_hub's
  ``http_get`` so an interrupted transfer resumes with an HTTP Range request.
* ``partial/`` - bytes of unfinished downloads, kept across runs so a killed download resumes.
* ``imported/`` - checkpoints copied in by ``docconv models import --copy``.
* ``locks/`` - one :class:`filelock.FileLock` per model, held around download and resolve, so two
  docconv processes never download the same model twice nor read a half-written snapshot.
* ``docconv-models.json`` - what docconv knows about each cached model: where it lives, the commit it
  is pinned to and, per file, the hash the hub announced at download time.

Hashes: for LFS files (the weights) the hub's ETag is the sha256 of the content; for small git
files it is the git blob sha1 (``sha1(b"blob <size>\\0" + content)``). docconv records what the hub
gives and verifies each file with the matching algorithm. Imported checkpoints get sha256 hashes
computed at import time.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import filelock
import httpx2
import platformdirs
from huggingface_hub import HfApi, hf_hub_download, hf_hub_url, snapshot_download
from huggingface_hub.errors import (
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.file_download import http_get
from huggingface_hub.utils import build_hf_headers, filter_repo_objects
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from docconv.engines.base import EngineError
from docconv.fsutil import atomic_write_text

DEFAULT_MODEL = "deepseek-ai/DeepSeek-OCR"

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

METADATA_FILE = "docconv-models.json"
_METADATA_VERSION = 1
_HASH_CHUNK = 8 * 1024 * 1024
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")

Source = Literal["hub", "hf-cache", "import"]
HashAlgo = Literal["sha256", "git-sha1"]


# -- errors ---------------------------------------------------------------------------------------
class WeightsError(EngineError):
    """A model's weights cannot be used; the message is one line that says what to do."""


class ModelUnavailableError(WeightsError):
    """Not cached and the hub cannot be asked (offline mode, unreachable, disk full)."""


class ModelNotFoundError(WeightsError):
    """The id is neither cached, imported, nor on the hub (or the revision does not exist)."""


class ModelDirectoryError(WeightsError):
    """A local checkpoint directory is not usable (missing config.json, unreadable safetensors)."""


class CorruptDownloadError(WeightsError):
    """A file received from the hub does not match the hash the hub announced."""


def unavailable_message(model_id: str, reason: str) -> str:
    return (
        f"model {model_id} is not available offline ({reason}); "
        f"run `docconv models download {model_id}` with network access, "
        f"or copy the weights by hand and run `docconv models import <dir> --as {model_id}`"
    )


# -- registry -------------------------------------------------------------------------------------
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
            family="deepseek-ocr",
            runnable=True,
        ),
        KnownModel(
            id="deepseek-community/DeepSeek-OCR-2",
            revision="main",
            size_bytes=0,  # unknown until downloaded
            licence="see model card",
            files=MODEL_FILE_PATTERNS,
            family="deepseek-ocr-2",
            runnable=False,
        ),
    )
}


def file_patterns(model_id: str) -> tuple[str, ...]:
    known = REGISTRY.get(model_id)
    return known.files if known else MODEL_FILE_PATTERNS


# -- cache records --------------------------------------------------------------------------------
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


def cache_dir() -> Path:
    override = os.environ.get("DOCCONV_CACHE")
    return Path(override).expanduser() if override else Path(platformdirs.user_cache_dir("docconv"))


def hub_cache_dir() -> Path:
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


def _repo_folder(model_id: str) -> str:
    return "models--" + model_id.replace("/", "--")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def load_records() -> dict[str, CachedModel]:
    path = metadata_path()
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return {mid: CachedModel.from_json(rec) for mid, rec in data.get("models", {}).items()}
    except (ValueError, TypeError, KeyError) as exc:
        raise WeightsError(f"{path} is damaged ({exc}); delete it and run `docconv models download` again") from None


@contextlib.contextmanager
def _records_for_update() -> Iterator[dict[str, CachedModel]]:
    """Read-modify-write the metadata under a lock so concurrent processes never lose an update."""
    lock_dir = cache_dir() / "locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    with filelock.FileLock(str(lock_dir / f"{METADATA_FILE}.lock")):
        records = load_records()
        yield records
        payload = {"version": _METADATA_VERSION, "models": {mid: asdict(rec) for mid, rec in sorted(records.items())}}
        atomic_write_text(metadata_path(), json.dumps(payload, indent=2) + "\n")


def _save_record(record: CachedModel) -> None:
    with _records_for_update() as records:
        records[record.id] = record


def _forget_record(model_id: str) -> None:
    with _records_for_update() as records:
        records.pop(model_id, None)


@contextlib.contextmanager
def model_lock(model_id: str) -> Iterator[None]:
    """Hold the per-model lock; tell the user (stderr) when another process holds it."""
    lock_dir = cache_dir() / "locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(str(lock_dir / f"{_repo_folder(model_id)}.lock"))
    try:
        lock.acquire(timeout=0.5)
    except filelock.Timeout:
        _say(f"waiting for another docconv process using {model_id} ...")
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


# -- hashing --------------------------------------------------------------------------------------
def file_digest(path: Path, algo: HashAlgo) -> str:
    if algo == "sha256":
        hasher = hashlib.sha256()
    else:
        hasher = hashlib.sha1()
        hasher.update(b"blob %d\0" % path.stat().st_size)
    with path.open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            hasher.update(chunk)
    return hasher.hexdigest()


def _algo_for(digest: str) -> HashAlgo:
    return "sha256" if len(digest) == 64 else "git-sha1"


# -- progress -------------------------------------------------------------------------------------
def _stderr_progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not enabled,
    )


def _rich_bar_class(progress: Progress, label: str) -> type:
    """A tqdm look-alike for huggingface_hub's ``tqdm_class`` hook that feeds one rich task."""

    class RichFileBar:
        def __init__(self, *args: Any, total: int | None = None, initial: int = 0, **kwargs: Any) -> None:
            self.task = progress.add_task(label, total=total, completed=initial)

        def update(self, n: float | None = 1) -> None:
            progress.advance(self.task, n or 0)

        def close(self) -> None:
            progress.refresh()

        def __enter__(self) -> RichFileBar:
            return self

        def __exit__(self, *exc: object) -> None:
            self.close()

    return RichFileBar


# -- the hub --------------------------------------------------------------------------------------
def _offline_requested(offline: bool) -> bool:
    return offline or os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _endpoint() -> str | None:
    # huggingface_hub reads HF_ENDPOINT once at import; reading it per call lets a process change it.
    return os.environ.get("HF_ENDPOINT") or None


_NETWORK_ERRORS = (httpx2.TransportError, OfflineModeIsEnabled, LocalEntryNotFoundError)


def _describe_hub_failure(model_id: str, exc: Exception) -> WeightsError:
    if isinstance(exc, (RepositoryNotFoundError, RevisionNotFoundError)):
        kind = "revision" if isinstance(exc, RevisionNotFoundError) else "model"
        return ModelNotFoundError(f"{kind} not found on the hub for {model_id}; check the id with `docconv models list`")
    reason = f"hub unreachable: {type(exc).__name__}"
    return ModelUnavailableError(unavailable_message(model_id, reason))


@dataclass(frozen=True)
class RemoteFile:
    name: str
    size: int
    algo: HashAlgo
    digest: str


def _remote_listing(model_id: str, revision: str) -> tuple[str, list[RemoteFile]]:
    """Ask the hub which commit ``revision`` is and which model files it holds (one request)."""
    info = HfApi(endpoint=_endpoint()).model_info(model_id, revision=revision, files_metadata=True)
    siblings = {s.rfilename: s for s in info.siblings or []}
    wanted = filter_repo_objects(items=list(siblings), allow_patterns=list(file_patterns(model_id)))
    files = []
    for name in wanted:
        sib = siblings[name]
        if sib.lfs is not None:
            files.append(RemoteFile(name, sib.lfs.size, "sha256", sib.lfs.sha256))
        else:
            files.append(RemoteFile(name, sib.size or 0, "git-sha1", sib.blob_id or ""))
    names = {f.name for f in files}
    if "config.json" not in names or not any(n.endswith(".safetensors") for n in names):
        raise ModelNotFoundError(f"{model_id}@{revision} on the hub has no config.json + *.safetensors checkpoint")
    assert info.sha is not None, "the hub always answers model info with a commit sha"
    return info.sha, files


def check_free_space(needed: int, directory: Path) -> None:
    """Refuse to start a download that cannot fit, before writing a single byte."""
    probe = directory
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if needed > free:
        raise ModelUnavailableError(
            f"not enough disk space in {directory}: the download needs {needed / 1e9:.2f} GB, "
            f"{free / 1e9:.2f} GB free; free some space or set DOCCONV_CACHE to a larger disk"
        )


def _snapshot_dir(model_id: str, commit: str) -> Path:
    return hub_cache_dir() / _repo_folder(model_id) / "snapshots" / commit


def _delete_cached_file(snapshot: Path, name: str) -> None:
    """Remove a file's snapshot link and the blob behind it so the next download fetches it again."""
    pointer = snapshot / name
    blob = pointer.resolve() if pointer.is_symlink() else None
    with contextlib.suppress(FileNotFoundError):
        pointer.unlink()
    if blob is not None:
        with contextlib.suppress(FileNotFoundError):
            blob.unlink()


def partial_dir() -> Path:
    """Where bytes of unfinished downloads wait, so a killed run resumes instead of starting over."""
    return cache_dir() / "partial"


def _partial_path(model_id: str, remote: RemoteFile) -> Path:
    return partial_dir() / _repo_folder(model_id) / f"{remote.digest}.part"


def _partial_size(model_id: str, remote: RemoteFile) -> int:
    part = _partial_path(model_id, remote)
    return part.stat().st_size if part.is_file() else 0


def _blob_path(model_id: str, remote: RemoteFile) -> Path:
    # huggingface_hub names blobs by the hub ETag, which is the digest recorded for the file.
    return hub_cache_dir() / _repo_folder(model_id) / "blobs" / remote.digest


def _fetch_files(model_id: str, commit: str, files: list[RemoteFile], progress: bool) -> None:
    snapshot = _snapshot_dir(model_id, commit)
    missing = [f for f in files if not (snapshot / f.name).is_file()]
    needed = sum(f.size - _partial_size(model_id, f) for f in missing if not _blob_path(model_id, f).is_file())
    check_free_space(needed, hub_cache_dir())
    with _stderr_progress(progress) as bars:
        for remote in missing:
            blob = _blob_path(model_id, remote)
            bar_class = _rich_bar_class(bars, remote.name)
            if not blob.is_file():
                _download_blob(model_id, commit, remote, blob, bar_class)
            # The blob is in place, so huggingface_hub only links it into the snapshot and records refs/.
            hf_hub_download(
                model_id,
                remote.name,
                revision=commit,
                cache_dir=hub_cache_dir(),
                endpoint=_endpoint(),
                tqdm_class=bar_class,
            )
            if (snapshot / remote.name).resolve() != blob.resolve():
                _check_received(snapshot, remote)  # the hub's ETag differed, so huggingface_hub fetched it itself


def _download_blob(model_id: str, commit: str, remote: RemoteFile, blob: Path, bar_class: type) -> None:
    """Fetch one file into a partial file that survives a killed run, then move it into the cache.

    huggingface_hub resumes a dropped connection within one call (HTTP Range) but deletes its
    temporary file when the process dies; keeping our own partial file extends resumption across runs.
    """
    part = _partial_path(model_id, remote)
    part.parent.mkdir(parents=True, exist_ok=True)
    if _partial_size(model_id, remote) > remote.size:
        part.unlink()
    resume_from = _partial_size(model_id, remote)
    url = hf_hub_url(model_id, remote.name, revision=commit, endpoint=_endpoint())
    with part.open("ab") as handle:
        http_get(
            url,
            handle,
            resume_size=resume_from,
            headers=build_hf_headers(library_name="docconv"),
            expected_size=remote.size,
            tqdm_class=bar_class,
        )
    actual = file_digest(part, remote.algo)
    if actual != remote.digest:
        part.unlink()
        raise _corrupt(remote, actual)
    blob.parent.mkdir(parents=True, exist_ok=True)
    os.replace(part, blob)


def _corrupt(remote: RemoteFile, actual: str) -> CorruptDownloadError:
    return CorruptDownloadError(
        f"{remote.name} arrived corrupted ({remote.algo} {actual[:12]}..., hub says {remote.digest[:12]}...); "
        "it was deleted, run the download again"
    )


def _check_received(snapshot: Path, remote: RemoteFile) -> None:
    actual = file_digest(snapshot / remote.name, remote.algo)
    if actual != remote.digest:
        _delete_cached_file(snapshot, remote.name)
        raise _corrupt(remote, actual)


def _is_pinned_to(record: CachedModel, revision: str) -> bool:
    return revision in (record.revision, record.commit)


def download_model(model_id: str, revision: str | None = None, progress: bool = True) -> CachedModel:
    """Make ``model_id`` complete and intact in the cache: fetch what is missing or corrupted.

    A model already downloaded at this revision is re-hashed (no network); only files whose hash does
    not match are deleted and fetched again. Otherwise the hub is asked which commit ``revision`` is.
    """
    with model_lock(model_id):
        return _download_locked(model_id, _requested_revision(model_id, revision), progress)


def _requested_revision(model_id: str, revision: str | None) -> str:
    return revision or (REGISTRY[model_id].revision if model_id in REGISTRY else "main")


def _download_locked(model_id: str, requested: str, progress: bool) -> CachedModel:
    record = load_records().get(model_id)
    if record is not None and record.source == "hub" and _is_pinned_to(record, requested):
        commit = record.commit or requested
        files = [RemoteFile(n, r.size, r.algo, r.digest) for n, r in record.files.items()]
        snapshot = _snapshot_dir(model_id, commit)
        for bad in _mismatched_files(snapshot, record.files):
            _say(f"{model_id}: {bad} is missing or corrupted, fetching it again")
            _delete_cached_file(snapshot, bad)
    else:
        if _offline_requested(False):
            raise ModelUnavailableError(unavailable_message(model_id, "HF_HUB_OFFLINE is set"))
        try:
            commit, files = _remote_listing(model_id, requested)
        except (*_NETWORK_ERRORS, HfHubHTTPError) as exc:
            raise _describe_hub_failure(model_id, exc) from None
    try:
        _fetch_files(model_id, commit, files, progress)
    except (*_NETWORK_ERRORS, HfHubHTTPError) as exc:
        raise _describe_hub_failure(model_id, exc) from None
    stamp = _now()
    new_record = CachedModel(
        id=model_id,
        path=str(_snapshot_dir(model_id, commit)),
        source="hub",
        revision=requested,
        commit=commit,
        files={f.name: FileRecord(f.size, f.algo, f.digest) for f in files},
        recorded_at=stamp,
        verified=True,  # every file was hashed just now, either on arrival or by the re-check above
        verified_at=stamp,
    )
    _save_record(new_record)
    return new_record


def _mismatched_files(directory: Path, files: dict[str, FileRecord]) -> list[str]:
    bad = []
    for name, rec in files.items():
        path = directory / name
        if not path.is_file() or path.stat().st_size != rec.size or file_digest(path, rec.algo) != rec.digest:
            bad.append(name)
    return bad


def _say(message: str) -> None:
    print(message, file=sys.stderr)


# -- resolving a --model argument -----------------------------------------------------------------
def looks_like_hub_id(model: str) -> bool:
    return bool(_HUB_ID.match(model)) and not model.startswith((".", "~"))


def _checkpoint_problem(directory: Path) -> str | None:
    """Why ``directory`` is not a usable checkpoint, or None. Reads safetensors headers only."""
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


def _hf_cache_snapshot(model_id: str, revision: str) -> Path | None:
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
    if _checkpoint_problem(snapshot) is not None:
        return None
    known = REGISTRY.get(model_id)
    if known and not all((snapshot / name).is_file() for name in known.files):
        return None
    return snapshot


def _record_hf_cache(model_id: str, revision: str, snapshot: Path) -> CachedModel:
    """Adopt a snapshot from the HF cache; its blob names are the hub's hashes, so verify still works."""
    files = {}
    for pointer in sorted(snapshot.iterdir()):
        if pointer.is_file():
            digest = pointer.resolve().name if pointer.is_symlink() else file_digest(pointer, "sha256")
            files[pointer.name] = FileRecord(pointer.stat().st_size, _algo_for(digest), digest)
    record = CachedModel(
        id=model_id,
        path=str(snapshot),
        source="hf-cache",
        revision=revision,
        commit=snapshot.name if _COMMIT.match(snapshot.name) else None,
        files=files,
        recorded_at=_now(),
    )
    _save_record(record)
    return record


def resolve_model(model: str, revision: str | None = None, offline: bool = False, progress: bool = True) -> Path:
    """Turn a ``--model`` value into a checkpoint directory, downloading it if needed and allowed.

    * an existing directory is returned as is (it must hold config.json);
    * an imported or cached id returns its directory without any network traffic;
    * a complete snapshot in the user's Hugging Face cache is reused instead of downloaded again;
    * otherwise the model is downloaded with progress on stderr, unless ``offline`` or
      ``HF_HUB_OFFLINE=1``, which raise :class:`ModelUnavailableError`.
    """
    local = Path(model).expanduser()
    if local.is_dir() or not looks_like_hub_id(model):
        return _local_checkpoint(local)
    requested = _requested_revision(model, revision)
    # One lock over look-up and download: a second process waits, then finds the finished snapshot.
    with model_lock(model):
        record = load_records().get(model)
        if record is not None and _serves(record, requested):
            return record.directory
        if (snapshot := _hf_cache_snapshot(model, requested)) is not None:
            return _record_hf_cache(model, requested, snapshot).directory
        if _offline_requested(offline):
            raise ModelUnavailableError(unavailable_message(model, "offline mode"))
        return _download_locked(model, requested, progress).directory


def _serves(record: CachedModel, requested: str) -> bool:
    """An import stands for its id whatever the revision; a download only for the revision it pinned."""
    return (record.source == "import" or _is_pinned_to(record, requested)) and record.files_present()


def _local_checkpoint(directory: Path) -> Path:
    if not directory.is_dir():
        raise ModelDirectoryError(
            f"model directory {directory} does not exist; pass a checkpoint directory or a hub id like {DEFAULT_MODEL}"
        )
    if not (directory / "config.json").is_file():
        raise ModelDirectoryError(f"{directory} has no config.json; point --model at a checkpoint directory")
    return directory


# -- import, verify, remove, list -----------------------------------------------------------------
def import_model(directory: Path, as_id: str | None = None, copy: bool = False) -> CachedModel:
    """Register a checkpoint copied by hand so ``resolve_model(as_id)`` finds it offline."""
    source = directory.expanduser().resolve()
    if not source.is_dir():
        raise ModelDirectoryError(f"{directory} is not a directory; pass the folder that holds config.json")
    if problem := _checkpoint_problem(source):
        raise ModelDirectoryError(f"{directory} {problem}; it is not a usable checkpoint")
    model_id = as_id or source.name
    target = _copy_into_cache(source, model_id) if copy else source
    files = {
        p.name: FileRecord(p.stat().st_size, "sha256", file_digest(p, "sha256"))
        for p in sorted(target.iterdir())
        if p.is_file() and not p.name.startswith(".")
    }
    record = CachedModel(
        id=model_id, path=str(target), source="import", files=files, copied=copy, recorded_at=_now()
    )
    _save_record(record)
    return record


def _copy_into_cache(source: Path, model_id: str) -> Path:
    target = cache_dir() / "imported" / _repo_folder(model_id)
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(source, staging)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target


def get_record(model_id: str) -> CachedModel:
    record = load_records().get(model_id)
    if record is None:
        raise ModelNotFoundError(
            f"model {model_id} is not cached; run `docconv models download {model_id}` "
            f"or `docconv models import <dir> --as {model_id}`"
        )
    return record


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
        bad = _mismatched_files(record.directory, record.files)
        updated = replace(record, verified=not bad, verified_at=_now())
        _save_record(updated)
    return VerifyReport(updated, bad)


def remove_model(model_id: str) -> CachedModel:
    """Forget a model and delete the files docconv owns (never a hand-copied dir nor the HF cache)."""
    with model_lock(model_id):
        record = get_record(model_id)
        if record.source == "hub":
            shutil.rmtree(hub_cache_dir() / _repo_folder(model_id), ignore_errors=True)
        elif record.copied:
            shutil.rmtree(record.directory, ignore_errors=True)
        _forget_record(model_id)
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
