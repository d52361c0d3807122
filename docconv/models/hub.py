"""Resumable, verified downloads of a model's checkpoint files from the Hugging Face hub.

Files are streamed into ``partial/`` (kept across runs, so a killed download resumes), checked
against the hash the hub announced, then moved into docconv's Hugging Face cache, where
huggingface_hub links them into the snapshot of the pinned commit.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import httpx2
from huggingface_hub import HfApi, hf_hub_download, hf_hub_url
from huggingface_hub.errors import (
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.file_download import http_get
from huggingface_hub.utils import build_hf_headers, filter_repo_objects

from docconv.models.download_progress import download_bars, tqdm_class_for
from docconv.models.errors import (
    CorruptDownloadError,
    ModelNotFoundError,
    ModelUnavailableError,
    WeightsError,
    unavailable_message,
)
from docconv.models.registry import file_patterns, requested_revision
from docconv.models.store import (
    CachedModel,
    FileRecord,
    HashAlgo,
    cache_dir,
    file_digest,
    hub_cache_dir,
    load_records,
    mismatched_files,
    model_lock,
    repo_folder,
    save_record,
    say,
    timestamp,
)

_NETWORK_ERRORS = (httpx2.TransportError, OfflineModeIsEnabled, LocalEntryNotFoundError)


def offline_requested(offline: bool) -> bool:
    """``offline`` as asked for, or ``HF_HUB_OFFLINE`` set to a true value."""
    return offline or os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _endpoint() -> str | None:
    # huggingface_hub reads HF_ENDPOINT once at import; reading it per call lets a process change it.
    return os.environ.get("HF_ENDPOINT") or None


def _describe_hub_failure(model_id: str, exc: Exception) -> WeightsError:
    """A hub or network exception as the one-line error the user sees."""
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
    return hub_cache_dir() / repo_folder(model_id) / "snapshots" / commit


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
    return partial_dir() / repo_folder(model_id) / f"{remote.digest}.part"


def _partial_size(model_id: str, remote: RemoteFile) -> int:
    part = _partial_path(model_id, remote)
    return part.stat().st_size if part.is_file() else 0


def _blob_path(model_id: str, remote: RemoteFile) -> Path:
    # huggingface_hub names blobs by the hub ETag, which is the digest recorded for the file.
    return hub_cache_dir() / repo_folder(model_id) / "blobs" / remote.digest
def _fetch_files(model_id: str, commit: str, files: list[RemoteFile], progress: bool) -> None:
    snapshot = _snapshot_dir(model_id, commit)
    missing = [f for f in files if not (snapshot / f.name).is_file()]
    needed = sum(f.size - _partial_size(model_id, f) for f in missing if not _blob_path(model_id, f).is_file())
    check_free_space(needed, hub_cache_dir())
    with download_bars(progress) as bars:
        for remote in missing:
            blob = _blob_path(model_id, remote)
            bar_class = tqdm_class_for(bars, remote.name)
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


def is_pinned_to(record: CachedModel, revision: str) -> bool:
    """Whether ``record`` was downloaded for ``revision`` (the branch or tag asked for, or its commit)."""
    return revision in (record.revision, record.commit)


def download_model(model_id: str, revision: str | None = None, progress: bool = True) -> CachedModel:
    """Make ``model_id`` complete and intact in the cache: fetch what is missing or corrupted.

    A model already downloaded at this revision is re-hashed (no network); only files whose hash does
    not match are deleted and fetched again. Otherwise the hub is asked which commit ``revision`` is.
    """
    with model_lock(model_id):
        return download_locked(model_id, requested_revision(model_id, revision), progress)


def download_locked(model_id: str, requested: str, progress: bool) -> CachedModel:
    """:func:`download_model` for a caller that already holds the model's lock."""
    record = load_records().get(model_id)
    if record is not None and record.source == "hub" and is_pinned_to(record, requested):
        commit = record.commit or requested
        files = [RemoteFile(n, r.size, r.algo, r.digest) for n, r in record.files.items()]
        snapshot = _snapshot_dir(model_id, commit)
        for bad in mismatched_files(snapshot, record.files):
            say(f"{model_id}: {bad} is missing or corrupted, fetching it again")
            _delete_cached_file(snapshot, bad)
    else:
        if offline_requested(False):
            raise ModelUnavailableError(unavailable_message(model_id, "HF_HUB_OFFLINE is set"))
        try:
            commit, files = _remote_listing(model_id, requested)
        except (*_NETWORK_ERRORS, HfHubHTTPError) as exc:
            raise _describe_hub_failure(model_id, exc) from None
    try:
        _fetch_files(model_id, commit, files, progress)
    except (*_NETWORK_ERRORS, HfHubHTTPError) as exc:
        raise _describe_hub_failure(model_id, exc) from None
    stamp = timestamp()
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
    save_record(new_record)
    return new_record
