"""The fixed choices of the CLI's options, as the enums typer shows and checks.

Each is built from the list it offers (the model's modes, docconv's tasks and formats), so a
new mode, task or format appears in ``--help`` and completion without touching the CLI.
"""

from __future__ import annotations

from enum import Enum

from deepseek_ocr.modes import MODES
from docconv.compress import COMPRESS_MODES
from docconv.memory.schedule import CLOCKS
from docconv.output import options as output_options
from docconv.run.modes import AUTO
from docconv.run.options import TASKS


def _choices(name: str, values: tuple[str, ...]) -> type[Enum]:
    return Enum(name, {value: value for value in values}, type=str)  # type: ignore[return-value]


Mode = _choices("Mode", (AUTO, *MODES))
CompressMode = _choices("CompressMode", COMPRESS_MODES)
Task = _choices("Task", TASKS)
Format = _choices("Format", output_options.FORMATS)
TablesFormat = _choices("TablesFormat", output_options.TABLE_FORMATS)
RenderTask = _choices("RenderTask", output_options.TASKS)
Clock = _choices("Clock", CLOCKS)


def value_of(choice: Enum | None) -> str | None:
    """The string behind an optional choice (None when the option was not given)."""
    return None if choice is None else choice.value
