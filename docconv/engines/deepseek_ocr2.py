"""The DeepSeek-OCR-2 engine: docconv's :class:`~docconv.engines.base.Engine` over transformers' own
``DeepseekOcr2ForConditionalGeneration`` and ``DeepseekOcr2Processor``.

The model, its image processor and its token arithmetic are transformers'; this module adds what
docconv needs around them: OCR-2's resolution modes under docconv's ``--mode`` names, the vision
token budget ``--mode auto`` weighs, page images prepared as for every engine, and greedy batched
decoding with DeepSeek-OCR's repetition guard, per-token progress and stop reasons.

OCR-2 reads a page as one global view of 1024 pixels (256 queries) plus, for a page larger than a
tile, 2-6 tiles of 768 pixels (144 queries each), and one view-separator position:

* ``gundam`` is what OCR-2's processor does by default: the global view and the tiles;
* ``base`` is the global view alone. Transformers' ``crop_to_patches=False`` resizes the global
  view to the *tile* size (768 px, 144 queries) while writing placeholders for 1024 px (257), so
  the model refuses the input. The official OCR-2 code always pads the global view to
  ``base_size`` (1024, ``ImageOps.pad``: aspect kept, grey letterbox) and tiles nothing when the
  page fits one tile; ``base`` does that for every page, by giving the processor's no-crop path
  the global view's size.

On the CPU (quant none, int4 or auto), OCR-2's decoder is ``deepseek_ocr``'s: the same
DeepSeek-V2 MoE text model (:mod:`deepseek_ocr.ocr2`), so it decodes with docconv's CPU kernels
(int4, exponent-coded bfloat16, fused decoder steps). transformers' OCR-2 still encodes the page
(its vision tower, projector and view separator, loaded without its text layers) and the input
embeddings are written as its own forward writes them. On a GPU, and for bitsandbytes, the whole
model is transformers'.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn
from transformers import (
    AutoTokenizer,
    BitsAndBytesConfig,
    DeepseekOcr2Config,
    DeepseekOcr2ForConditionalGeneration,
    DeepseekOcr2Processor,
    LogitsProcessorList,
)
from transformers.utils import logging as transformers_logging

from deepseek_ocr import DeepseekOcrForConditionalGeneration
from deepseek_ocr.generation import (
    GeneratedPage,
    SlidingWindowNoRepeatNGram,
    TokenCounter,
    generate_pages,
    greedy_config,
    split_generated,
)
from deepseek_ocr.generation_settings import REPEATABLE_TOKENS, GenerationSettings
from deepseek_ocr.image_processing import load_image
from deepseek_ocr.loading import (
    NF4_BLOCK,
    CheckpointError,
    RuntimePlan,
    pick_attention,
    pick_device,
    pick_dtype,
    plan_runtime,
    return_freed_memory,
)
from deepseek_ocr.ocr2 import decoder_config, load_ocr2_decoder
from docconv.engines.base import (
    EngineError,
    EngineOptions,
    EngineOutput,
    PageJob,
    TokenCallback,
    VisionBudget,
    batches_by_settings,
)
from docconv.engines.deepseek import resolve_checkpoint, with_option_names
from docconv.models.registry import DEEPSEEK_OCR2_FAMILY

log = logging.getLogger("docconv.engines.deepseek_ocr2")

#: OCR-2's modes under docconv's names (``deepseek_ocr.modes.MODES``), in increasing cost.
OCR2_MODES: tuple[str, ...] = ("base", "gundam")
#: Transparent pixels become white, as docconv's page loader makes them for every engine.
WHITE = (255, 255, 255)
#: bitsandbytes loads the weights quantized through transformers' own config.
_BITSANDBYTES = {"8bit": {"load_in_8bit": True}, "4bit": {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}}
#: What bitsandbytes leaves in full precision: the vision side and the output head, as
#: ``deepseek_ocr`` does for DeepSeek-OCR (the decoder holds most of the weights; the vision
#: encoder's activations are where 8-bit outliers hurt, and bitsandbytes' CPU 8-bit product
#: fails on its 4-D inputs).
_KEEP_UNQUANTIZED = ["model.vision_tower", "model.multi_modal_projector", "lm_head"]  # from the name's start


@dataclass(frozen=True)
class Ocr2Geometry:
    """OCR-2's view sizes and query arithmetic, read from the checkpoint's processor."""

    global_size: int  # side of the global view (1024)
    tile_size: int  # side of a tile (768)
    min_tiles: int
    max_tiles: int
    pixels_per_query: int  # patch size x downsample ratio (16 x 4)

    def queries(self, side: int) -> int:
        return math.ceil(side / self.pixels_per_query) ** 2


def geometry_of(processor: DeepseekOcr2Processor, max_tiles: int) -> Ocr2Geometry:
    """The processor's sizes; ``max_tiles`` (docconv's ``--max-tiles``) is capped at OCR-2's own limit."""
    images = processor.image_processor
    most = max(images.min_patches, min(max_tiles, images.max_patches))
    return Ocr2Geometry(
        global_size=images.size["height"],
        tile_size=images.tile_size,
        min_tiles=images.min_patches,
        max_tiles=most,
        pixels_per_query=processor.patch_size * processor.downsample_ratio,
    )


