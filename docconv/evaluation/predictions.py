"""Saved model outputs (``--predictions DIR``): scored against the truth without loading a model.

An earlier conversion run, on this machine or a GPU one, leaves its pages' raw text in
``<stem>.raw.json`` (``--keep-raw``), ``.jsonl`` (``--format jsonl``: a line per page) or
``.json`` (``--format json``) files; each page records its source, page number, mode and
vision tokens. A prediction belongs to the truth page whose image (or PDF) path ends in the
longest run of the same path components as the recorded source (at least the file name), with
the same page number within that file, so outputs made elsewhere, under other absolute paths,
still find their pages.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

from deepseek_ocr.modes import MODES
from deepseek_ocr.modes import vision_budget as mode_vision_budget
from docconv.evaluation.truth import TruthPage, TruthProblem
from docconv.output.document import SCHEMA_VERSION, Document, Page
from docconv.output.postprocess import parse_page
from docconv.output.raw import RAW_SUFFIX
from docconv.output.rerender import RerenderError, load_raw

PREDICTION_SUFFIXES = (RAW_SUFFIX, ".jsonl", ".json")


@dataclass(frozen=True)
class Prediction:
    """One saved page output."""

    file: Path  # the prediction file it was read from
    source: str  # the input the conversion read, as it recorded it
    page: Page  # raw text, mode, size and token counts

    @property
    def valid_vision_tokens(self) -> int:
        """As recorded; computed from the page size and mode for outputs that did not record it."""
        if self.page.valid_vision_tokens:
            return self.page.valid_vision_tokens
        return mode_vision_budget(max(self.page.width, 1), max(self.page.height, 1), self.page.mode).valid


def readable_text(raw: str, width: int, height: int) -> str:
    """The text a page's raw output reads: itself, or for a grounded (markdown-task) output the
    text of its blocks, without the boxes and labels that no ground truth contains."""
    blocks = parse_page(raw, max(width, 1), max(height, 1)).blocks
    if not any(block.bboxes or block.label for block in blocks):
        return raw
    return "\n\n".join(block.text for block in blocks if block.text)


def load_predictions(directory: Path) -> tuple[list[Prediction], list[TruthProblem]]:
    """Every page output under ``directory`` (recursively), and the files that could not be read."""
    predictions: list[Prediction] = []
    problems: list[TruthProblem] = []
    if not directory.is_dir():
        return [], [TruthProblem(str(directory), "--predictions needs a directory of earlier outputs")]
    for path in sorted(directory.rglob("*"), key=str):
        if not path.is_file() or not path.name.endswith(PREDICTION_SUFFIXES):
            continue
        try:
            predictions.extend(_pages_of(path))
        except (RerenderError, ValueError) as error:
            problems.append(TruthProblem(str(path), str(error)))
    usable = [p for p in predictions if p.page.mode in MODES]
    if len(usable) < len(predictions):
        problems.append(
            TruthProblem(
                str(directory), "some pages record no resolution mode; convert them again", fatal=False
            )
        )
    return usable, problems


def _pages_of(path: Path) -> Iterator[Prediction]:
    if path.name.endswith(RAW_SUFFIX):
        document = load_raw(path)
        yield from (Prediction(path, document.source, page) for page in document.pages)
    elif path.suffix == ".jsonl":
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip():
                record = _object(line, f"{path}: line {number}")
                yield Prediction(path, str(record.get("source", "")), _page(record, f"{path}: line {number}"))
    else:
        data = _object(path.read_text(encoding="utf-8"), str(path))
        if "pages" not in data or "schema_version" not in data:
            return  # some other JSON (a report, a manifest): not an output of docconv
        document = Document.from_dict(data)
        yield from (Prediction(path, document.source, page) for page in document.pages)


def _object(text: str, where: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        raise ValueError(f"{where}: not JSON; give the outputs of --keep-raw or --format jsonl") from None
    if not isinstance(data, dict):
        raise ValueError(f"{where}: not a JSON object; give the outputs of --keep-raw or --format jsonl")
    return data


def _page(record: dict[str, Any], where: str) -> Page:
    if record.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(f"{where}: not a docconv page record (schema {SCHEMA_VERSION}); convert again")
    fields = {k: v for k, v in record.items() if k not in ("schema_version", "source")}
    try:
        return Page.from_dict(fields)
    except (TypeError, KeyError, ValueError) as error:
        raise ValueError(f"{where}: damaged page record ({error}); convert again") from None


def match_predictions(
    predictions: list[Prediction], truth: list[TruthPage]
) -> tuple[dict[tuple[str, str], Prediction], list[TruthProblem]]:
    """Predictions by (truth page key, mode); a prediction without a unique truth page is a problem."""
    by_name: dict[tuple[str, int], list[tuple[TruthPage, tuple[str, ...]]]] = {}
    for page in truth:
        parts = page.image.resolve().parts
        by_name.setdefault((parts[-1], page.image_page), []).append((page, parts))
    matched: dict[tuple[str, str], Prediction] = {}
    problems: list[TruthProblem] = []
    for prediction in predictions:
        parts = PurePath(prediction.source.replace("\\", "/")).parts
        candidates = by_name.get((parts[-1] if parts else "", prediction.page.number), [])
        page = _longest_common_suffix(parts, candidates)
        where = f"{prediction.file}: {prediction.source} page {prediction.page.number}"
        if page is None:
            problems.append(
                TruthProblem(where, "no ground-truth page with that file and page; skipped", fatal=False)
            )
        elif isinstance(page, str):
            problems.append(TruthProblem(where, page))
        else:
            earlier = matched.get((page.key, prediction.page.mode))
            if earlier is not None:
                message = f"also saved in {earlier.file} for this mode; the one read last is scored"
                problems.append(TruthProblem(where, message, fatal=False))
            matched[(page.key, prediction.page.mode)] = prediction
    return matched, problems


def _longest_common_suffix(
    parts: tuple[str, ...], candidates: list[tuple[TruthPage, tuple[str, ...]]]
) -> TruthPage | str | None:
    """The candidate whose path shares the longest tail with ``parts``; a message on a tie."""
    if not candidates:
        return None
    lengths = [(_common_suffix(parts, candidate_parts), page) for page, candidate_parts in candidates]
    best = max(length for length, _ in lengths)
    winners = [page for length, page in lengths if length == best]
    if len(winners) > 1:
        return (
            f"matches {len(winners)} ground-truth pages equally ({winners[0].image}, {winners[1].image}); "
            "keep their names apart"
        )
    return winners[0]


def _common_suffix(a: tuple[str, ...], b: tuple[str, ...]) -> int:
    length = 0
    while length < min(len(a), len(b)) and a[-1 - length] == b[-1 - length]:
        length += 1
    return length
