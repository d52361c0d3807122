"""The default batch on a GPU: as many pages as its free memory holds once the weights are loaded.

A page in a batch costs the decoder's key/value cache over its longest possible sequence (its
vision placeholders in the costliest mode, plus the token limit), held for the whole batch;
the vision encoder's working memory is transient and covered by the headroom. On CPU the
default stays one page: batching there trades latency for little throughput
(docs/benchmarks.md). Torch-free, so the sizing is checked without a GPU.
"""

from __future__ import annotations

from deepseek_ocr.modes import DEFAULT_MIN_TILES, MODES, candidate_grids, sequence_token_count

#: Share of the free memory left alone: the vision encoder's peaks, the allocator's
#: fragmentation, cuBLAS workspaces.
MEMORY_HEADROOM = 0.3
#: No more pages than this by default: continuous batching is vLLM's job, and a static batch of
#: the native engine waits for its longest page.
MAX_AUTO_BATCH = 32
#: Keys and values.
_KV = 2


def longest_vision_sequence(max_tiles: int) -> int:
    """Image placeholder tokens of the costliest page any mode can make with ``max_tiles`` tiles."""
    grids = candidate_grids(DEFAULT_MIN_TILES, max_tiles)
    return max(
        sequence_token_count(mode, grid)
        for mode in MODES.values()
        for grid in (grids if mode.crop_mode else ((1, 1),))
    )


def page_cache_bytes(
    layers: int, kv_heads: int, head_dim: int, dtype_bytes: int, max_new_tokens: int, max_tiles: int
) -> int:
    """Bytes of key/value cache one page may fill: its whole sequence, in every decoder layer."""
    tokens = longest_vision_sequence(max_tiles) + max_new_tokens
    return _KV * layers * kv_heads * head_dim * dtype_bytes * tokens


def batch_size_for_memory(
    free_bytes: int, page_bytes: int, headroom: float = MEMORY_HEADROOM, limit: int = MAX_AUTO_BATCH
) -> int:
    """Pages that fit in ``free_bytes`` (less ``headroom``) at ``page_bytes`` each: 1 to ``limit``."""
    if page_bytes <= 0:
        raise ValueError(f"a page costs memory; got {page_bytes} bytes")
    usable = max(0, int(free_bytes * (1 - headroom)))
    return max(1, min(limit, usable // page_bytes))
