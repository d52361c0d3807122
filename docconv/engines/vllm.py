"""The vLLM engine (``--engine vllm``): DeepSeek-OCR through vLLM's own model, the official recipe.

The recipe is vLLM's DeepSeek-OCR one: greedy (temperature 0), its n-gram logits processor
(``NGramPerReqLogitsProcessor``, 30 tokens within 90 by default, ``<td>``/``</td>`` exempt),
prefix caching and the multimodal processor cache off, special tokens kept in the text. All
pages of a call are submitted together, so vLLM's continuous batching keeps the GPU full; the
pipeline hands it ``--batch-size`` pages per call (a Ray worker its batch).

vLLM's DeepSeek-OCR processor hard-codes gundam (1024-pixel global view, 640-pixel tiles,
cropping, at most ``MAX_CROPS`` tiles): this engine reads only that mode
(:data:`docconv.engines.SERVED_MODES`), checks at start that the installed vLLM still does, and
counts vision tokens with vLLM's tile limit. vLLM pins its own torch: it is installed in an
environment of its own (README, "The vLLM engine"). Nothing here imports vLLM until the engine
is built.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from deepseek_ocr.generation_settings import REPEATABLE_TOKENS
from deepseek_ocr.modes import MODES, vision_budget
from docconv.engines import SERVED_MODES
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

NAME = "vllm"
INSTALL_HINT = (
    "install vLLM in an environment of its own: pip install 'docconv[vllm]' (README: The vLLM engine)"
)
#: vLLM's name for the model class; the checkpoint's config names the transformers one.
VLLM_ARCHITECTURE = "DeepseekOCRForCausalLM"
#: vLLM's finish reason when a sequence hit ``max_tokens``.
LENGTH = "length"


def import_vllm() -> tuple[Any, Any, Any, Any]:
    """vLLM, its n-gram logits processor, its DeepSeek-OCR processor module and its platform
    (the device it runs on), or EngineError naming the install."""
    try:
        import vllm
        from vllm.model_executor.models.deepseek_ocr import NGramPerReqLogitsProcessor
        from vllm.platforms import current_platform
        from vllm.transformers_utils.processors import deepseek_ocr as processor
    except ImportError as error:
        raise EngineError(f"--engine vllm needs vLLM ({error}); {INSTALL_HINT}") from None
    return vllm, NGramPerReqLogitsProcessor, processor, current_platform


def processor_mode(processor: Any) -> str:
    """The one mode vLLM's processor module reads: the mode whose sizes its constants hard-code."""
    sizes = (processor.BASE_SIZE, processor.IMAGE_SIZE, processor.CROP_MODE)
    for name, mode in MODES.items():
        if (mode.base_size, mode.image_size, mode.crop_mode) == sizes:
            return name
    raise EngineError(f"this vLLM's DeepSeek-OCR processor reads no known mode (sizes {sizes})")


def sampling_settings(job: PageJob, whitelist: Sequence[int]) -> dict[str, Any]:
    """``SamplingParams`` arguments for ``job``: the official recipe with the job's limits."""
    settings: dict[str, Any] = {
        "temperature": 0.0,
        "max_tokens": job.max_new_tokens,
        "skip_special_tokens": False,
    }
    if job.ngram_size > 0:  # the processor is off for a request without ngram_size
        settings["extra_args"] = {
            "ngram_size": job.ngram_size,
            "window_size": job.ngram_window,
            "whitelist_token_ids": set(whitelist),
        }
    return settings


def request(job: PageJob) -> dict[str, Any]:
    """The prompt vLLM reads for ``job``: the prompt verbatim (its ``<image>`` slot) and the page."""
    return {"prompt": job.prompt, "multi_modal_data": {"image": job.image}}


