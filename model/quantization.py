"""Weight-only int4 for CPU decoding, on PyTorch's own int4 kernel.

Batch-1 decoding is bound by how fast the weights stream from memory. Storing each decoder
weight as 4-bit integers in groups of ``group_size`` input features, with a bfloat16 scale and
zero per group, streams a quarter of the bfloat16 bytes; ``aten::_weight_int4pack_mm_for_cpu``
dequantizes inside the product. A group is quantized asymmetrically over its [min, max]::

    scale = (max - min) / 15,   q = round((w - min) / scale) in 0..15,
    w ~= (q - 8) * scale + zero,   zero = min + 8 * scale

(the kernel's convention: zero is a float and q is centred on 8).

torchao wraps the same kernel (``Int4OpaqueTensor``, a prototype in torchao 0.18) as a tensor
subclass; its dispatch costs 15-40 us per call, and a decode step makes ~330 of these calls,
so :class:`Int4Linear` calls the kernel directly.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

#: Group sizes the kernel accepts, largest first; a layer takes the largest that divides its input width.
GROUP_SIZES = (64, 32)

#: The kernel packs output rows in blocks of 16.
_ROW_BLOCK = 16

#: Rows quantized at once (a multiple of the row block).
_CHUNK_ROWS = 4096


def int4_group_size(linear: nn.Linear) -> int | None:
    """The group size this layer quantizes with, or None when the kernel cannot take its shape."""
    if linear.out_features % _ROW_BLOCK:
        return None
    return next((size for size in GROUP_SIZES if linear.in_features % size == 0), None)


class Int4Linear(nn.Module):
    """``nn.Linear`` with a 4-bit grouped weight; same input/output shapes, CPU only."""

    def __init__(self, in_features: int, out_features: int, group_size: int, bias: torch.Tensor | None):
        super().__init__()
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        self.register_buffer("packed_weight", torch.empty(0, dtype=torch.uint8))  # (out, in/2)
        self.register_buffer("scale_and_zero", torch.empty(0))  # (in/group, out, 2)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).to(torch.bfloat16).contiguous()
        out = torch.ops.aten._weight_int4pack_mm_for_cpu(
            rows, self.packed_weight, self.group_size, self.scale_and_zero
        )
        if self.bias is not None:
            out = out + self.bias
        return out.view(*x.shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, group_size={self.group_size}"


def quantize_int4(weight: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, in) float weight -> (packed uint8 (out, in/2), scale_and_zero (in/group, out, 2) bfloat16).

    The kernel is vectorized for bfloat16 only (float16 and float32 run ~20x slower), so scales
    and activations are bfloat16 whatever the model's dtype. Rows are quantized in chunks (the
    packing is row-wise) so that lm_head's float32 intermediates never exist whole.
    """
    packed, scales = [], []
    for rows in weight.split(_CHUNK_ROWS):
        chunk_packed, chunk_scales = _quantize_rows(rows, group_size)
        packed.append(chunk_packed)
        scales.append(chunk_scales)
    return torch.cat(packed), torch.cat(scales, dim=1)


def _quantize_rows(weight: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    out_features, in_features = weight.shape
    groups = weight.to(torch.float32, copy=True).reshape(out_features, in_features // group_size, group_size)
    low, high = groups.amin(dim=-1, keepdim=True), groups.amax(dim=-1, keepdim=True)
    scale = ((high - low) / 15).clamp(min=1e-6)
    q = groups.sub_(low).div_(scale).round_().clamp_(0, 15).to(torch.int32).reshape(out_features, in_features)
    zero = low + 8 * scale
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
    scale_and_zero = torch.cat([scale, zero], dim=-1).transpose(0, 1).contiguous().to(torch.bfloat16)
    return packed, scale_and_zero


def dequantize_int4(module: Int4Linear) -> torch.Tensor:
    """The float weight an :class:`Int4Linear` computes with (for checks, not for inference)."""
    eye = torch.eye(module.in_features, dtype=module.scale_and_zero.dtype)
    return torch.ops.aten._weight_int4pack_mm_for_cpu(
        eye, module.packed_weight, module.group_size, module.scale_and_zero
    ).T


def quantize_linears_int4(
    model: nn.Module, names: list[str], read_weight: Callable[[str], torch.Tensor] | None = None
) -> None:
    """Replace the named ``nn.Linear`` submodules of ``model`` by :class:`Int4Linear`, one at a time.

    ``read_weight(parameter_name)`` supplies each float weight (for example straight from the
    checkpoint file, so the full-precision model is never resident); by default the module's own.
    """
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        linear = getattr(parent, child)
        weight = read_weight(f"{name}.weight") if read_weight else linear.weight.detach()
        module = Int4Linear(linear.in_features, linear.out_features, int4_group_size(linear), linear.bias)
        module.packed_weight, module.scale_and_zero = quantize_int4(weight, module.group_size)
        setattr(parent, child, module)
