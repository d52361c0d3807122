"""One evaluation: every truth page read in every mode (or taken from saved outputs) and scored.

With an engine, pages are read in batches with the plain prompt the Fox study used (the
model's ``text`` task, ``<image>\\nFree OCR.``); each scored page x mode is journaled before
the run moves on, so a killed evaluation continues where it stopped. With ``--predictions``
the outputs of an earlier conversion are scored instead and no model is loaded; the truth's
text tokens are then counted with the checkpoint's tokenizer alone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from deepseek_ocr.modes import MODES
from docconv.engines import text_token_counter
from docconv.engines.base import DEFAULT_GENERATION, Engine, EngineOptions, EngineOutput, PageJob
from docconv.evaluation import metrics
from docconv.evaluation.predictions import Prediction, load_predictions, match_predictions, readable_text
from docconv.evaluation.progress import EvalProgress
from docconv.evaluation.truth import TruthPage, TruthProblem
from docconv.models.store import cache_dir
from docconv.run.journal import RecordJournal, fingerprint, journal_path
from docconv.run.options import DEFAULT_BATCH_SIZE, TASK_PROMPTS
from docconv.run.pipeline import describe_exception, load_engine
from docconv.sources.inputs import InputError

log = logging.getLogger("docconv.evaluation")

#: The Fox study's prompt: the model's plain-text task, no layout grounding.
EVAL_TASK = "text"
#: The modes of the paper's Table 2: 64 (tiny) and 100 (small) vision tokens.
DEFAULT_MODES = ("tiny", "small")


@dataclass(frozen=True)
class EvalOptions:
    """What an evaluation reads with, besides its truth pages."""

    engine: EngineOptions
    modes: tuple[str, ...] = DEFAULT_MODES
    batch_size: int | None = DEFAULT_BATCH_SIZE  # None: the engine's default
    max_tokens: int = DEFAULT_GENERATION.max_new_tokens
    ngram: int = DEFAULT_GENERATION.ngram_size
    ngram_window: int = DEFAULT_GENERATION.ngram_window

    @property
    def prompt(self) -> str:
        return TASK_PROMPTS[EVAL_TASK]

    def result_options(self) -> dict[str, object]:
        """Options that change a page's score: a journal written under others is not reused."""
        return {
            "model": self.engine.model,
            "quant": self.engine.quant,
            "dtype": self.engine.dtype,
            "max_tiles": self.engine.max_tiles,
            "prompt": self.prompt,
            "max_tokens": self.max_tokens,
            "ngram": (self.ngram, self.ngram_window),
        }


@dataclass(frozen=True)
class PageResult:
    """One truth page read in one mode, and its scores."""

    key: str  # TruthPage.key
    source: str
    number: int
    mode: str
    text_tokens: int  # ground truth, counted with the model's tokenizer
    vision_tokens: int  # valid vision tokens of the page in this mode
    precision: float
    edit_distance: float
    output_tokens: int
    stop_reason: str

    @property
    def compression(self) -> float:
        """Text tokens per vision token (the paper's compression ratio)."""
        return self.text_tokens / self.vision_tokens if self.vision_tokens else 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"compression": round(self.compression, 4)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PageResult:
        return cls(**{k: v for k, v in data.items() if k != "compression"})


def _result_key(result: PageResult) -> tuple[str, str]:
    return (result.key, result.mode)


ScoreJournal = RecordJournal[tuple[str, str], PageResult]


@dataclass
class Evaluation:
    """What a run produced: results in truth-page order, problems, and how many were resumed."""

    results: list[PageResult] = field(default_factory=list)
    problems: list[TruthProblem] = field(default_factory=list)
    resumed: int = 0


def open_journal(output: Path | None, inputs: Sequence[str], options: EvalOptions) -> ScoreJournal:
    """The journal of this evaluation: next to ``-o FILE``, else in docconv's cache directory."""
    digest = fingerprint("docconv eval", options.result_options())
    if output is not None:
        path = journal_path(output)
    else:
        named = fingerprint("|".join(str(Path(p).resolve()) for p in inputs), options.result_options())
        path = cache_dir() / "eval" / f"{named[:24]}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
    return RecordJournal(path, digest, PageResult.to_dict, PageResult.from_dict, _result_key)


# ---------------------------------------------------------------- reading with an engine


def evaluate_with_engine(
    truth: list[TruthPage], options: EvalOptions, journal: ScoreJournal, progress: EvalProgress
) -> Evaluation:
    """Read every truth page in every mode (those the journal has are reused) and score them."""
    evaluation = Evaluation()
    wanted = {(page.key, mode) for page in truth for mode in options.modes}
    evaluation.resumed = len(wanted & journal.finished.keys())
    progress.start(total=len(wanted), done=evaluation.resumed)
    pending = [page for page in truth if any((page.key, m) not in journal.finished for m in options.modes)]
    if pending:
        engine = load_engine(options.engine)
        batch_size = options.batch_size or getattr(engine, "default_batch_size", 1)
        for batch in _chunks(pending, batch_size):
            for mode in options.modes:
                todo = [page for page in batch if (page.key, mode) not in journal.finished]
                for page, outcome in _read(engine, todo, mode, options, progress):
                    if isinstance(outcome, EngineOutput):
                        outcome = _scored_or_problem(page, mode, outcome, engine.count_text_tokens)
                    if isinstance(outcome, TruthProblem):
                        evaluation.problems.append(outcome)
                    else:
                        journal.record(outcome)
                    progress.advance()
    evaluation.results = [journal.finished[key] for key in _in_order(truth, options.modes, journal.finished)]
    return evaluation


