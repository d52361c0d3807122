"""Why a model's weights cannot be used; every message is one line that says what to do.

These are not engine errors: the weight cache serves ``docconv models`` as well as engines, and
an engine that cannot get its weights reports that as its own start-up failure.
"""

from __future__ import annotations


class WeightsError(Exception):
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
    """The two ways to get ``model_id`` without this process reaching the hub."""
    return (
        f"model {model_id} is not available offline ({reason}); "
        f"run `docconv models download {model_id}` with network access, "
        f"or copy the weights by hand and run `docconv models import <dir> --as {model_id}`"
    )
