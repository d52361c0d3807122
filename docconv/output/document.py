"""The document model shared by the pipeline, the post-processor and the writers.

inputs -> pages -> (mode) -> engine -> raw text -> blocks -> writers.
A :class:`Page` is everything docconv knows about one converted page; it is plain data
(JSON round-trips through :meth:`Page.to_dict` / :meth:`Page.from_dict`) so finished
pages can be journaled and a killed run can resume.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

SCHEMA_VERSION = "1.0"

BBox = tuple[int, int, int, int]  # x1, y1, x2, y2 in page pixels

#: Block types that repeat on every page (page furniture); renderers drop them by default.
FURNITURE_TYPES = frozenset({"header", "footer", "page_number"})


@dataclass
class Table:
    """A table as data: ``rows`` with spans expanded (every row has the same length)."""

    rows: list[list[str]]
    html: str
    has_spans: bool = False


@dataclass
class Block:
    """One layout region of a page, in reading order."""

    type: str  # title, sub_title, text, table, image, equation, list, header, footer, ...
    text: str  # content as plain text / markdown fragment (tables: the HTML as emitted)
    bboxes: list[BBox] = field(default_factory=list)
    label: str = ""  # the model's original label (kept when type was normalised)
    table: Table | None = None
    image_path: str | None = None  # figure crop, relative to the output file
    caption: str | None = None
    level: int = 0  # heading level for title/sub_title (1 = "#"), 0 otherwise

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Block:
        data = dict(data)
        table = data.pop("table", None)
        bboxes = [tuple(b) for b in data.pop("bboxes", [])]
        return cls(**data, bboxes=bboxes, table=Table(**table) if table else None)


@dataclass
class Page:
    """One converted page."""

    number: int  # 1-based page number in the source document
    width: int  # page image size in pixels (what the boxes refer to)
    height: int
    mode: str = ""
    vision_tokens: int = 0  # paper count
    valid_vision_tokens: int = 0
    text_tokens: int = 0
    stop_reason: str = "eos"  # eos | max_tokens
    degraded: bool = False
    degraded_reasons: list[str] = field(default_factory=list)
    retried: bool = False
    seconds: float = 0.0
    raw: str = ""
    blocks: list[Block] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        """Text tokens per valid vision token: the paper's compression ratio."""
        return round(self.text_tokens / self.valid_vision_tokens, 2) if self.valid_vision_tokens else 0.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ratio"] = self.ratio
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Page:
        data = {k: v for k, v in data.items() if k != "ratio"}
        blocks = [Block.from_dict(b) for b in data.pop("blocks", [])]
        return cls(**data, blocks=blocks)


@dataclass
class Document:
    """A converted source document: its pages in page order."""

    source: str  # the input path as given ("-" for stdin)
    pages: list[Page] = field(default_factory=list)
    page_count: int = 0  # pages in the source (before --pages selection)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "source": self.source,
            "page_count": self.page_count,
            "pages": [p.to_dict() for p in self.pages],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Document:
        return cls(
            source=data["source"],
            page_count=data.get("page_count", 0),
            pages=[Page.from_dict(p) for p in data.get("pages", [])],
        )