def _read(
    engine: Engine, pages: list[TruthPage], mode: str, options: EvalOptions, progress: EvalProgress
) -> Iterator[tuple[TruthPage, EngineOutput | TruthProblem]]:
    """Each page's output in ``mode``, or why it has none; a failed batch is retried page by page."""
    jobs: list[tuple[TruthPage, PageJob]] = []
    for page in pages:
        try:
            image = page.render(mode)
        except InputError as error:
            yield page, TruthProblem(f"{page.source} page {page.number}", str(error))
            continue
        jobs.append(
            (
                page,
                PageJob(image, mode, options.prompt, options.max_tokens, options.ngram, options.ngram_window),
            )
        )
    if not jobs:
        return
    try:
        outputs = engine.generate([job for _, job in jobs], on_token=progress.on_token)
    except Exception as error:  # about these pages; Ctrl-C and SIGTERM are not Exceptions
        cause = describe_exception(error)
    else:
        yield from zip([page for page, _ in jobs], outputs, strict=True)
        return
    if len(jobs) == 1:
        page = jobs[0][0]
        yield page, TruthProblem(f"{page.source} page {page.number}", f"the engine failed: {cause}")
        return
    for page, _ in jobs:
        yield from _read(engine, [page], mode, options, progress)


def _scored_or_problem(
    page: TruthPage, mode: str, output: EngineOutput, count: Callable[[str], int]
) -> PageResult | TruthProblem:
    try:
        return _scored(page, mode, output, count)
    except metrics.MissingSegmenter as error:  # the output turned out Chinese, the truth is not
        return TruthProblem(f"{page.source} page {page.number} ({mode})", str(error))


def _scored(page: TruthPage, mode: str, output: EngineOutput, count: Callable[[str], int]) -> PageResult:
    scores = metrics.score(page.text, output.text)
    assert scores is not None  # truth without words never becomes a TruthPage
    return PageResult(
        key=page.key,
        source=page.source,
        number=page.number,
        mode=mode,
        text_tokens=page.text_tokens if page.text_tokens is not None else count(page.text),
        vision_tokens=output.vision.valid,
        precision=scores.precision,
        edit_distance=scores.edit_distance,
        output_tokens=output.text_tokens,
        stop_reason=str(output.stop_reason),
    )


def _chunks(pages: list[TruthPage], size: int) -> Iterator[list[TruthPage]]:
    for start in range(0, len(pages), size):
        yield pages[start : start + size]


def _in_order(
    truth: list[TruthPage], modes: Sequence[str], done: dict[tuple[str, str], PageResult]
) -> list[tuple[str, str]]:
    return [(page.key, mode) for page in truth for mode in modes if (page.key, mode) in done]


# ---------------------------------------------------------------- scoring saved outputs


def evaluate_predictions(
    truth: list[TruthPage], directory: Path, options: EvalOptions, modes: Sequence[str] | None
) -> Evaluation:
    """Score the outputs saved under ``directory`` against ``truth`` (all their modes, or ``modes``)."""
    evaluation = Evaluation()
    predictions, problems = load_predictions(directory)
    matched, unmatched = match_predictions(predictions, truth)
    evaluation.problems += problems + unmatched
    if not matched:
        evaluation.problems.append(
            TruthProblem(str(directory), "no saved output matches a ground-truth page; check the paths")
        )
        return evaluation
    retried = sum(1 for prediction in matched.values() if prediction.page.retried)
    if retried:
        evaluation.problems.append(
            TruthProblem(
                str(directory),
                f"{retried} saved pages were read again one mode up by the conversion (degraded); they count "
                "in the mode they were read in, and the mode they failed in lacks them",
                fatal=False,
            )
        )
    counter = _lazy_counter(options.engine) if any(page.text_tokens is None for page in truth) else None
    found_modes = modes_in_order((mode for _, mode in matched), modes)
    for page in truth:
        for mode in found_modes:
            prediction = matched.get((page.key, mode))
            if prediction is None or (modes is not None and mode not in modes):
                continue
            try:
                evaluation.results.append(_scored_prediction(page, prediction, counter))
            except metrics.MissingSegmenter as error:
                evaluation.problems.append(TruthProblem(f"{prediction.file} page {page.number}", str(error)))
    return evaluation


def modes_in_order(found: Iterable[str], asked: Sequence[str] | None = None) -> list[str]:
    """The distinct modes of ``found``, in the order asked for, else in the model's order of cost."""
    order = list(asked) if asked else list(MODES)
    return sorted(set(found), key=lambda mode: order.index(mode) if mode in order else len(order))


def _scored_prediction(
    page: TruthPage, prediction: Prediction, count: Callable[[str], int] | None
) -> PageResult:
    text = readable_text(prediction.page.raw, prediction.page.width, prediction.page.height)
    scores = metrics.score(page.text, text)
    assert scores is not None
    tokens = page.text_tokens if page.text_tokens is not None else count(page.text)  # type: ignore[misc]
    return PageResult(
        key=page.key,
        source=page.source,
        number=page.number,
        mode=prediction.page.mode,
        text_tokens=tokens,
        vision_tokens=prediction.valid_vision_tokens,
        precision=scores.precision,
        edit_distance=scores.edit_distance,
        output_tokens=prediction.page.text_tokens,
        stop_reason=prediction.page.stop_reason,
    )


def _lazy_counter(options: EngineOptions) -> Callable[[str], int]:
    """The tokenizer is loaded on the first page that needs it (raises EngineError if it cannot be)."""
    loaded: list[Callable[[str], int]] = []

    def count(text: str) -> int:
        if not loaded:
            loaded.append(text_token_counter(options))
        return loaded[0](text)

    return count
