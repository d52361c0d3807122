"""Texts the compress tests render: Markdown with every construct the layout handles, and prose."""

from __future__ import annotations

_SECTION = """## Section {n}: measuring what a page holds

The renderer places *emphasised*, **strong** and `inline code` text, and accented words such as
café, naïve, Ærøskøbing, Größe and señor, on pages of a fixed size. Paragraph {n} continues with
ordinary prose so that the page has something to hold: forty-two quick brown foxes jump over the
lazy dogs while the committee reviews budget line {n}.

- a first item about tokens
- a second item about vision tokens
  that wraps onto a second line

1. step one
2. step two

| quantity | value {n} | unit |
|----------|-----------|------|
| width    | 640       | px   |
| tokens   | 100       | each |

```python
def ratio_{n}(text_tokens, vision_tokens):
    return text_tokens / vision_tokens
```

"""

LONG_MARKDOWN = "# Optical compression test document\n\n" + "".join(
    _SECTION.format(n=n) for n in range(1, 13)
)

LONG_PLAIN = "".join(
    f"Paragraph {n}. The quick brown fox jumps over the lazy dog while twelve wizards box\n"
    f"jovially; pack my box with five dozen liquor jugs, number {n * 7}. Sphinx of black quartz,\n"
    "judge my vow: how vexingly quick daft zebras jump, and the five boxing wizards jump quickly.\n\n"
    for n in range(1, 60)
)

#: Prose in paragraphs of one line each, so the layout reflows it to the page's width: what a
#: reader is tested on.
PROSE = "".join(
    f"Paragraph {n}: the quick brown fox jumps over the lazy dog while twelve wizards box jovially. Pack my box "
    f"with five dozen liquor jugs, number {n * 7}. Sphinx of black quartz, judge my vow: how vexingly "
    "quick daft zebras jump, and the five boxing wizards jump quickly. A mad boxer shot a quick, gloved "
    "jab to the jaw of his dizzy opponent.\n\n"
    for n in range(1, 80)
)
