"""Property tests: random, truncated and garbled tag soup through the parser and the writers."""

from __future__ import annotations

import re
import string

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from docconv.output.document import Document, Page
from docconv.output.markdown import render_page_markdown
from docconv.output.options import RenderOptions
from docconv.output.postprocess import LABEL_TYPES, REASON_LOOP, parse_page
from docconv.output.writers import render_document

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Content the model writes. It starts with a letter so that it cannot continue a box list
# left open by a truncated payload, and it avoids the characters that are markup here
# (<, >, |, [, ], #, \, &, $): everything in it must reach the Markdown.
WORD = st.text(alphabet=string.ascii_letters + "éü中文", min_size=1, max_size=6)
FREE = st.builds(
    lambda first, rest: first + rest,
    st.sampled_from(string.ascii_letters + "中"),
    st.text(alphabet=string.ascii_letters + string.digits + " \n.,;:!?()'\"-éü中文", max_size=40),
)
LABEL = st.sampled_from([*LABEL_TYPES, "weird_label", "Text"])
PAYLOAD = st.sampled_from(
    [
        "[[1, 2, 300, 400]]",
        "[[10, 20, 999, 1000], [5, 5, 50, 50]]",
        "[[1, 2",
        "[[a, b]]",
        "[[-1, 2000, 3, 4]]",
        "[]",
        "",
    ]
)
MARKUP = st.sampled_from(
    [
        "<table>",
        "</table>",
        "<tr>",
        "</tr>",
        "<td>",
        "</td>",
        '<td colspan="2">',
        '<th rowspan="3">',
        "<|grounding|>",
        "<｜end▁of▁sentence｜>",
        "<center>",
        "</center>",
        "<|/det|>",
        "\n",
        "\n\n",
        "  \n",
    ]
)


@st.composite
def fragments(draw: st.DrawFn) -> list[tuple[str, bool]]:
    """Tag soup as (fragment, is_content) pairs; records may lose any closing tag."""
    kind = st.sampled_from(["ref", "det", "markup", "record", "table", "free", "free"])
    parts: list[tuple[str, bool]] = []
    for _ in range(draw(st.integers(0, 25))):
        choice = draw(kind)
        if choice == "ref":
            closing = draw(st.sampled_from(["<|/ref|>", "<|/ref|>", ""]))
            parts.append((f"<|ref|>{draw(LABEL)}{closing}", False))
        elif choice == "det":
            closing = draw(st.sampled_from(["<|/det|>", "<|/det|>", ""]))
            parts.append((f"<|det|>{draw(PAYLOAD)}{closing}", False))
        elif choice == "record":  # a complete, well-formed record
            parts.append((f"<|ref|>{draw(LABEL)}<|/ref|><|det|>{draw(PAYLOAD)}<|/det|>\n", False))
        elif choice == "table":
            parts.extend([("<table><tr><td>", False), (draw(FREE), True), ("</td></tr></table>", False)])
        elif choice == "markup":
            parts.append((draw(MARKUP), False))
        else:
            parts.append((draw(FREE), True))
    return parts


def _render(raw: str, **options: object) -> str:
    parsed = parse_page(raw, 1000, 1400)
    page = Page(number=1, width=1000, height=1400, raw=raw, blocks=parsed.blocks)
    return render_page_markdown(page, RenderOptions(**options))  # type: ignore[arg-type]


def _is_subsequence(needle: str, haystack: str) -> bool:
    remaining = iter(haystack)
    return all(char in remaining for char in needle)


@SETTINGS
@given(st.text(max_size=400))
def test_arbitrary_text_never_raises(raw: str) -> None:
    parsed = parse_page(raw, 640, 480)
    doc = Document(source="x", pages=[Page(number=1, width=640, height=480, raw=raw, blocks=parsed.blocks)])
    for output_format in ("md", "json", "jsonl", "html"):
        render_document(doc, RenderOptions(format=output_format))


@SETTINGS
@given(fragments(), st.data())
def test_tag_soup_keeps_every_content_character_and_leaks_no_markup(
    parts: list[tuple[str, bool]], data: st.DataObject
) -> None:
    if parts and parts[-1][1] and data.draw(st.booleans()):  # truncated in the middle of some text
        text, _ = parts[-1]
        parts[-1] = (text[: data.draw(st.integers(1, len(text)))], True)
    raw = "".join(text for text, _ in parts)
    parsed = parse_page(raw, 1000, 1400)
    markdown = _render(raw, keep_headers=True, tables_format="html")

    assert "<|" not in markdown and "<｜" not in markdown
    assert not re.search(r"\[\s*\[?\s*-?\d+\s*,", markdown), "a coordinate list leaked"
    if REASON_LOOP not in parsed.reasons:
        content = "".join(text for text, is_content in parts if is_content)
        assert _is_subsequence("".join(content.split()), "".join(markdown.split()))


@SETTINGS
@given(st.lists(st.tuples(LABEL, WORD), min_size=1, max_size=8), st.integers(1, 400))
def test_well_formed_records_cut_anywhere_never_leak_grounding(
    records: list[tuple[str, str]], cut: int
) -> None:
    raw = "".join(
        f"<|ref|>{label}<|/ref|><|det|>[[{i}, {i}, {i + 9}, {i + 9}]]<|/det|>\n{word}\n\n"
        for i, (label, word) in enumerate(records)
    )
    # The model stops between tokens and <|ref|> etc. are single tokens: never cut inside one.
    for token in re.finditer(r"<\|/?(?:ref|det)\|>", raw):
        if token.start() < cut < token.end():
            cut = token.start()
    truncated = raw[:cut]
    for task in ("markdown", "text"):
        markdown = _render(truncated, keep_headers=True, task=task)
        assert "<|" not in markdown and "<|det" not in markdown
        assert not re.search(r"\[\[\s*\d", markdown)
