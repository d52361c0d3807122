"""The native engine's default batch on CUDA, sized from free memory (no GPU needed to check it)."""

from __future__ import annotations

import pytest

from deepseek_ocr.modes import MODES, vision_budget
from docconv.engines.batching import (
    MAX_AUTO_BATCH,
    MEMORY_HEADROOM,
    batch_size_for_memory,
    longest_vision_sequence,
    page_cache_bytes,
)

GIB = 2**30
#: DeepSeek-OCR's decoder (reference config.json): 12 layers, 10 heads of 128, bfloat16.
DECODER = {"layers": 12, "kv_heads": 10, "head_dim": 128, "dtype_bytes": 2}


def test_the_longest_vision_sequence_is_the_costliest_page_any_mode_makes() -> None:
    tall = vision_budget(1024, 1024 * 9, "gundam-master", max_tiles=9).sequence
    assert longest_vision_sequence(9) >= tall
    assert longest_vision_sequence(9) >= max(vision_budget(1280, 1280, name).sequence for name in MODES)
    assert longest_vision_sequence(2) < longest_vision_sequence(9)


def test_a_page_costs_its_whole_sequence_of_keys_and_values_in_every_layer() -> None:
    tokens = longest_vision_sequence(9) + 8192
    assert page_cache_bytes(**DECODER, max_new_tokens=8192, max_tiles=9) == 2 * 12 * 10 * 128 * 2 * tokens
    assert page_cache_bytes(**DECODER, max_new_tokens=1024, max_tiles=9) < page_cache_bytes(
        **DECODER, max_new_tokens=8192, max_tiles=9
    )


@pytest.mark.parametrize("free_gib", [2, 10, 24, 40, 78])
def test_the_batch_fills_the_free_memory_less_the_headroom(free_gib: int) -> None:
    page = page_cache_bytes(**DECODER, max_new_tokens=8192, max_tiles=9)
    size = batch_size_for_memory(free_gib * GIB, page)
    usable = free_gib * GIB * (1 - MEMORY_HEADROOM)
    assert 1 <= size <= MAX_AUTO_BATCH
    assert size * page <= usable or size == 1
    assert size == MAX_AUTO_BATCH or (size + 1) * page > usable


def test_more_free_memory_never_gives_a_smaller_batch() -> None:
    page = page_cache_bytes(**DECODER, max_new_tokens=8192, max_tiles=9)
    sizes = [batch_size_for_memory(gib * GIB // 4, page) for gib in range(1, 400)]
    assert sizes == sorted(sizes)
    assert sizes[0] == 1 and sizes[-1] == MAX_AUTO_BATCH


def test_no_memory_still_reads_one_page_and_a_free_page_is_refused() -> None:
    assert batch_size_for_memory(0, 1) == 1
    with pytest.raises(ValueError, match="costs memory"):
        batch_size_for_memory(GIB, 0)
