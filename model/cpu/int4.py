"""Weight-only int4 for CPU decoding.

Batch-1 decoding is bound by how fast the weights stream from memory. Each decoder weight is
stored as 4-bit integers in groups of ``group_size`` input features, with a bfloat16 scale and
zero per group: a quarter of the bfloat16 bytes. A group is quantized asymmetrically over its
[min, max]::

    scale = (max - min) / 15,   q = round((w - min) / scale) in 0..15,
    w ~= (q - 8) * scale + zero,   zero = min + 8 * scale

Layout (what ``kernels/cpu_decode.c`` reads)::

    packed_weight  uint8 (out, in/2)       in each group, byte j holds input j in its low nibble
                                           and input j + group/2 in its high nibble
    scale_and_zero bfloat16 (out, in/group, 2)

Up to :attr:`~.linear.KernelLinear.kernel_max_rows` activation rows (decoding) go through
the C kernel, which quantizes the activations to int8 per group and multiplies with VNNI integer
dot products; decoding steps run whole layers in it (:mod:`.linear`). Longer inputs
(prefill) unpack the weight to bfloat16 and use torch's matmul, where the compute is better
spent. PyTorch ships an int4 CPU kernel too (``aten::_weight_int4pack_mm_for_cpu``, what
torchao wraps); it converts every weight to float before its multiply-add and is compute-bound
at batch 1, 1.5-2x slower than this one. It is the product where the C kernel has no VNNI path:
:meth:`Int4Linear.use_pytorch_kernel` repacks the same values for it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from . import library
from .linear import KernelLinear, replace_linears

#: Group sizes, largest first; a layer takes the largest that divides its input width.
GROUP_SIZES = (64, 32)

#: Rows quantized at once, so that lm_head's float32 intermediates never exist whole.
_CHUNK_ROWS = 4096


def int4_group_size(linear: nn.Linear) -> int | None:
    """The group size this layer quantizes with, or None when no group size divides its input width."""
    return next((size for size in GROUP_SIZES if linear.in_features % size == 0), None)


class Int4Linear(KernelLinear):
    """``nn.Linear`` with a 4-bit grouped weight; same input/output shapes and dtype, CPU only."""

    #: Measured on 896-1,280 x 1,280 weights: 233 vs 272 us at 24 rows, 332 vs 290 us at 32.
    kernel_max_rows = 24

    def __init__(self, in_features: int, out_features: int, group_size: int, bias: torch.Tensor | None):
        super().__init__(in_features, out_features, bias)
        self.group_size = group_size
        self.register_buffer("packed_weight", torch.empty(0, dtype=torch.uint8))  # (out, in/2)
        self.register_buffer("scale_and_zero", torch.empty(0, dtype=torch.bfloat16))  # (out, in/group, 2)
        #: True once repacked for PyTorch's kernel (:meth:`use_pytorch_kernel`).
        self.pytorch_layout = False

    def takes_kernel(self) -> bool:
        return not self.pytorch_layout and library.load() is not None

    def takes_fused_steps(self) -> bool:
        kernel = library.load()
        return super().takes_fused_steps() and self.group_size == 64 and kernel.int4_fast

    def forward_without_kernel(self, rows: torch.Tensor) -> torch.Tensor:
        if self.pytorch_layout:  # vectorized for bfloat16 activations only
            out = torch.ops.aten._weight_int4pack_mm_for_cpu(
                rows.to(torch.bfloat16).contiguous(), self.packed_weight, self.group_size, self.scale_and_zero
            ).to(rows.dtype)
            return out + self.bias if self.bias is not None else out
        return super().forward_without_kernel(rows)

    def descriptor_fields(self) -> tuple[int, int, tuple[torch.Tensor, ...]]:
        return library.FORMAT_INT4, self.group_size, (self.packed_weight, self.scale_and_zero)

    def decoded_weight(self) -> torch.Tensor:
        """The (out, in) bfloat16 weight this layer computes with."""
        if self.pytorch_layout:
            eye = torch.eye(self.in_features, dtype=torch.bfloat16)
            return torch.ops.aten._weight_int4pack_mm_for_cpu(
                eye, self.packed_weight, self.group_size, self.scale_and_zero
            ).T.contiguous()
        kernel = library.load()
        if kernel is not None:
            return kernel.int4_dequantize(self.packed_weight, self.scale_and_zero, self.group_size)
        return dequantize_int4(self.packed_weight, self.scale_and_zero, self.group_size)

    def use_pytorch_kernel(self) -> None:
        """Repack the same 4-bit values for ``aten::_weight_int4pack_mm_for_cpu``.

        Where the C kernel has no AVX-512 VNNI path (or no compiler built it), PyTorch's int4
        kernel, vectorized for AVX2, AVX-512 and NEON, is the faster product: 32 us against the
        portable C loops' 66 us for an 896 x 1,280 weight (AVX2 build, 2 threads). Its convention
        is ours, w = (q - 8) * scale + zero; it packs output rows in blocks of 16.
        """
        groups = self.in_features // self.group_size
        nibbles = self.packed_weight.reshape(self.out_features, groups, self.group_size // 2)
        q = torch.cat([nibbles & 15, nibbles >> 4], dim=-1).reshape(self.out_features, self.in_features)
        self.packed_weight = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.to(torch.int32), 1)
        self.scale_and_zero = self.scale_and_zero.transpose(0, 1).contiguous()  # (in/group, out, 2)
        self.pytorch_layout = True

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, group_size={self.group_size}"


def quantize_int4(weight: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, in) float weight -> (packed uint8 (out, in/2), scale_and_zero bfloat16 (out, in/group, 2))."""
    packed, scales = [], []
    for rows in weight.split(_CHUNK_ROWS):
        chunk_packed, chunk_scales = _quantize_rows(rows, group_size)
        packed.append(chunk_packed)
        scales.append(chunk_scales)
    return torch.cat(packed), torch.cat(scales)