def mode_kwargs(mode: str, geometry: Ocr2Geometry) -> dict[str, Any]:
    """The image-processor arguments that read a page in ``mode``."""
    if mode == "gundam":
        return {"crop_to_patches": True, "min_patches": geometry.min_tiles, "max_patches": geometry.max_tiles}
    if mode == "base":
        # The no-crop path resizes to ``tile_size``: make that the global view's size (see above).
        return {"crop_to_patches": False, "tile_size": geometry.global_size}
    raise ValueError(f"DeepSeek-OCR-2 has no {mode!r} mode; use --mode {', '.join(OCR2_MODES)} or auto")


def ocr2_vision_budget(
    width: int, height: int, mode: str, geometry: Ocr2Geometry, tiles: int
) -> VisionBudget:
    """Vision tokens of a page with ``tiles`` tiles: the paper's count (global + tile queries),
    the valid ones (the letterboxed global view counts ``int(256 · short/long)``, as v1's
    ``valid_token_count``), and the placeholders in the sequence (one more: the view separator)."""
    mode_kwargs(mode, geometry)  # an unknown mode is refused here too
    global_queries = geometry.queries(geometry.global_size)
    tile_queries = tiles * geometry.queries(geometry.tile_size)
    valid_global = int(global_queries * min(width, height) / max(width, height))
    tokens = global_queries + tile_queries
    return VisionBudget(tokens=tokens, valid=valid_global + tile_queries, sequence=tokens + 1)


def prepared_image(image: Image.Image) -> Image.Image:
    """A page as every docconv engine gets it: EXIF orientation applied, transparency on white, RGB."""
    return load_image(image, alpha_background=WHITE)


def unquantizable_linears(checkpoint: Path, quant: str) -> list[str]:
    """Linears bitsandbytes cannot quantize on the CPU: 4-bit packs blocks of ``NF4_BLOCK`` input
    features (only tiny test checkpoints have layers that narrow)."""
    if quant != "4bit":
        return []
    with torch.device("meta"):
        model = DeepseekOcr2ForConditionalGeneration(DeepseekOcr2Config.from_pretrained(checkpoint))
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and module.in_features % NF4_BLOCK
    ]


def load_ocr2_model(
    checkpoint: Path, options: EngineOptions
) -> tuple[DeepseekOcr2ForConditionalGeneration, str]:
    """The whole model on its device through transformers, in its dtype and bitsandbytes
    quantization; also the quantization used."""
    device = pick_device(options.device)
    dtype = pick_dtype(device, options.dtype)
    quant = "none" if options.quant == "auto" else options.quant
    if quant == "int4":
        raise CheckpointError(
            "quant int4 is docconv's CPU kernel: use device cpu, or quant 4bit / 8bit on a GPU"
        )
    kwargs: dict[str, Any] = {"dtype": dtype, "attn_implementation": pick_attention(device, options.attn)}
    if quant in _BITSANDBYTES:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            **_BITSANDBYTES[quant],
            bnb_4bit_compute_dtype=dtype,
            llm_int8_skip_modules=_KEEP_UNQUANTIZED + unquantizable_linears(checkpoint, quant),
        )
        kwargs["device_map"] = device
    model = DeepseekOcr2ForConditionalGeneration.from_pretrained(checkpoint, **kwargs)
    if quant not in _BITSANDBYTES:
        model = model.to(device)
    return model.eval(), quant


def cpu_decoding_plan(checkpoint: Path, options: EngineOptions) -> RuntimePlan | None:
    """How docconv's CPU decoder runs OCR-2 (quant ``auto`` as for v1: full precision when it fits,
    else int4), or None where transformers decodes (a GPU, bitsandbytes)."""
    if pick_device(options.device) != "cpu" or options.quant not in ("none", "int4", "auto"):
        return None
    raw = json.loads((checkpoint / "config.json").read_text(encoding="utf-8"))
    # v1's memory estimate counts its own vision tower; OCR-2's, held beside the decoder, is a
    # little larger (SAM and a 0.5B encoder), so the estimate is about right for the whole.
    return plan_runtime("cpu", options.dtype, options.quant, options.attn, decoder_config(raw))


