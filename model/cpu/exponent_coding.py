"""Exponent-coded bfloat16: the same weights in three quarters of the bytes, for CPU decoding.

Batch-1 decoding reads every active weight once per token (~1.15 GB in bfloat16), so on a CPU
its speed is the memory bandwidth divided by the bytes. A bfloat16's high byte is its sign and
the top 7 bits of its exponent, and a row of weights uses few distinct high bytes (12-16 in a
normal-distributed row of 1,280): each weight keeps its low byte, and its high byte becomes a
4-bit index into a table of the row's 16 high bytes. Where a row has more than 16, the weights
outside the table (the rarest high bytes: the smallest magnitudes) are listed as exceptions and
added back after the row's dot product. Nothing is rounded: :meth:`ExponentCodedLinear.decoded_weight`
gives back the checkpoint's weight bit for bit, and the kernel multiplies exactly those values
(bfloat16 products are exact in float32, summed in float32 as torch's bfloat16 matmul does, in
another order); activations are rounded to bfloat16, as a bfloat16 model's already are.

The layout is in ``kernels/cpu_decode.c``. The kernel decodes a chunk of 64 weights in five
vector instructions for two AVX512-BF16 dot products (``vdpbf16ps``); on a CPU without
AVX512-BF16, bfloat16 weights are left as they are.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from . import library
from .linear import KernelLinear, replace_linears


class ExponentCodedLinear(KernelLinear):
    """``nn.Linear`` with an exponent-coded bfloat16 weight; same shapes and dtype, CPU only."""

    def __init__(self, in_features: int, out_features: int, bias: torch.Tensor | None):
        super().__init__(in_features, out_features, bias)
        self.register_buffer("codes", torch.empty(0, dtype=torch.uint8))  # (out, 96 * ceil(in / 64))
        self.register_buffer("tables", torch.empty(0, dtype=torch.uint8))  # (out, 16) high bytes
        self.register_buffer("exception_rows", torch.zeros(1, dtype=torch.int32))  # (out + 1)
        self.register_buffer("exceptions", torch.empty(0, 2, dtype=torch.int16))  # (count, 2): column, bits

    @classmethod
    def from_weight(cls, weight: torch.Tensor, bias: torch.Tensor | None = None) -> ExponentCodedLinear:
        """The layer for a bfloat16 (out, in) weight; needs the kernel (:func:`can_code`)."""
        if weight.dtype != torch.bfloat16:
            raise ValueError(f"exponent coding is for bfloat16 weights, not {weight.dtype}")
        layer = cls(weight.shape[1], weight.shape[0], bias)
        layer.codes, layer.tables, layer.exception_rows, layer.exceptions = library.load().bf16c_encode(weight)
        return layer

    def takes_kernel(self) -> bool:
        return can_code()

    def descriptor_fields(self) -> tuple[int, int, tuple[torch.Tensor, ...]]:
        return library.FORMAT_BF16C, 0, (self.codes, self.tables, self.exception_rows, self.exceptions)

    def decoded_weight(self) -> torch.Tensor:
        """The (out, in) bfloat16 weight, bit for bit as it was coded."""
        kernel = library.load()
        if kernel is not None:
            return kernel.bf16c_decode(self.descriptor(), (self.out_features, self.in_features))
        return decode_exponent_coded(self.codes, self.tables, self.exception_rows, self.exceptions, self.in_features)

    @property
    def coded_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.descriptor_fields()[2])


def exponent_coded_bytes(out_features: int, in_features: int, exceptions: int = 0) -> int:
    """Bytes of a coded (out_features, in_features) weight: per row 96 bytes for every 64 inputs
    (rounded up), its 16-entry table and its exception offset; 4 bytes per exception."""
    return out_features * (96 * -(-in_features // 64) + 16 + 4) + 4 + 4 * exceptions


def decode_exponent_coded(
    codes: torch.Tensor, tables: torch.Tensor, exception_rows: torch.Tensor, exceptions: torch.Tensor, in_features: int
) -> torch.Tensor:
    """The (out, in) bfloat16 weight, with torch operations (the reference for the C decoder)."""
    rows = codes.shape[0]
    chunks = codes.view(rows, -1, 96).to(torch.int32)
    low_bytes, nibbles = chunks[..., :64], chunks[..., 64:]
    index = torch.cat([nibbles & 15, nibbles >> 4], dim=-1).reshape(rows, -1)
    high_bytes = tables.to(torch.int32).gather(1, index).view_as(low_bytes)
    weight = ((high_bytes << 8) | low_bytes).reshape(rows, -1)[:, :in_features].to(torch.int16)
    counts = (exception_rows[1:] - exception_rows[:-1]).long()
    exception_row = torch.repeat_interleave(torch.arange(rows), counts)
    weight[exception_row, exceptions[:, 0].long() & 0xFFFF] = exceptions[:, 1]
    return weight.view(torch.bfloat16)


def can_code() -> bool:
    """Whether this machine's kernel multiplies exponent-coded weights (AVX512-BF16)."""
    kernel = library.load()
    return kernel is not None and kernel.coded_bf16


def code_linears(model: nn.Module, names: list[str], read_weight: Callable[[str], torch.Tensor] | None = None) -> None:
    """Replace the named bfloat16 ``nn.Linear`` submodules of ``model`` by :class:`ExponentCodedLinear`
    (``read_weight`` as :func:`~.linear.replace_linears` takes it)."""

    def code(linear: nn.Linear, weight: torch.Tensor) -> ExponentCodedLinear:
        # A checkpoint stored in float32 (the test fixtures) becomes bfloat16 as from_pretrained makes it.
        return ExponentCodedLinear.from_weight(weight.to(torch.bfloat16), linear.bias)

    replace_linears(model, names, code, read_weight)
