"""HTML tables from the model -> rows, GitHub Markdown, HTML and CSV."""

from __future__ import annotations

import csv
import io

from docconv.output.tables import MAX_SPAN, parse_table, render_table, table_to_csv, table_to_markdown

SPANNED = (
    '<table><tr><th rowspan="2">Name</th><th colspan="2">Score</th></tr>'
    "<tr><th>A</th><th>B</th></tr><tr><td>x</td><td>1</td><td>2</td></tr></table>"
)
SIMPLE = "<table><tr><td>Item</td><td>Price</td></tr><tr><td> Tea </td><td>3</td></tr></table>"


def test_spans_are_expanded_into_a_rectangular_grid() -> None:
    table = parse_table(SPANNED)
    assert table.has_spans
    assert table.rows == [["Name", "Score", "Score"], ["Name", "A", "B"], ["x", "1", "2"]]


def test_simple_table_becomes_a_github_table_with_trimmed_cells() -> None:
    table = parse_table(SIMPLE)
    assert not table.has_spans
    assert render_table(table, "auto") == "| Item | Price |\n| --- | --- |\n| Tea | 3 |"


def test_spanned_table_stays_html_unless_markdown_is_forced() -> None:
    table = parse_table(SPANNED)
    rendered = render_table(table, "auto")
    assert 'rowspan="2"' in rendered and 'colspan="2"' in rendered and rendered.startswith("<table>")
    assert render_table(table, "md").startswith("| Name | Score | Score |")
    assert render_table(parse_table(SIMPLE), "html").startswith("<table>")


def test_pipes_and_line_breaks_do_not_break_the_markdown_row() -> None:
    table = parse_table("<table><tr><td>a|b<br>c</td><td>d</td></tr></table>")
    assert table.rows == [["a|b\nc", "d"]]
    assert table_to_markdown(table).splitlines()[0] == "| a\\|b<br>c | d |"


def test_truncated_table_keeps_its_cells_and_html_is_closed() -> None:
    table = parse_table("<table><tr><td>1</td><td>2</td></tr><tr><td>3</td><td>4")
    assert table.rows == [["1", "2"], ["3", "4"]]
    assert table.html.endswith("</table>")


def test_ragged_rows_are_padded_and_garbage_spans_are_tolerated() -> None:
    table = parse_table(
        '<table><tr><td colspan="x">a</td></tr><tr><td>b</td><td colspan="999999">c</td></tr>'
    )
    assert all(len(row) == len(table.rows[0]) for row in table.rows)
    assert len(table.rows[0]) == 1 + MAX_SPAN
    assert table.rows[0][:2] == ["a", ""]


def test_csv_expands_spans_and_quotes_commas() -> None:
    table = parse_table(
        '<table><tr><td colspan="2">Total, net</td></tr><tr><td>1</td><td>2</td></tr></table>'
    )
    assert list(csv.reader(io.StringIO(table_to_csv(table)))) == [["Total, net", "Total, net"], ["1", "2"]]


def test_cell_text_is_escaped_in_regenerated_html() -> None:
    table = parse_table("<table><tr><td>a &lt; b</td></tr></table>")
    assert table.rows == [["a < b"]]
    assert "<td>a &lt; b</td>" in table.html
