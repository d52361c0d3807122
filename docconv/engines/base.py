"""The one interface between docconv's document pipeline and an OCR model.

An engine turns page images into raw model text. Everything about files, pages,
modes and outputs stays on the docconv side; everything about tensors stays in the
engine. The data here are plain values, so building a job or reading an output loads
no model library.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from PIL import Image

from deepseek_ocr.generation_settings import GenerationSettings, StopReason
from deepseek_ocr.modes import DEFAULT_MAX_TILES

#: The model's own defaults (token limit, repetition guard); the CLI shows the same ones.
DEFAULT_GENERATION = GenerationSettings()
#: The engine a run uses unless ``--engine`` names another (:data:`docconv.engines.ENGINES`).
DEFAULT_ENGINE = "native"


class EngineError(RuntimeError):
    """The engine could not start: missing or broken weights, not enough memory, bad device."""


@dataclass(frozen=True)
class EngineOptions:
    """How to build an engine. ``model`` is a hub id or a local directory."""

    model: str
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    quant: str = "auto"  # auto | none | 8bit | 4bit | int4
    attn: str = "auto"  # auto | sdpa | flash
    dtype: str = "auto"  # auto | bfloat16 | float16 | float32
    offline: bool = False
    max_tiles: int = DEFAULT_MAX_TILES  # most tiles per page in the gundam modes
    kind: str = DEFAULT_ENGINE  # which engine: a name in docconv.engines.ENGINES (native: by the model's family)


@dataclass(frozen=True)
class PageJob:
    """One page image to read. ``image`` is RGB with orientation already applied."""

    image: Image.Image
    mode: str  # one of the engine's ``modes``; ``auto`` is resolved by docconv, never sent here
    prompt: str  # the full prompt, including the leading "<image>\n"
    max_new_tokens: int = DEFAULT_GENERATION.max_new_tokens
    ngram_size: int = DEFAULT_GENERATION.ngram_size
    ngram_window: int = DEFAULT_GENERATION.ngram_window


@dataclass(frozen=True)
class VisionBudget:
    """Vision tokens a page costs in one mode.

    ``tokens`` is the paper's count (no newline/separator tokens), ``valid`` excludes
    letterbox padding (paper §11), ``sequence`` is what the decoder actually attends over.
    """

    tokens: int
    valid: int
    sequence: int


@dataclass(frozen=True)
class EngineOutput:
    """Raw model text for one page (special tokens kept, final EOS removed)."""

    text: str
    stop_reason: StopReason
    vision: VisionBudget
    text_tokens: int  # generated tokens, EOS included when generation stopped on it
    seconds: float


#: Called once per generated token: (index of the job in the batch, tokens generated so far for it).
TokenCallback = Callable[[int, int], None]


class Engine(Protocol):
    """What docconv needs from a model."""

    name: str
    #: The resolution modes this model reads (names of ``deepseek_ocr.modes.MODES``), in
    #: increasing cost: what ``--mode auto`` chooses among and the retry ladder climbs.
    modes: tuple[str, ...]
    device: str  # the device actually used, e.g. "cpu", "cuda:0"
    dtype: str  # e.g. "bfloat16"
    quant: str  # "none" | "8bit" | "4bit" | "int4"
    #: Pages per engine call when ``--batch-size`` is not given (optional: 1 where absent).
    default_batch_size: int
    #: The resolution modes it reads (optional: every mode where absent); ``auto`` picks among them.
    modes: tuple[str, ...]

    def vision_budget(self, width: int, height: int, mode: str) -> VisionBudget:
        """Vision tokens a page of this size costs in ``mode`` (no model run)."""
        ...

    def count_text_tokens(self, text: str) -> int:
        """How many decoder tokens ``text`` is (used to estimate the compression ratio)."""
        ...

    def generate(self, jobs: Sequence[PageJob], on_token: TokenCallback | None = None) -> list[EngineOutput]:
        """Read several pages in one batch; outputs are in the order of ``jobs``."""
        ...


def batches_by_settings(jobs: Sequence[PageJob]) -> list[list[int]]:
    """Indices of ``jobs`` grouped by what one decoding batch must share: mode and generation
    settings. Groups keep the order of their first job; indices in a group stay in order."""
    groups: dict[tuple, list[int]] = defaultdict(list)
    for index, job in enumerate(jobs):
        groups[(job.mode, job.max_new_tokens, job.ngram_size, job.ngram_window)].append(index)
    return list(groups.values())