def engine_settings(checkpoint: str, options: EngineOptions, logits_processor: Any) -> dict[str, Any]:
    """``vllm.LLM`` arguments: the official recipe (no prefix or multimodal cache) on ``checkpoint``;
    the sequence limit is the model's own (8192 positions), as in the recipe."""
    settings: dict[str, Any] = {
        "model": checkpoint,
        "hf_overrides": {"architectures": [VLLM_ARCHITECTURE]},
        "enable_prefix_caching": False,
        "mm_processor_cache_gb": 0,
        "logits_processors": [logits_processor],
    }
    if options.dtype != "auto":
        settings["dtype"] = options.dtype
    return settings


class VllmEngine:
    """DeepSeek-OCR in vLLM; reads every page of a call in one ``LLM.generate``."""

    name = NAME
    modes = SERVED_MODES[NAME]
    quant = "none"
    default_batch_size = 64  # vLLM schedules the pages itself; more at once keeps the GPU busier

    def __init__(self, options: EngineOptions) -> None:
        if options.quant not in ("auto", "none"):
            raise EngineError(f"--engine vllm runs unquantized weights; drop --quant {options.quant}")
        vllm, logits_processor, processor, platform = import_vllm()
        if (processor_mode(processor),) != self.modes:
            raise EngineError(
                f"this vLLM reads the {processor_mode(processor)} mode; docconv expects {', '.join(self.modes)}"
            )
        self.max_tiles = processor.MAX_CROPS
        self.min_tiles = processor.MIN_CROPS
        try:
            checkpoint = resolve_model(options.model, offline=options.offline)
        except WeightsError as error:
            raise EngineError(str(error)) from None
        self._vllm = vllm
        try:
            self.llm = vllm.LLM(**engine_settings(str(checkpoint), options, logits_processor))
        except (ValueError, RuntimeError) as error:
            raise EngineError(f"vLLM could not load {checkpoint}: {error}") from None
        self.tokenizer = self.llm.get_tokenizer()
        self._whitelist = [self.tokenizer.convert_tokens_to_ids(token) for token in REPEATABLE_TOKENS]
        self.device = str(platform.device_type)
        self.dtype = str(self.llm.llm_engine.model_config.dtype).removeprefix("torch.")

    def vision_budget(self, width: int, height: int, mode: str) -> VisionBudget:
        if mode not in self.modes:
            raise ValueError(f"--engine vllm reads only {', '.join(self.modes)}, not {mode}")
        counts = vision_budget(width, height, mode, self.max_tiles, self.min_tiles)
        return VisionBudget(tokens=counts.tokens, valid=counts.valid, sequence=counts.sequence)

    def count_text_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def generate(self, jobs: Sequence[PageJob], on_token: TokenCallback | None = None) -> list[EngineOutput]:
        """All ``jobs`` in one submission. ``on_token`` is not called: vLLM's offline API returns
        whole pages, so progress advances per page."""
        for job in jobs:
            if job.mode not in self.modes:
                raise ValueError(f"--engine vllm reads only {', '.join(self.modes)}, not {job.mode}")
        started = time.perf_counter()
        params = [self._vllm.SamplingParams(**sampling_settings(job, self._whitelist)) for job in jobs]
        results = self.llm.generate([request(job) for job in jobs], params, use_tqdm=False)
        seconds = (time.perf_counter() - started) / max(1, len(jobs))
        outputs = []
        for job, result in zip(jobs, results, strict=True):
            completion = result.outputs[0]
            outputs.append(
                EngineOutput(
                    text=completion.text.removesuffix(self.tokenizer.eos_token or "").strip(),
                    stop_reason="max_tokens" if completion.finish_reason == LENGTH else "eos",
                    vision=self.vision_budget(job.image.width, job.image.height, job.mode),
                    text_tokens=len(completion.token_ids),
                    seconds=seconds,
                )
            )
        return outputs


def create_engine(options: EngineOptions) -> VllmEngine:
    """This module's entry in :data:`docconv.engines.ENGINES`."""
    return VllmEngine(options)
