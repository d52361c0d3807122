"""Raw DeepSeek-OCR text -> layout blocks.

The model answers a grounding prompt with records::

    <|ref|>LABEL<|/ref|><|det|>[[x1, y1, x2, y2], ...]<|/det|>
    CONTENT

(spec §10.1). The official code finds them with one regex and ``eval``s the boxes, so a
truncated answer, a missing closing tag or a garbled box either leaks tags or crashes.
Here the text is cut into tokens and walked by a small state machine that accepts every
input: whatever is not markup ends up in some block. Markup is the four grounding tokens,
the label between ``<|ref|>`` and ``<|/ref|>``, the box payload after ``<|det|>`` and any
other ``<|...|>`` / ``<｜...｜>`` special token.

Decisions (see docs/output-schema.md):

* boxes use the 0-999 grid divided by 999 (spec §10.2) and are clamped to the page;
  a coordinate that is not a number in 0..1000 drops its box. A dropped box only
  degrades the page when it was an ``image`` box, because then the figure is lost;
  otherwise it is a warning and the content is kept.
* a repeated tail (a decoding loop) is cut to one occurrence and degrades the page.
* an unclosed record or table at the end degrades the page as "truncated output".
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from docconv.output.document import BBox, Block
from docconv.output.tables import parse_table

#: The official PDF script writes this between pages of ``X_det.mmd`` (spec §10.4).
PAGE_SPLIT = "<--- Page Split --->"

REASON_LOOP = "repetition loop cut"
REASON_TRUNCATED = "truncated output"
REASON_BOX = "malformed box"
#: Not detected by the parser (it needs the engine's stop reason) but shared by every caller.
REASON_TOKEN_LIMIT = "hit the token limit (--max-tokens)"

#: Model label -> block type. Unknown labels become "text" (their label is kept on the block).
LABEL_TYPES: dict[str, str] = {
    "title": "title",
    "sub_title": "sub_title",
    "text": "text",
    "table": "table",
    "table_caption": "table_caption",
    "table_footnote": "table_footnote",
    "image": "image",
    "figure": "image",
    "image_caption": "image_caption",
    "figure_caption": "image_caption",
    "equation": "equation",
    "formula": "equation",
    "list": "list",
    "header": "header",
    "page_header": "header",
    "footer": "footer",
    "page_footer": "footer",
    "page_number": "page_number",
    "footnote": "footnote",
}

#: Records that may carry the HTML of a table announced by an empty ``table`` record just before.
_TABLE_COMPANIONS = {"table", "table_caption", "table_footnote"}

_GROUNDING_TOKEN = re.compile(r"(<\|/?(?:ref|det)\|>)")
_SPECIAL_TOKEN = re.compile(r"<\|[^|<>\n]{0,64}\|>|<｜[^｜<>\n]{0,64}｜>")
_CENTER_TAG = re.compile(r"</?center>", re.IGNORECASE)
_NUMBER = r"\s*(-?\d+(?:\.\d+)?)\s*"
_BOX = re.compile(r"\[" + ",".join([_NUMBER] * 4) + r"\]")
_TABLE = re.compile(r"<table\b.*?(?:</table\s*>|\Z)", re.IGNORECASE | re.DOTALL)
_BARE_ROWS = re.compile(r"<(?:tr|td|th)\b", re.IGNORECASE)
_HEADING = re.compile(r"^(#{1,6})[ \t]+")
_UNCLOSED_BOX_LIST = re.compile(r"[\[\]\d\s,.-]*")
_KNOWN_LABEL = re.compile(
    r"\s*(" + "|".join(sorted(map(re.escape, LABEL_TYPES), key=len, reverse=True)) + ")", re.IGNORECASE
)
_TABLE_TAG_CHARS = set("<>/tdrh \n\t")


@dataclass
class ParsedPage:
    """Blocks of one page in reading order, and why the page is degraded (if it is)."""

    blocks: list[Block] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)  # each one degrades the page
    warnings: list[str] = field(default_factory=list)  # noticed and repaired, content intact

    @property
    def degraded(self) -> bool:
        return bool(self.reasons)

    def add_reason(self, reason: str) -> None:
        if reason not in self.reasons:
            self.reasons.append(reason)

    def add_warning(self, warning: str) -> None:
        if warning not in self.warnings:
            self.warnings.append(warning)


@dataclass
class _Record:
    label: str = ""
    payload: str | None = None  # the det payload, None when the record had no box list
    content: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- page splitting


def split_raw_pages(text: str) -> list[str]:
    """Split a multi-page raw file (official ``X_det.mmd``) on the page-split marker."""
    pages = [page.strip("\n") for page in text.split(PAGE_SPLIT)]
    while len(pages) > 1 and not pages[-1].strip():
        pages.pop()  # the official writer puts a marker after the last page as well
    return pages


# --------------------------------------------------------------------------- repetition loops


def cut_repetition_loop(text: str, min_unit: int = 20, min_repeats: int = 4) -> tuple[str, bool]:
    """Cut a repeated tail down to one occurrence; returns (text, whether a loop was cut).

    A tail is a loop when it has period ``p`` over at least ``min_repeats`` periods
    (``p >= min_unit``), or, for short units, over at least 200 characters and 10
    periods. Units made only of table tags and whitespace must repeat 50 times: long
    runs of empty ``<td></td>`` cells and rows are legitimate in sparse tables. Only the
    tail is examined because a loop runs until the token limit; a table that repeats a
    row and then closes with ``</table>`` is not periodic at the end and is left alone.
    """
    stripped = text.rstrip()
    n = len(stripped)
    for period in range(1, n // min_repeats + 1):
        if stripped[n - 2 * period : n - period] != stripped[n - period :]:
            continue
        length = _periodic_suffix_length(stripped, period)
        start = n - length
        if length >= period * _required_repeats(stripped[start : start + period], min_unit, min_repeats):
            return stripped[: _natural_cut(stripped, start + period, period)], True
    return text, False


def _natural_cut(text: str, first: int, period: int) -> int:
    """Where to end the one kept occurrence: after a newline, a tag or a space if the unit has one."""
    window = range(first, first + period)
    for boundary in ("\n", ">", " "):
        for position in window:
            if text[position - 1] == boundary:
                return position
    return first


def _required_repeats(unit: str, min_unit: int, min_repeats: int) -> int:
    if set(unit) <= _TABLE_TAG_CHARS:  # a rotation of "<td></td>" and the like
        return 50
    if len(unit) >= min_unit:
        return min_repeats
    return max(10, -(-200 // len(unit)))


def _periodic_suffix_length(text: str, period: int) -> int:
    """Longest suffix of ``text`` with period ``period`` (binary search: the property is monotone)."""
    n = len(text)
    low, high = 2 * period, n
    while low < high:
        mid = (low + high + 1) // 2
        if text[n - mid : n - period] == text[n - mid + period :]:
            low = mid
        else:
            high = mid - 1
    return low


# --------------------------------------------------------------------------- records


def _split_records(raw: str, parsed: ParsedPage) -> list[_Record]:
    """Walk the grounding tokens; text before the first record becomes a label-less record."""
    records = [_Record()]
    state = "content"
    for piece in _GROUNDING_TOKEN.split(raw):
        current = records[-1]
        if state == "label" and piece in ("<|ref|>", "<|det|>", "<|/det|>"):
            _settle_unclosed_label(current)
            state = "content"
        if piece == "<|ref|>":
            records.append(_Record())
            state = "label"
        elif piece == "<|/ref|>":
            state = "after_label" if state == "label" else state
        elif piece == "<|det|>":
            if state in ("content", "det") and (
                current.payload is not None or "".join(current.content).strip()
            ):
                records.append(_Record())  # a box list without a label starts a record
            records[-1].payload = records[-1].payload or ""
            state = "det"
        elif piece == "<|/det|>":
            state = "content"
        elif state == "label":
            current.label += piece
        elif state == "det":
            current.payload = (current.payload or "") + piece
        else:
            current.content.append(piece)
            if state == "after_label" and piece.strip():
                state = "content"
    if state == "label":
        _settle_unclosed_label(records[-1])
    if state in ("label", "det"):
        parsed.add_reason(REASON_TRUNCATED)
    for record in records:
        _move_non_box_text_to_content(record)
    return [r for r in records if r.label or r.payload is not None or "".join(r.content).strip()]


def _settle_unclosed_label(record: _Record) -> None:
    # Without <|/ref|> only a known label word is markup; the rest is what the model wrote.
    match = _KNOWN_LABEL.match(record.label)
    label = match.group(1) if match else ""
    record.content.insert(0, record.label[match.end() if match else 0 :])
    record.label = label


def _move_non_box_text_to_content(record: _Record) -> None:
    # The payload is one bracketed box list; whatever follows it (or a payload that is no
    # list at all) is text the model wrote, e.g. after a missing <|/det|>: it is content.
    if record.payload is None:
        return
    end = _box_list_end(record.payload)
    if end < len(record.payload):
        record.content.insert(0, record.payload[end:])
        record.payload = record.payload[:end]


def _box_list_end(payload: str) -> int:
    """End of the leading box lists (bracket-balanced, possibly several in a row).

    A list that never closes ends at its last box character, so text after a truncated
    payload stays content.
    """
    end = 0
    while True:
        start = end + len(payload[end:]) - len(payload[end:].lstrip(" \t\n,"))
        if not payload.startswith("[", start):
            return end
        depth = 0
        for index in range(start, len(payload)):
            depth += {"[": 1, "]": -1}.get(payload[index], 0)
            if depth == 0:
                end = index + 1
                break
        else:
            return _UNCLOSED_BOX_LIST.match(payload, start).end()  # type: ignore[union-attr]


def parse_boxes(payload: str, width: int, height: int) -> tuple[list[BBox], bool]:
    """Boxes of a det payload in page pixels, and whether some box had to be dropped.

    Width or height <= 0 means the page size is unknown: boxes stay on the 0-999 grid.
    """
    boxes: list[BBox] = []
    found = _BOX.findall(payload)
    dropped = len(found) < max(payload.count("[") - 1, 1 if payload.strip() else 0)
    for values in found:
        coords = [float(v) for v in values]
        if not all(0 <= v <= 1000 for v in coords):
            dropped = True
            continue
        box = _to_pixels(coords, width, height)
        if box[2] <= box[0] or box[3] <= box[1]:
            dropped = True
            continue
        boxes.append(box)
    return boxes, dropped


def _to_pixels(coords: list[float], width: int, height: int) -> BBox:
    x1, x2 = sorted((coords[0], coords[2]))
    y1, y2 = sorted((coords[1], coords[3]))
    if width <= 0 or height <= 0:
        return (int(x1), int(y1), int(x2), int(y2))

    def scale(value: float, size: int) -> int:
        return max(0, min(size, int(value / 999 * size)))

    return (scale(x1, width), scale(y1, height), scale(x2, width), scale(y2, height))


# --------------------------------------------------------------------------- content


def clean_content(text: str) -> str:
    """Remove stray special tokens and ``<center>`` wrappers; trim trailing spaces per line."""
    text = _SPECIAL_TOKEN.sub("", text)
    text = _CENTER_TAG.sub("", text)
    return "\n".join(line.rstrip() for line in text.split("\n")).strip("\n")


def _split_tables(text: str, label_type: str) -> list[tuple[str, str]]:
    """Content as ("text", ...) and ("table", html) segments in order."""
    if label_type == "table" and "<table" not in text.lower() and _BARE_ROWS.search(text):
        return [("table", text)]
    segments: list[tuple[str, str]] = []
    position = 0
    for match in _TABLE.finditer(text):
        segments.append(("text", text[position : match.start()]))
        segments.append(("table", match.group(0)))
        position = match.end()
    segments.append(("text", text[position:]))
    return [(kind, value) for kind, value in segments if kind == "table" or value.strip()]


def _heading(text: str, default_level: int) -> tuple[str, int]:
    match = _HEADING.match(text)
    if not match:
        return " ".join(text.split()), default_level
    return " ".join(text[match.end() :].split()), len(match.group(1))


def _block(label: str, text: str, boxes: list[BBox]) -> Block:
    block_type = LABEL_TYPES.get(label.strip().lower(), "text")
    block = Block(type=block_type, text=text.strip("\n"), bboxes=boxes, label=label)
    if block_type in ("title", "sub_title"):
        block.text, block.level = _heading(block.text, 1 if block_type == "title" else 2)
    return block


# --------------------------------------------------------------------------- page


def parse_page(raw: str, width: int, height: int) -> ParsedPage:
    """Parse one page of raw model output. Never raises; never evaluates the payload."""
    parsed = ParsedPage()
    text, looped = cut_repetition_loop(raw)
    if looped:
        parsed.add_reason(REASON_LOOP)
    records = _split_records(text, parsed)
    if all(not r.label and r.payload is None for r in records):
        parsed.blocks = _plain_blocks(clean_content("".join("".join(r.content) for r in records)))
    else:
        parsed.blocks = _grounded_blocks(records, width, height, parsed)
    _mark_truncated_tables(text, parsed)
    _attach_captions(parsed.blocks)
    return parsed


def _plain_blocks(text: str) -> list[Block]:
    """Output of a prompt without grounding: paragraphs and tables, no boxes."""
    blocks: list[Block] = []
    for kind, value in _split_tables(text, "text"):
        if kind == "table":
            blocks.append(_table_block(Block(type="table", text="", label=""), value))
            continue
        paragraphs = re.split(r"\n[ \t]*\n", value.strip("\n"))
        blocks.extend(Block(type="text", text=p.strip("\n")) for p in paragraphs if p.strip())
    return blocks


def _table_block(block: Block, html: str) -> Block:
    block.type = "table"
    block.text = html.strip()
    block.table = parse_table(html)
    return block


def _grounded_blocks(records: list[_Record], width: int, height: int, parsed: ParsedPage) -> list[Block]:
    blocks: list[Block] = []
    waiting: Block | None = None  # an empty "table" record whose HTML comes with its caption
    for record in records:
        boxes = _record_boxes(record, width, height, parsed)
        segments = _split_tables(
            clean_content("".join(record.content)), LABEL_TYPES.get(record.label.strip().lower(), "")
        )
        leading = []
        while segments and segments[0][0] == "text":
            leading.append(segments.pop(0)[1].strip("\n"))
        own = _block(record.label, "\n\n".join(leading), boxes)
        if own.type not in _TABLE_COMPANIONS:
            waiting = None
        if own.type == "table" and segments:
            if own.text:  # words the model put before the table's HTML
                blocks.append(Block(type="text", text=own.text, label=record.label))
            blocks.append(_table_block(own, segments.pop(0)[1]))
        elif own.type == "table" and not own.text:
            blocks.append(own)
            waiting = own
        elif own.text or own.type == "image" or boxes:
            blocks.append(own)
        for kind, value in segments:
            if kind == "text":
                blocks.append(Block(type="text", text=value.strip("\n"), label=record.label))
            elif waiting is not None:
                blocks.remove(waiting)  # its HTML arrived here: keep the raw reading order
                blocks.append(_table_block(waiting, value))
                waiting = None
            else:
                blocks.append(_table_block(Block(type="table", text="", label=""), value))
    return blocks


def _record_boxes(record: _Record, width: int, height: int, parsed: ParsedPage) -> list[BBox]:
    if record.payload is None:
        return []
    boxes, dropped = parse_boxes(record.payload, width, height)
    if dropped:
        parsed.add_warning("malformed box dropped")
    if not boxes and LABEL_TYPES.get(record.label.strip().lower()) == "image":
        parsed.add_reason(REASON_BOX)  # the figure itself is lost
    return boxes


def _mark_truncated_tables(text: str, parsed: ParsedPage) -> None:
    lowered = text.lower()
    if lowered.rfind("<table") > lowered.rfind("</table"):
        parsed.add_reason(REASON_TRUNCATED)


def _attach_captions(blocks: list[Block]) -> None:
    """Give each figure the caption next to it (after it first, as the model usually emits)."""
    used: set[int] = set()
    for index, block in enumerate(blocks):
        if block.type != "image":
            continue
        for neighbour in (index + 1, index - 1):
            if 0 <= neighbour < len(blocks) and neighbour not in used:
                candidate = blocks[neighbour]
                if candidate.type == "image_caption":
                    block.caption = " ".join(candidate.text.split())
                    used.add(neighbour)
                    break