def load_ocr2_vision(checkpoint: Path, plan: RuntimePlan) -> DeepseekOcr2ForConditionalGeneration:
    """transformers' OCR-2 without its text layers: the vision tower, projector and view separator
    that make the input embeddings (the decoder's weights are not read twice)."""
    config = DeepseekOcr2Config.from_pretrained(checkpoint)
    config.text_config.num_hidden_layers = 0
    config.text_config.mlp_layer_types = []
    model = DeepseekOcr2ForConditionalGeneration.from_pretrained(
        checkpoint, config=config, dtype=plan.dtype, attn_implementation=plan.attn
    )
    # The token table and output head are the decoder's (129,280 x 1,280 each, 0.66 GB in
    # bfloat16 together); image placeholders are found by token id, so neither is read here.
    model.model.language_model.embed_tokens = nn.Identity()
    model.lm_head = nn.Identity()
    return model.eval()


class DeepseekOcr2Engine:
    """Loads DeepSeek-OCR-2 once through transformers; reads batches of pages greedily."""

    name = DEEPSEEK_OCR2_FAMILY
    modes = OCR2_MODES

    def __init__(self, options: EngineOptions) -> None:
        # docconv draws its own progress on stderr; transformers' bars and notices would interleave.
        transformers_logging.disable_progress_bar()
        transformers_logging.set_verbosity_error()
        checkpoint = resolve_checkpoint(options)
        try:
            self.processor = DeepseekOcr2Processor.from_pretrained(checkpoint)
            plan = cpu_decoding_plan(checkpoint, options)
            #: docconv's CPU decoder, or None where transformers' generate decodes.
            self.decoder: DeepseekOcrForConditionalGeneration | None = None
            if plan is None:
                self.model, self.quant = load_ocr2_model(checkpoint, options)
            else:
                self.model, self.quant = load_ocr2_vision(checkpoint, plan), plan.quant
                self.decoder = load_ocr2_decoder(checkpoint, plan)
                return_freed_memory()
                log.info("DeepSeek-OCR-2 decodes with deepseek_ocr's CPU decoder (quant %s)", plan.quant)
        except (CheckpointError, OSError, ValueError) as error:
            raise EngineError(with_option_names(f"{checkpoint}: {error}")) from None
        # Decoder-only batches are padded on the left, so every row's next token is at the end.
        self.processor.tokenizer.padding_side = "left"
        self.checkpoint = checkpoint
        self.geometry = geometry_of(self.processor, options.max_tiles)
        if options.max_tiles > self.geometry.max_tiles:
            log.info(
                "--max-tiles %d capped at DeepSeek-OCR-2's %d", options.max_tiles, self.geometry.max_tiles
            )
        self.device = str(self.model.device)
        self.dtype = str(self.model.dtype).removeprefix("torch.")
        tokenizer = self.processor.tokenizer
        self.eos_token_id: int = tokenizer.eos_token_id
        self.pad_token_id: int = (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_token_id
        )
        self._exempt_ids = [tokenizer.convert_tokens_to_ids(token) for token in REPEATABLE_TOKENS]

    def tiles(self, width: int, height: int, mode: str) -> int:
        """Tiles the processor cuts from a ``width`` x ``height`` page in ``mode`` (no pixels touched)."""
        patches = self.processor.image_processor.get_number_of_image_patches(
            height, width, mode_kwargs(mode, self.geometry)
        )
        return patches - 1  # the count includes the global view

    def vision_budget(self, width: int, height: int, mode: str) -> VisionBudget:
        return ocr2_vision_budget(width, height, mode, self.geometry, self.tiles(width, height, mode))

    def count_text_tokens(self, text: str) -> int:
        return count_with(self.processor.tokenizer, text)

    def model_inputs(
        self, images: Sequence[Image.Image], prompts: Sequence[str], mode: str
    ) -> dict[str, torch.Tensor]:
        """The processor's batch for prepared pages read in one ``mode``, on the model's device."""
        inputs = self.processor(
            images=list(images),
            text=list(prompts),
            padding=True,
            return_tensors="pt",
            **mode_kwargs(mode, self.geometry),
        )
        return {
            name: value.to(self.model.device, self.model.dtype)
            if name.startswith("pixel_values")
            else value.to(self.model.device)
            for name, value in inputs.items()
        }

    def generate(self, jobs: Sequence[PageJob], on_token: TokenCallback | None = None) -> list[EngineOutput]:
        outputs: list[EngineOutput | None] = [None] * len(jobs)
        for indices in batches_by_settings(jobs):
            batch = [jobs[i] for i in indices]
            for index, output in zip(indices, self._generate_batch(batch, indices, on_token), strict=True):
                outputs[index] = output
        return [output for output in outputs if output is not None]

    @torch.inference_mode()
    def input_embeddings(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The decoder's input: token embeddings with OCR-2's image features over the image
        placeholders, computed as transformers' ``DeepseekOcr2Model.forward`` does."""
        ocr2 = self.model.model
        embeds = self.decoder.get_input_embeddings()(inputs["input_ids"])
        features = ocr2.get_image_features(
            inputs["pixel_values"],
            inputs.get("pixel_values_local"),
            inputs.get("num_local_patches"),
            return_dict=True,
        ).pooler_output
        features = torch.cat(features).to(embeds.dtype)
        mask = ocr2.get_placeholder_mask(inputs["input_ids"], embeds, features)
        return embeds.masked_scatter(mask, features)

    @torch.inference_mode()
    def next_token_logits(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Each row's logits for its first generated token, from whichever decoder this engine runs."""
        if self.decoder is None:
            return self.model(**inputs).logits[:, -1]
        embeds = self.input_embeddings(inputs)
        return self.decoder(inputs_embeds=embeds, attention_mask=inputs["attention_mask"]).logits[:, -1]

    @torch.inference_mode()
    def greedy_pages(
        self, inputs: dict[str, torch.Tensor], job: PageJob, on_row_token: TokenCallback | None = None
    ) -> list[GeneratedPage]:
        """Greedy decoding with the repetition guard as a logits processor: docconv's CPU decoder
        over OCR-2's input embeddings, or transformers' ``generate``."""
        if self.decoder is not None:
            return generate_pages(
                self.decoder,
                {
                    "input_ids": inputs["input_ids"],
                    "attention_mask": inputs["attention_mask"],
                    "inputs_embeds": self.input_embeddings(inputs),
                },
                GenerationSettings(job.max_new_tokens, job.ngram_size, job.ngram_window),
                eos_token_id=self.eos_token_id,
                pad_token_id=self.pad_token_id,
                exempt_ids=self._exempt_ids,
                on_token=on_row_token,
            )
        prompt_length = inputs["input_ids"].shape[1]
        processors = LogitsProcessorList()
        if job.ngram_size:
            processors.append(
                SlidingWindowNoRepeatNGram(job.ngram_size, job.ngram_window, prompt_length, self._exempt_ids)
            )
        sequences = self.model.generate(
            **inputs,
            generation_config=greedy_config(self.eos_token_id, self.pad_token_id, job.max_new_tokens),
            logits_processor=processors,
            streamer=TokenCounter(on_row_token, self.eos_token_id) if on_row_token else None,
        )
        return split_generated(sequences.cpu(), prompt_length, self.eos_token_id)

    def _generate_batch(
        self, jobs: list[PageJob], job_indices: list[int], on_token: TokenCallback | None
    ) -> list[EngineOutput]:
        """Pages sharing mode and generation settings, decoded together."""
        started = time.perf_counter()
        mode = jobs[0].mode
        images = [prepared_image(job.image) for job in jobs]
        inputs = self.model_inputs(images, [job.prompt for job in jobs], mode)
        placeholders = (inputs["input_ids"] == self.processor.image_token_id).sum(dim=1).tolist()
        callback = (lambda row, count: on_token(job_indices[row], count)) if on_token else None
        pages = self.greedy_pages(inputs, jobs[0], callback)
        seconds = (time.perf_counter() - started) / len(jobs)
        outputs = []
        for image, page, sequence in zip(images, pages, placeholders, strict=True):
            budget = self.vision_budget(image.width, image.height, mode)
            text_ids = page.token_ids[:-1] if page.stop_reason == "eos" else page.token_ids
            outputs.append(
                EngineOutput(
                    text=self.processor.tokenizer.decode(text_ids, skip_special_tokens=False).strip(),
                    stop_reason=page.stop_reason,
                    vision=VisionBudget(budget.tokens, budget.valid, sequence),
                    text_tokens=len(page.token_ids),
                    seconds=seconds,
                )
            )
        return outputs


def count_with(tokenizer: Any, text: str) -> int:
    """Decoder tokens of ``text`` (no BOS or other special tokens added)."""
    return len(tokenizer(text, add_special_tokens=False).input_ids)


def text_token_counter(options: EngineOptions) -> Callable[[str], int]:
    """How many text tokens OCR-2 reads a string as, from the checkpoint's tokenizer alone (no
    weights); ``docconv compress`` and ``docconv eval`` count with it."""
    checkpoint = resolve_checkpoint(options)
    try:
        tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    except (OSError, ValueError) as error:
        raise EngineError(f"{checkpoint}: no usable tokenizer ({error})") from None
    return lambda text: count_with(tokenizer, text)


def create_engine(options: EngineOptions) -> DeepseekOcr2Engine:
    """This module's entry in :data:`docconv.engines.ENGINES`."""
    return DeepseekOcr2Engine(options)