def _quantize_rows(weight: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    out_features, in_features = weight.shape
    groups = weight.to(torch.float32, copy=True).reshape(out_features, in_features // group_size, group_size)
    low, high = groups.amin(dim=-1, keepdim=True), groups.amax(dim=-1, keepdim=True)
    scale = ((high - low) / 15).clamp(min=1e-6)
    q = groups.sub_(low).div_(scale).round_().clamp_(0, 15).to(torch.uint8)
    half = group_size // 2
    packed = (q[..., :half] | (q[..., half:] << 4)).reshape(out_features, in_features // 2)
    scale_and_zero = torch.cat([scale, low + 8 * scale], dim=-1).to(torch.bfloat16)
    return packed, scale_and_zero


def dequantize_int4(packed: torch.Tensor, scale_and_zero: torch.Tensor, group_size: int) -> torch.Tensor:
    """The (out, in) bfloat16 weight, with torch operations (the fallback where the C kernel cannot be built)."""
    out_features, groups = scale_and_zero.shape[:2]
    nibbles = packed.reshape(out_features, groups, group_size // 2)
    q = torch.cat([nibbles & 15, nibbles >> 4], dim=-1).to(torch.float32) - 8
    weight = q * scale_and_zero[..., :1].float() + scale_and_zero[..., 1:].float()
    return weight.reshape(out_features, groups * group_size).to(torch.bfloat16)


def quantize_linears_int4(
    model: nn.Module, names: list[str], read_weight: Callable[[str], torch.Tensor] | None = None
) -> None:
    """Replace the named ``nn.Linear`` submodules of ``model`` by :class:`Int4Linear`, one at a time
    (``read_weight`` as :func:`~.linear.replace_linears` takes it)."""
    kernel = library.load()
    pytorch_is_faster = kernel is None or not kernel.int4_fast

    def quantize(linear: nn.Linear, weight: torch.Tensor) -> Int4Linear:
        module = Int4Linear(linear.in_features, linear.out_features, int4_group_size(linear), linear.bias)
        module.packed_weight, module.scale_and_zero = quantize_int4(weight, module.group_size)
        if pytorch_is_faster and module.out_features % 16 == 0:
            module.use_pytorch_kernel()
        return module

    replace_linears(model, names, quantize, read_weight)
