"""HTML tables as the model emits them -> data (rows), GitHub Markdown, clean HTML and CSV.

DeepSeek-OCR writes tables as HTML whose ``<td>``/``</td>``/``<tr>``/``</tr>`` are single
special tokens, so a truncated or looping answer leaves tags unclosed. The standard
library's :class:`html.parser.HTMLParser` never raises on such input, which is why the
table is parsed with it and then re-serialised: what reaches the output is always
well-formed HTML, whatever the model produced.
"""

from __future__ import annotations

import csv
import html
import io
from dataclasses import dataclass
from html.parser import HTMLParser

from docconv.output.document import Table

#: A span larger than this is a model glitch, not a table; capping it keeps a
#: ``colspan="99999999"`` from allocating a giant grid.
MAX_SPAN = 100


@dataclass
class _Cell:
    text: str
    header: bool
    rowspan: int = 1
    colspan: int = 1


class _TableParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.rows: list[list[_Cell]] = []
        self._cell: _Cell | None = None
        self._parts: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "tr":
            self._close_cell()
            self.rows.append([])
        elif tag in ("td", "th"):
            self._close_cell()
            if not self.rows:
                self.rows.append([])
            values = dict(attrs)
            self._cell = _Cell("", tag == "th", _span(values.get("rowspan")), _span(values.get("colspan")))
            self._parts = []
        elif tag == "br" and self._cell is not None:
            self._parts.append("\n")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th", "tr", "table"):
            self._close_cell()

    def handle_data(self, data: str) -> None:
        if self._cell is None and data.strip():
            self.handle_starttag("td", [])  # text outside any cell is still table content
        if self._cell is not None:
            self._parts.append(data)

    def _close_cell(self) -> None:
        if self._cell is None:
            return
        self._cell.text = "\n".join(
            " ".join(line.split()) for line in "".join(self._parts).split("\n")
        ).strip()
        self.rows[-1].append(self._cell)
        self._cell = None
        self._parts = []


def _span(value: str | None) -> int:
    try:
        return max(1, min(MAX_SPAN, int(str(value).strip())))
    except ValueError:
        return 1


def parse_table(source: str) -> Table:
    """Parse one HTML table (possibly truncated or with unclosed tags) into a :class:`Table`."""
    parser = _TableParser()
    parser.feed(source)
    parser.close()
    parser.handle_endtag("table")  # a truncated table still yields its last cell
    cells = [row for row in parser.rows if row]
    has_spans = any(cell.rowspan > 1 or cell.colspan > 1 for row in cells for cell in row)
    return Table(rows=_expand(cells), html=_to_html(cells), has_spans=has_spans)


def _expand(cells: list[list[_Cell]]) -> list[list[str]]:
    """Grid rows with every spanned cell's text copied into each position it covers."""
    grid: dict[tuple[int, int], str] = {}
    for r, row in enumerate(cells):
        c = 0
        for cell in row:
            while (r, c) in grid:
                c += 1
            for dr in range(cell.rowspan):
                for dc in range(cell.colspan):
                    grid.setdefault((r + dr, c + dc), cell.text)
            c += cell.colspan
    if not grid:
        return []
    height = max(r for r, _ in grid) + 1
    width = max(c for _, c in grid) + 1
    return [[grid.get((r, c), "") for c in range(width)] for r in range(height)]


def _to_html(cells: list[list[_Cell]]) -> str:
    lines = ["<table>"]
    for row in cells:
        rendered = []
        for cell in row:
            tag = "th" if cell.header else "td"
            attrs = (f' rowspan="{cell.rowspan}"' if cell.rowspan > 1 else "") + (
                f' colspan="{cell.colspan}"' if cell.colspan > 1 else ""
            )
            text = "<br>".join(html.escape(line, quote=False) for line in cell.text.split("\n"))
            rendered.append(f"<{tag}{attrs}>{text}</{tag}>")
        lines.append("<tr>" + "".join(rendered) + "</tr>")
    lines.append("</table>")
    return "\n".join(lines)


def _markdown_cell(text: str) -> str:
    # A pipe would end the cell and a newline the row; <br> is GitHub's in-cell line break.
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", "<br>")


def table_to_markdown(table: Table) -> str:
    """A GitHub Markdown table; the first row is the header row (GFM requires one)."""
    if not table.rows:
        return ""
    header, *body = table.rows
    lines = [
        "| " + " | ".join(_markdown_cell(cell) for cell in header) + " |",
        "|" + "|".join(" --- " for _ in header) + "|",
    ]
    lines.extend("| " + " | ".join(_markdown_cell(cell) for cell in row) + " |" for row in body)
    return "\n".join(lines)


def render_table(table: Table, tables_format: str = "auto") -> str:
    """Markdown for a simple grid, HTML when spans would be lost (``tables_format`` forces one)."""
    if tables_format == "html" or (tables_format == "auto" and table.has_spans):
        return table.html
    return table_to_markdown(table)


def table_to_csv(table: Table) -> str:
    """CSV text of the expanded grid (spans copied into every cell they cover)."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(table.rows)
    return buffer.getvalue()
