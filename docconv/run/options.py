"""What a conversion run is asked to do: the tasks and their prompts, and :class:`ConvertOptions`.

The prompts are the model's own (:mod:`deepseek_ocr.prompts`, torch-free): the model has no
chat tuning, so docconv sends them verbatim and only chooses which tasks it offers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from deepseek_ocr.prompts import TASK_PROMPTS as MODEL_PROMPTS
from deepseek_ocr.prompts import with_image_slot
from docconv.engines.base import DEFAULT_ENGINE, DEFAULT_GENERATION, EngineOptions
from docconv.output.options import RenderOptions
from docconv.run.modes import AUTO, DEFAULT_MAX_RATIO
from docconv.sources.selection import PageSelection

#: The tasks ``--task`` offers, each the model's prompt of that name.
TASKS: tuple[str, ...] = ("markdown", "text", "figure", "describe")
TASK_PROMPTS: dict[str, str] = {task: MODEL_PROMPTS[task] for task in TASKS}
#: Handwriting is read without layout grounding: grounding makes the model re-flow lines into paragraphs.
HANDWRITING_PROMPT = TASK_PROMPTS["text"]

#: ``--batch-size`` not given: the engine's own default (one page on CPU; on CUDA what fits).
DEFAULT_BATCH_SIZE: int | None = None


@dataclass(frozen=True)
class ConvertOptions:
    """Everything a run needs besides the inputs (built by the CLI from flags, env and config)."""

    engine: EngineOptions
    render: RenderOptions
    output: Path | None = None  # None: stdout
    output_is_dir: bool = False
    mode: str = AUTO
    max_ratio: float = DEFAULT_MAX_RATIO
    dpi: int | None = None
    pages: PageSelection | None = None
    password: str | None = None
    task: str = "markdown"
    prompt: str | None = None
    handwriting: bool = False
    tables: bool = False
    batch_size: int | None = DEFAULT_BATCH_SIZE
    max_tokens: int = DEFAULT_GENERATION.max_new_tokens
    ngram: int = DEFAULT_GENERATION.ngram_size
    ngram_window: int = DEFAULT_GENERATION.ngram_window
    overwrite: bool = False
    keep_raw: bool = False

    @property
    def format(self) -> str:
        return self.render.format

    def full_prompt(self) -> str:
        """The prompt sent with every page: --prompt verbatim (with the image slot), else the task's."""
        if self.prompt is not None:
            return with_image_slot(self.prompt)
        return HANDWRITING_PROMPT if self.handwriting else TASK_PROMPTS[self.task]

    def result_options(self) -> dict[str, object]:
        """Options that change a page's result: a journal written under others is not reused."""
        engine = {} if self.engine.kind == DEFAULT_ENGINE else {"engine": self.engine.kind}
        return engine | {
            "model": self.engine.model,
            "quant": self.engine.quant,
            "dtype": self.engine.dtype,
            "max_tiles": self.engine.max_tiles,
            "mode": self.mode,
            "max_ratio": self.max_ratio,
            "dpi": self.dpi,
            "prompt": self.full_prompt(),
            "max_tokens": self.max_tokens,
            "ngram": (self.ngram, self.ngram_window),
        }
