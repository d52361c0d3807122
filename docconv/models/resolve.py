"""A ``--model`` value -> a checkpoint directory: what an engine calls before it loads weights."""

from __future__ import annotations

import re
from pathlib import Path

from docconv.models.checkpoint import local_checkpoint
from docconv.models.errors import ModelUnavailableError, unavailable_message
from docconv.models.hf_cache import adopt_snapshot
from docconv.models.hub import download_locked, is_pinned_to, offline_requested
from docconv.models.registry import requested_revision
from docconv.models.store import CachedModel, load_records, model_lock

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def looks_like_hub_id(model: str) -> bool:
    return bool(_HUB_ID.match(model)) and not model.startswith((".", "~"))


def resolve_model(model: str, revision: str | None = None, offline: bool = False, progress: bool = True) -> Path:
    """Turn a ``--model`` value into a checkpoint directory, downloading it if needed and allowed.

    * an existing directory is returned as is, once :func:`~docconv.models.checkpoint.checkpoint_problem`
      finds nothing wrong with it;
    * an imported or cached id returns its directory without any network traffic;
    * a complete snapshot in the user's Hugging Face cache is reused instead of downloaded again;
    * otherwise the model is downloaded with progress on stderr, unless ``offline`` or
      ``HF_HUB_OFFLINE=1``, which raise :class:`~docconv.models.errors.ModelUnavailableError`.
    """
    local = Path(model).expanduser()
    if local.is_dir() or not looks_like_hub_id(model):
        return local_checkpoint(local)
    requested = requested_revision(model, revision)
    # One lock over look-up and download: a second process waits, then finds the finished snapshot.
    with model_lock(model):
        record = load_records().get(model)
        if record is not None and _serves(record, requested):
            return record.directory
        if (adopted := adopt_snapshot(model, requested)) is not None:
            return adopted.directory
        if offline_requested(offline):
            raise ModelUnavailableError(unavailable_message(model, "offline mode"))
        return download_locked(model, requested, progress).directory


def _serves(record: CachedModel, requested: str) -> bool:
    """An import stands for its id whatever the revision; a download only for the revision it pinned."""
    return (record.source == "import" or is_pinned_to(record, requested)) and record.files_present()
