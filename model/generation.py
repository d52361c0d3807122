"""Greedy page reading: the repetition guard, per-token streaming and stop reasons.

Greedy decoding of long pages occasionally falls into a loop (one table row or line
repeated until the token limit). The official vLLM pipeline bans any token that would
repeat an n-gram seen within a recent window of generated tokens, with ``<td>``/``</td>``
exempt because tables legitimately repeat cell patterns; that guard is
:class:`SlidingWindowNoRepeatNGram` here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList
from transformers.generation.streamers import BaseStreamer

from .cache import GrowingCache
from .generation_settings import GenerationSettings, StopReason


class SlidingWindowNoRepeatNGram(LogitsProcessor):
    """Ban tokens that would complete an n-gram already generated within the last ``window`` tokens.

    Only generated tokens count (the prompt's thousand image placeholders would otherwise
    ban everything); ``exempt_ids`` are never banned.
    """

    def __init__(self, ngram_size: int, window_size: int, prompt_length: int, exempt_ids: Iterable[int] = ()):
        if ngram_size < 1 or window_size < ngram_size:
            raise ValueError(f"need 1 <= ngram_size <= window_size, got n={ngram_size}, window={window_size}")
        self.ngram_size = ngram_size
        self.window_size = window_size
        self.prompt_length = prompt_length
        self.exempt_ids = sorted(set(exempt_ids))

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        n = self.ngram_size
        if input_ids.shape[1] - self.prompt_length < n:
            return scores
        # Only the last `window` generated tokens can ban anything: don't copy the whole page per step.
        recent = input_ids[:, max(self.prompt_length, input_ids.shape[1] - self.window_size) :]
        for row, tokens in enumerate(recent.tolist()):
            banned = self._banned_tokens(tokens)
            banned.difference_update(self.exempt_ids)
            if banned:
                scores[row, list(banned)] = -float("inf")
        return scores

    def _banned_tokens(self, tokens: list[int]) -> set[int]:
        """Tokens that followed the current (n-1)-gram within ``tokens`` (the window)."""
        n = self.ngram_size
        prefix = tokens[len(tokens) - (n - 1) :] if n > 1 else []
        return {
            tokens[start + n - 1]
            for start in range(len(tokens) - n + 1)
            if tokens[start : start + n - 1] == prefix
        }


class TokenCounter(BaseStreamer):
    """Calls ``on_token(row, count)`` for every token generated for a row until that row ends."""

    def __init__(self, on_token: Callable[[int, int], None], eos_token_id: int):
        self.on_token = on_token
        self.eos_token_id = eos_token_id
        self.prompt_seen = False
        self.counts: list[int] = []
        self.finished: list[bool] = []

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate() first hands over the prompt
            self.prompt_seen = True
            self.counts = [0] * value.shape[0]
            self.finished = [False] * value.shape[0]
            return
        for row, token in enumerate(value.reshape(-1).tolist()):
            if self.finished[row]:
                continue
            self.counts[row] += 1
            self.finished[row] = token == self.eos_token_id
            self.on_token(row, self.counts[row])

    def end(self) -> None:
        pass


@dataclass(frozen=True)
class GeneratedPage:
    token_ids: list[int]  # new tokens, EOS included when generation stopped on it
    stop_reason: StopReason


def split_generated(sequences: torch.Tensor, prompt_length: int, eos_token_id: int) -> list[GeneratedPage]:
    """Cut generate()'s padded output into per-row new tokens with their stop reason."""
    pages = []
    for row in sequences[:, prompt_length:].tolist():
        if eos_token_id in row:
            pages.append(GeneratedPage(row[: row.index(eos_token_id) + 1], "eos"))
        else:
            pages.append(GeneratedPage(row, "max_tokens"))
    return pages


def greedy_config(eos_token_id: int | None, pad_token_id: int, max_new_tokens: int) -> GenerationConfig:
    return GenerationConfig(
        do_sample=False,
        num_beams=1,
        max_new_tokens=max_new_tokens,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        bos_token_id=None,
        use_cache=True,
    )


@torch.inference_mode()
def generate_pages(
    model,
    inputs: dict[str, torch.Tensor],
    settings: GenerationSettings,
    eos_token_id: int,
    pad_token_id: int,
    exempt_ids: Iterable[int] = (),
    on_token: Callable[[int, int], None] | None = None,
) -> list[GeneratedPage]:
    """Greedy decoding with KV cache for a left-padded batch of pages (processor output)."""
    prompt_length = inputs["input_ids"].shape[1]
    processors = LogitsProcessorList()
    if settings.ngram_size:
        processors.append(
            SlidingWindowNoRepeatNGram(settings.ngram_size, settings.ngram_window, prompt_length, exempt_ids)
        )
    device = model.device
    model_inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    sequences = model.generate(
        **model_inputs,
        cache=GrowingCache(),
        generation_config=greedy_config(eos_token_id, pad_token_id, settings.max_new_tokens),
        logits_processor=processors,
        streamer=TokenCounter(on_token, eos_token_id) if on_token else None,
    )
    return split_generated(sequences.cpu(), prompt_length, eos_token_id)
