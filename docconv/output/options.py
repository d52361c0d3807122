"""The output formats and how a document is rendered in them (plain values; no renderer imported)."""

from __future__ import annotations

from dataclasses import dataclass

FORMATS = ("md", "json", "jsonl", "html")
TABLE_FORMATS = ("auto", "md", "html")
TASKS = ("markdown", "text", "handwriting", "figure", "describe", "raw")

#: Put between pages of a Markdown document; ``{page}`` is the number of the page that follows.
#: An HTML comment: invisible when rendered, easy to split on, no form feed or rule to clash with.
DEFAULT_PAGE_SEPARATOR = "\n\n<!-- page {page} -->\n\n"

#: File extension of each output format.
EXTENSIONS = {"md": ".md", "json": ".json", "jsonl": ".jsonl", "html": ".html"}


@dataclass(frozen=True)
class RenderOptions:
    """How a document is turned into text."""

    format: str = "md"  # md | json | jsonl | html
    tables_format: str = "auto"  # auto (Markdown unless spans) | md | html
    keep_headers: bool = False  # keep page headers, footers and page numbers
    page_separator: str = DEFAULT_PAGE_SEPARATOR
    task: str = "markdown"  # markdown | text | handwriting | figure | describe | raw
    tables_csv: bool = False  # also write every table as CSV
