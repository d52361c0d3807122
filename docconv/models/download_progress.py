"""Download progress on stderr: huggingface_hub's tqdm hook drawn as rich bars."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)


def download_bars(enabled: bool) -> Progress:
    """The bars of one download session (drawn on stderr; nothing at all when not ``enabled``)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not enabled,
    )


def tqdm_class_for(progress: Progress, label: str) -> type:
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
