"""Stdout of the listing commands (``models list``, ``doctor``, ``config show``): one helper for all.

Every table command prints through :func:`print_table`, which picks one of three shapes:

- ``--json``: JSON on stdout (the command decides the shape: a list of records, or an object),
  with stable key names, values typed (numbers as numbers, missing values as ``null``).
- stdout is a terminal: a rich table sized to the terminal (long cells fold inside their column).
- stdout is not a terminal (a pipe or a file): one record per line, the cells separated by tabs,
  in the table's column order, with no header line and no title; never wrapped or truncated, so
  ``docconv models list | grep local/tiny`` finds the whole row. A tab, newline or carriage
  return inside a cell is written as ``\\t``, ``\\n`` or ``\\r``; ``--json`` has the exact values.

The choice looks at ``isatty()`` of the stream itself, not at rich's idea of a terminal
(``FORCE_COLOR`` makes rich draw tables into pipes).
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable, Sequence
from typing import Annotated, Any, TextIO

import typer
from rich.console import Console
from rich.table import Table

#: The ``--json`` option every table command takes.
JsonOption = Annotated[
    bool,
    typer.Option(
        "--json",
        help="Print JSON instead of a table. Without it, output that is not a terminal "
        "is one tab-separated record per line.",
    ),
]

_ESCAPES = str.maketrans({"\t": "\\t", "\n": "\\n", "\r": "\\r"})


def print_table(
    columns: Sequence[str],
    rows: Iterable[Sequence[str]],
    *,
    title: str | None = None,
    show_header: bool = True,
    as_json: bool = False,
    json_data: Any = None,
    stream: TextIO | None = None,
) -> None:
    """Print ``rows`` (display strings, one per column) as ``--json``, a rich table or tab-separated lines.

    ``json_data`` is what ``--json`` prints; by default the rows as a list of objects keyed by
    :func:`json_key` of each column name.
    """
    stream = sys.stdout if stream is None else stream
    rows = [[str(cell) for cell in row] for row in rows]
    if as_json:
        if json_data is None:
            keys = [json_key(column) for column in columns]
            json_data = [dict(zip(keys, row, strict=True)) for row in rows]
        print_json(json_data, stream)
    elif _is_terminal(stream):
        table = Table(title=title, title_justify="left", show_header=show_header)
        for column in columns:
            table.add_column(column, overflow="fold")
        for row in rows:
            table.add_row(*row)
        Console(file=stream, highlight=False).print(table)
    else:
        for row in rows:
            stream.write("\t".join(cell.translate(_ESCAPES) for cell in row) + "\n")
        stream.flush()


def print_json(data: Any, stream: TextIO | None = None) -> None:
    """``data`` as indented JSON and a newline (non-ASCII kept as is)."""
    stream = sys.stdout if stream is None else stream
    stream.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    stream.flush()


def json_key(label: str) -> str:
    """A display label as a JSON key: ``"gpu cuda:0"`` -> ``"gpu_cuda_0"``, ``"flash-attn"`` -> ``"flash_attn"``."""
    return re.sub(r"[^0-9a-z]+", "_", label.lower()).strip("_")


def _is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except (OSError, ValueError):  # a closed or detached stream
        return False
