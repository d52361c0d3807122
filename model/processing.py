"""DeepSeek-OCR processor: page images + prompts -> model inputs, and ids -> text.

Reproduces what the official Hugging Face ``infer()`` feeds the model (checked bit for bit
against the parity fixtures) and batches several pages of one resolution mode with left padding.
The pieces live in :mod:`deepseek_ocr.image_processing`, :mod:`deepseek_ocr.modes` (the token
arithmetic), :mod:`deepseek_ocr.prompts` and :mod:`deepseek_ocr.tokenization`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import BatchFeature

from .image_processing import ImageInputs, ImageSource, preprocess_image, stack_tiles
from .modes import (
    DEFAULT_MAX_TILES,
    DEFAULT_MIN_TILES,
    ResolutionMode,
    VisionTokenCounts,
    candidate_grids,
    vision_budget,
)
from .prompts import IMAGE_TOKEN
from .tokenization import DeepseekOcrTokenizer, TokenizerError


def _configured_image_token_id(directory: Path) -> int | None:
    """``image_token_id`` from ``config.json`` (absent in the official checkpoint, present in test ones)."""
    config_file = directory / "config.json"
    if not config_file.is_file():
        return None
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise TokenizerError(f"{config_file}: unreadable ({error}); re-download the checkpoint") from None
    return config.get("image_token_id")


def _left_pad(rows: Sequence[Sequence[int | bool]], value: int | bool, dtype: torch.dtype) -> torch.Tensor:
    width = max(len(row) for row in rows)
    return torch.tensor([[value] * (width - len(row)) + list(row) for row in rows], dtype=dtype)


class DeepseekOcrProcessor:
    """Turns page images and prompts into DeepSeek-OCR inputs; decodes generated ids."""

    def __init__(
        self,
        tokenizer: DeepseekOcrTokenizer,
        max_tiles: int = DEFAULT_MAX_TILES,
        min_tiles: int = DEFAULT_MIN_TILES,
    ) -> None:
        candidate_grids(min_tiles, max_tiles)  # validates the limits now rather than on the first page
        self.tokenizer = tokenizer
        self.max_tiles = max_tiles
        self.min_tiles = min_tiles

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike[str],
        max_tiles: int = DEFAULT_MAX_TILES,
        min_tiles: int = DEFAULT_MIN_TILES,
    ) -> DeepseekOcrProcessor:
        """Load from a checkpoint directory holding ``tokenizer.json`` (and optionally ``config.json``)."""
        directory = Path(path)
        tokenizer = DeepseekOcrTokenizer.from_file(directory)
        configured = _configured_image_token_id(directory)
        if configured is not None and configured != tokenizer.image_token_id:
            raise TokenizerError(
                f"{directory}: config.json image_token_id {configured} is not the id of {IMAGE_TOKEN!r} "
                f"({tokenizer.image_token_id}) in tokenizer.json; the files come from different checkpoints"
            )
        return cls(tokenizer, max_tiles=max_tiles, min_tiles=min_tiles)

    # -- ids ------------------------------------------------------------------------------------

    @property
    def bos_token_id(self) -> int:
        return self.tokenizer.bos_token_id

    @property
    def eos_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def pad_token_id(self) -> int:
        return self.tokenizer.pad_token_id

    @property
    def image_token_id(self) -> int:
        return self.tokenizer.image_token_id

    def special_token_id(self, name: str) -> int:
        """Id of a special token by its string, e.g. ``"<td>"``."""
        return self.tokenizer.special_token_id(name)

    # -- text -----------------------------------------------------------------------------------

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """Text of ``ids`` with special tokens (tables, grounding tags, EOS) kept."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return self.tokenizer.decode(list(ids))

    def strip_eos(self, text: str) -> str:
        """Remove one trailing EOS string."""
        return self.tokenizer.strip_eos(text)

    def count_tokens(self, text: str) -> int:
        """Number of ids ``text`` encodes to."""
        return self.tokenizer.count_tokens(text)

    def build_input_ids(self, prompt: str, n_image_tokens: int) -> tuple[list[int], list[bool]]:
        """Prompt ids with ``n_image_tokens`` image placeholders, and the placeholder mask."""
        return self.tokenizer.build_input_ids(prompt, n_image_tokens)

    # -- images ---------------------------------------------------------------------------------

    def vision_budget(self, width: int, height: int, mode: str | ResolutionMode) -> VisionTokenCounts:
        """Token counts of a page of this size under this processor's tile limits (no pixels touched)."""
        return vision_budget(width, height, mode, self.max_tiles, self.min_tiles)

    def preprocess_image(self, image: ImageSource, mode: str | ResolutionMode) -> ImageInputs:
        """One page's views as the reference computes them."""
        return preprocess_image(image, mode, self.max_tiles, self.min_tiles)

    def __call__(
        self,
        images: Sequence[ImageSource] | ImageSource,
        prompts: Sequence[str] | str,
        mode: str | ResolutionMode,
    ) -> BatchFeature:
        """A batch of pages in one mode -> left-padded model inputs.

        ``pixel_values_tiles`` holds page 0's tiles, then page 1's, ...; ``images_spatial_crop``
        says how many belong to each page ((1, 1) = none).
        """
        if isinstance(images, (str, os.PathLike, bytes)) or not isinstance(images, Sequence):
            images = [images]
        if isinstance(prompts, str):
            prompts = [prompts] * len(images)
        if len(prompts) != len(images):
            raise ValueError(f"got {len(images)} images but {len(prompts)} prompts")
        if not images:
            raise ValueError("a batch needs at least one image")
        pages = [self.preprocess_image(image, mode) for image in images]
        sequences = [
            self.build_input_ids(p, page.n_image_tokens) for p, page in zip(prompts, pages, strict=True)
        ]
        ids = [sequence[0] for sequence in sequences]
        return BatchFeature(
            {
                "input_ids": _left_pad(ids, self.pad_token_id, torch.int64),
                "attention_mask": _left_pad([[1] * len(row) for row in ids], 0, torch.int64),
                "images_seq_mask": _left_pad([sequence[1] for sequence in sequences], False, torch.bool),
                "pixel_values": torch.stack([page.global_view for page in pages]),
                "pixel_values_tiles": stack_tiles(pages),
                "images_spatial_crop": torch.tensor([page.grid for page in pages], dtype=torch.int64),
                "vision_tokens": [page.vision_tokens for page in pages],
                "valid_vision_tokens": [page.valid_vision_tokens for page in pages],
            }
        )
