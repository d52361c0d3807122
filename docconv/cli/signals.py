"""SIGTERM handled the way Ctrl-C is: finished pages kept, no partial file, a distinct exit code."""

from __future__ import annotations

import signal
from typing import NoReturn


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, ``timeout``, a service stop): stopped the way Ctrl-C stops."""


def _raise_terminated(signum: int, frame: object) -> NoReturn:
    raise Terminated


def stop_on_sigterm() -> None:
    """From now on SIGTERM raises :class:`Terminated` wherever the process is."""
    signal.signal(signal.SIGTERM, _raise_terminated)
