"""DeepSeek-OCR tokenizer and prompt assembly.

The checkpoint's ``tokenizer.json`` is loaded directly with the ``tokenizers`` library: in
transformers 5 ``LlamaTokenizer(Fast)`` rebuilds a SentencePiece-style pre-tokenizer around the
byte-level BPE and produces wrong ids (spec §7.1, pitfall 14).
"""

from __future__ import annotations

import os
from pathlib import Path

from tokenizers import Tokenizer

from .prompts import GROUNDING_TOKEN, IMAGE_TOKEN

BOS_TOKEN = "<｜begin▁of▁sentence｜>"
EOS_TOKEN = "<｜end▁of▁sentence｜>"
PAD_TOKEN = "<｜▁pad▁｜>"

#: Tokens the model emits or reads that must each be ONE special id (grounding, tables, image).
_REQUIRED_SPECIAL_TOKENS = (
    BOS_TOKEN,
    EOS_TOKEN,
    PAD_TOKEN,
    IMAGE_TOKEN,
    "<|ref|>",
    "<|/ref|>",
    "<|det|>",
    "<|/det|>",
    GROUNDING_TOKEN,
    "<td>",
    "</td>",
)
#: The official ``infer()`` hard-codes these ids (BOS prepended by hand, EOS as the stop id).
_HARD_CODED_IDS = {BOS_TOKEN: 0, EOS_TOKEN: 1}
_ROUND_TRIP_TEXT = "Convert the document to markdown."


class TokenizerError(ValueError):
    """``tokenizer.json`` is missing or is not a DeepSeek-OCR tokenizer."""


class DeepseekOcrTokenizer:
    """Byte-level BPE tokenizer of DeepSeek-OCR with the special ids the model relies on."""

    def __init__(self, tokenizer: Tokenizer, source: str = "tokenizer") -> None:
        self._tokenizer = tokenizer
        self._source = source
        self._check_special_tokens()
        self.bos_token_id = self.special_token_id(BOS_TOKEN)
        self.eos_token_id = self.special_token_id(EOS_TOKEN)
        self.pad_token_id = self.special_token_id(PAD_TOKEN)
        self.image_token_id = self.special_token_id(IMAGE_TOKEN)
        self._check_round_trip()

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> DeepseekOcrTokenizer:
        """Load ``tokenizer.json`` (a file, or a checkpoint directory containing it)."""
        file = Path(path)
        if file.is_dir():
            file = file / "tokenizer.json"
        if not file.is_file():
            raise TokenizerError(
                f"{file}: tokenizer.json not found; point to a DeepSeek-OCR checkpoint directory"
            )
        try:
            tokenizer = Tokenizer.from_file(str(file))
        except Exception as error:  # tokenizers raises a bare Exception on bad JSON
            raise TokenizerError(
                f"{file}: cannot parse tokenizer ({error}); re-download the checkpoint"
            ) from None
        return cls(tokenizer, str(file))

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included."""
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def special_token_id(self, token: str) -> int:
        """Id of a special token by its string, e.g. ``"<|grounding|>"``; KeyError if absent."""
        token_id = self._tokenizer.token_to_id(token)
        if token_id is None:
            raise KeyError(f"{token!r} is not in the tokenizer vocabulary")
        return token_id

    def encode(self, text: str) -> list[int]:
        """Ids of ``text`` without BOS/EOS; special-token strings inside it become single ids."""
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        """Text of ``ids`` with special tokens kept (tables and grounding tags are special tokens)."""
        return self._tokenizer.decode(list(ids), skip_special_tokens=False)

    def strip_eos(self, text: str) -> str:
        """``text`` without one trailing EOS string, as the reference does before returning."""
        return text.removesuffix(EOS_TOKEN)

    def count_tokens(self, text: str) -> int:
        """How many ids ``text`` encodes to (special-token strings count as one)."""
        return len(self.encode(text))

    def build_input_ids(self, prompt: str, n_image_tokens: int) -> tuple[list[int], list[bool]]:
        """Prompt ids for one image with the "plain" template, and the mask of the image positions.

        ``[BOS] + encode(before) + [<image>] * n_image_tokens + encode(after)`` where the stripped
        prompt is ``before + "<image>" + after``.
        """
        text = prompt.strip()
        count = text.count(IMAGE_TOKEN)
        if count != 1:
            raise ValueError(f"prompt must contain exactly one {IMAGE_TOKEN!r} (found {count}): {prompt!r}")
        before, after = text.split(IMAGE_TOKEN, 1)
        head = [self.bos_token_id, *self.encode(before)]
        tail = self.encode(after)
        ids = head + [self.image_token_id] * n_image_tokens + tail
        mask = [False] * len(head) + [True] * n_image_tokens + [False] * len(tail)
        return ids, mask

    def _check_special_tokens(self) -> None:
        for token in _REQUIRED_SPECIAL_TOKENS:
            ids = self._tokenizer.encode(token, add_special_tokens=False).ids
            token_id = self._tokenizer.token_to_id(token)
            if token_id is None or ids != [token_id]:
                raise TokenizerError(
                    f"{self._source}: {token!r} is not a single special token; "
                    "this is not a DeepSeek-OCR tokenizer.json"
                )
        for token, expected in _HARD_CODED_IDS.items():
            if self._tokenizer.token_to_id(token) != expected:
                raise TokenizerError(
                    f"{self._source}: {token!r} must be id {expected} (the model hard-codes it); "
                    "this is not a DeepSeek-OCR tokenizer.json"
                )

    def _check_round_trip(self) -> None:
        decoded = self.decode(self.encode(_ROUND_TRIP_TEXT))
        if decoded != _ROUND_TRIP_TEXT:
            raise TokenizerError(
                f"{self._source}: text does not survive encode/decode ({decoded!r}); "
                "load tokenizer.json with the tokenizers library, not LlamaTokenizer"
            )
