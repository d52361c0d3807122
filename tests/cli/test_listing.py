"""The table helper every listing command prints through: rich table, tab-separated lines, or JSON."""

from __future__ import annotations

import io
import json
import re

import pytest

from docconv.cli.listing import json_key, print_table

COLUMNS = ("id", "size", "path")
LONG_ID = "local/a-model-id-much-longer-than-any-column-of-an-80-column-table-could-hold"
ROWS = [(LONG_ID, "2.3 MB", "/models/" + "x" * 120), ("b", "-", "-")]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_piped_output_is_one_tab_separated_line_per_record_without_header() -> None:
    out = io.StringIO()
    print_table(COLUMNS, ROWS, title="a title", stream=out)
    assert out.getvalue() == f"{LONG_ID}\t2.3 MB\t/models/{'x' * 120}\nb\t-\t-\n"


def test_piped_output_escapes_tabs_and_line_breaks_inside_cells() -> None:
    out = io.StringIO()
    print_table(("key", "value"), [("sep", "a\tb\nc\r")], stream=out)
    assert out.getvalue() == "sep\ta\\tb\\nc\\r\n"


def test_piped_output_ignores_force_color(monkeypatch: pytest.MonkeyPatch) -> None:
    """rich treats FORCE_COLOR as a terminal; the helper looks at the stream itself."""
    monkeypatch.setenv("FORCE_COLOR", "1")
    out = io.StringIO()
    print_table(COLUMNS, ROWS, stream=out)
    assert out.getvalue().splitlines()[0].split("\t") == list(ROWS[0])


def test_terminal_output_is_a_rich_table_with_title_and_header(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    out = Terminal()
    print_table(COLUMNS, ROWS, title="a title", stream=out)
    text = re.sub(r"\x1b\[[0-9;]*m", "", out.getvalue())  # without colours
    assert "a title" in text and "┃ id" in text and "│" in text
    assert LONG_ID not in text  # folded inside its column to fit the terminal
    assert max(len(line) for line in text.splitlines()) == 80


def test_json_defaults_to_a_list_of_records_keyed_by_column() -> None:
    out = io.StringIO()
    print_table(COLUMNS, ROWS, as_json=True, stream=out)
    assert json.loads(out.getvalue()) == [dict(zip(COLUMNS, row, strict=True)) for row in ROWS]


def test_json_is_printed_even_on_a_terminal_and_takes_the_command_s_shape() -> None:
    out = Terminal()
    print_table(COLUMNS, ROWS, as_json=True, json_data={"answer": 42, "none": None}, stream=out)
    assert json.loads(out.getvalue()) == {"answer": 42, "none": None}


@pytest.mark.parametrize(
    ("label", "key"),
    [("would use", "would_use"), ("gpu cuda:0", "gpu_cuda_0"), ("flash-attn", "flash_attn"), ("docconv", "docconv")],
)
def test_json_keys_from_labels(label: str, key: str) -> None:
    assert json_key(label) == key
