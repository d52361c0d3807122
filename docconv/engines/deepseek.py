"""The DeepSeek-OCR engine: docconv's :class:`~docconv.engines.base.Engine` over the native model package."""

from __future__ import annotations

import logging
import re
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from transformers.utils import logging as transformers_logging

from deepseek_ocr import (
    CheckpointError,
    DeepseekOcrProcessor,
    GenerationSettings,
    RuntimePlan,
    generate_pages,
    load_model,
    plan_runtime,
)
from deepseek_ocr.cpu import sam
from deepseek_ocr.generation_settings import REPEATABLE_TOKENS
from deepseek_ocr.loading import codes_bfloat16, load_config, return_freed_memory
from deepseek_ocr.tokenization import DeepseekOcrTokenizer, TokenizerError
from docconv.engines.base import (
    EngineError,
    EngineOptions,
    EngineOutput,
    PageJob,
    TokenCallback,
    VisionBudget,
)
from docconv.models.errors import WeightsError
from docconv.models.resolve import resolve_model

log = logging.getLogger("docconv.engines.deepseek")

#: The model package names its settings as it knows them ("quant int4", "device 'cpu'"); the user
#: set them with these options.
_OPTION_OF_SETTING = {"quant": "--quant", "device": "--device", "attention": "--attn", "dtype": "--dtype"}
_SETTING = re.compile(r"\b(quant|device|attention|dtype) '?([\w-]+)'?")


def with_option_names(message: str) -> str:
    """A model error as docconv's user reads it: "use quant 4bit" -> "use --quant 4bit"."""
    return _SETTING.sub(lambda m: f"{_OPTION_OF_SETTING[m.group(1)]} {m.group(2)}", message)


def resolve_checkpoint(options: EngineOptions) -> Path:
    """The checkpoint directory of ``options.model``: a checked local directory, or a hub id
    through the weight cache (downloading it if allowed)."""
    try:
        return resolve_model(options.model, offline=options.offline)
    except WeightsError as error:
        raise EngineError(str(error)) from None


def text_token_counter(options: EngineOptions) -> Callable[[str], int]:
    """How many text tokens the model of ``options.model`` reads a string as, from its tokenizer
    alone: no weights are loaded (``docconv compress`` counts a page's text with it)."""
    checkpoint = resolve_checkpoint(options)
    try:
        tokenizer = DeepseekOcrTokenizer.from_file(checkpoint)
    except TokenizerError as error:
        raise EngineError(str(error)) from None
    return tokenizer.count_tokens


class DeepseekOcrEngine:
    """Loads the model once; reads batches of pages greedily."""

    name = "deepseek-ocr"

    def __init__(self, options: EngineOptions) -> None:
        # docconv draws its own progress on stderr; transformers' bars and notices would interleave.
        transformers_logging.disable_progress_bar()
        transformers_logging.set_verbosity_error()
        checkpoint = resolve_checkpoint(options)
        try:
            config = load_config(checkpoint)
            self.plan: RuntimePlan = plan_runtime(
                options.device, options.dtype, options.quant, options.attn, config
            )
            self.model = load_model(checkpoint, self.plan)
            self.processor = DeepseekOcrProcessor.from_pretrained(checkpoint, max_tiles=options.max_tiles)
        except (CheckpointError, ValueError) as error:
            raise EngineError(with_option_names(str(error))) from None
        self.checkpoint = checkpoint
        self.device = self.plan.device
        self.dtype = self.plan.dtype_name
        self.quant = self.plan.quant
        if codes_bfloat16(self.plan.device, self.plan.dtype, self.plan.quant, config):
            log.info("bfloat16 decoder weights exponent-coded for docconv's CPU kernel (lossless)")
        if self.plan.device == "cpu" and self.plan.dtype == torch.bfloat16 and sam.onednn_linear() is None:
            # Probed here, before the first page, so -v says which path SAM takes on this CPU.
            log.info(
                "SAM's bfloat16 linears on torch: oneDNN's fused linear %s", sam.onednn_unavailable_reason
            )
        self._exempt_ids = [self.processor.special_token_id(token) for token in REPEATABLE_TOKENS]

    def vision_budget(self, width: int, height: int, mode: str) -> VisionBudget:
        counts = self.processor.vision_budget(width, height, mode)
        return VisionBudget(tokens=counts.tokens, valid=counts.valid, sequence=counts.sequence)

    def count_text_tokens(self, text: str) -> int:
        return self.processor.count_tokens(text)

    def generate(self, jobs: Sequence[PageJob], on_token: TokenCallback | None = None) -> list[EngineOutput]:
        outputs: list[EngineOutput | None] = [None] * len(jobs)
        for indices in _batches_by_settings(jobs).values():
            for index, output in zip(
                indices, self._generate_batch([jobs[i] for i in indices], indices, on_token), strict=True
            ):
                outputs[index] = output
        return_freed_memory()  # a page's activations would otherwise stay resident in the heap
        return [output for output in outputs if output is not None]

    def _generate_batch(
        self, jobs: list[PageJob], job_indices: list[int], on_token: TokenCallback | None
    ) -> list[EngineOutput]:
        """Pages sharing mode and generation settings, decoded together."""
        started = time.perf_counter()
        first = jobs[0]
        inputs = self.processor([job.image for job in jobs], [job.prompt for job in jobs], first.mode)
        vision = [
            VisionBudget(tokens=tokens, valid=valid, sequence=int(mask.sum()))
            for tokens, valid, mask in zip(
                inputs.pop("vision_tokens"),
                inputs.pop("valid_vision_tokens"),
                inputs["images_seq_mask"],
                strict=True,
            )
        ]
        settings = GenerationSettings(first.max_new_tokens, first.ngram_size, first.ngram_window)
        callback = (lambda row, count: on_token(job_indices[row], count)) if on_token else None
        pages = generate_pages(
            self.model,
            dict(inputs),
            settings,
            eos_token_id=self.processor.eos_token_id,
            pad_token_id=self.processor.pad_token_id,
            exempt_ids=self._exempt_ids,
            on_token=callback,
        )
        seconds = (time.perf_counter() - started) / len(jobs)
        return [
            EngineOutput(
                text=self.processor.strip_eos(self.processor.decode(page.token_ids)).strip(),
                stop_reason=page.stop_reason,
                vision=budget,
                text_tokens=len(page.token_ids),
                seconds=seconds,
            )
            for page, budget in zip(pages, vision, strict=True)
        ]


def _batches_by_settings(jobs: Sequence[PageJob]) -> dict[tuple, list[int]]:
    groups: dict[tuple, list[int]] = defaultdict(list)
    for index, job in enumerate(jobs):
        groups[(job.mode, job.max_new_tokens, job.ngram_size, job.ngram_window)].append(index)
    return groups


def create_engine(options: EngineOptions) -> DeepseekOcrEngine:
    """This module's entry in :data:`docconv.engines.ENGINES`."""
    return DeepseekOcrEngine(options)
