"""DeepSeek-OCR (arXiv 2510.18234) as a native transformers model: config, model, processor, generation."""

from .configuration import DeepseekOcrConfig
from .generation import GeneratedPage, GenerationSettings, SlidingWindowNoRepeatNGram, generate_pages
from .loading import CheckpointError, RuntimePlan, estimate_weight_bytes, load_model, plan_runtime
from .modeling import DeepseekOcrForConditionalGeneration, DeepseekOcrModel
from .processing import MODES, TASK_PROMPTS, DeepseekOcrProcessor, ImageInputs, ResolutionMode, load_image

__all__ = [
    "MODES",
    "TASK_PROMPTS",
    "CheckpointError",
    "DeepseekOcrConfig",
    "DeepseekOcrForConditionalGeneration",
    "DeepseekOcrModel",
    "DeepseekOcrProcessor",
    "GeneratedPage",
    "GenerationSettings",
    "ImageInputs",
    "ResolutionMode",
    "RuntimePlan",
    "SlidingWindowNoRepeatNGram",
    "estimate_weight_bytes",
    "generate_pages",
    "load_image",
    "load_model",
    "plan_runtime",
]
