"""Weight-only int4 for CPU decoding.

Batch-1 decoding is bound by how fast the weights stream from memory. Each decoder weight is
stored as 4-bit integers in groups of ``group_size`` input features, with a bfloat16 scale and
zero per group: a quarter of the bfloat16 bytes. A group is quantized asymmetrically over its
[min, max]::

    scale = (max - min) / 15,   q = round((w - min) / scale) in 0..15,
    w ~= (q - 8) * scale + zero,   zero = min + 8 * scale

Layout (what ``kernels/int4_linear.c`` reads)::

    packed_weight  uint8 (out, in/2)       in each group, byte j holds input j in its low nibble
                                           and input j + group/2 in its high nibble
    scale_and_zero bfloat16 (out, in/group, 2)

Up to :data:`KERNEL_MAX_ROWS` activation rows (decoding) go through the C kernel, which
quantizes the activations to int8 per group and multiplies with VNNI integer dot products.
Longer inputs (prefill) unpack the weight to bfloat16 and use torch's matmul, where the
compute is better spent. PyTorch ships an int4 CPU kernel too
(``aten::_weight_int4pack_mm_for_cpu``, what torchao wraps); it converts every weight to float
before its multiply-add and is compute-bound at batch 1, 1.5-2x slower than this one. It is the
product where the C kernel has no VNNI path: :meth:`Int4Linear.use_pytorch_kernel` repacks the
same values for it.

Decoding one token at batch 1, the decoder runs whole layers in the kernel where it can
(:func:`int4_qkv_rotary` and :func:`int4_attend_project` for attention, :func:`int4_moe_step`
for a MoE layer on experts stacked by :func:`stack_int4_experts`): after each weight stream the
caches are cold, and the ~30 small torch operations a layer would otherwise run cost more than
its weights take to read. Each of these returns None where it does not apply, and the caller
takes the torch path.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional

from . import int4_kernel

#: Group sizes, largest first; a layer takes the largest that divides its input width.
GROUP_SIZES = (64, 32)

#: Rows quantized at once, so that lm_head's float32 intermediates never exist whole.
_CHUNK_ROWS = 4096

#: Activation rows up to which the C kernel beats unpacking the weight for a bfloat16 matmul
#: (measured on 896-1,280 x 1,280 weights: 233 vs 272 us at 24 rows, 332 vs 290 us at 32).
KERNEL_MAX_ROWS = 24


def int4_group_size(linear: nn.Linear) -> int | None:
    """The group size this layer quantizes with, or None when no group size divides its input width."""
    return next((size for size in GROUP_SIZES if linear.in_features % size == 0), None)


class Int4Linear(nn.Module):
    """``nn.Linear`` with a 4-bit grouped weight; same input/output shapes and dtype, CPU only."""

    def __init__(self, in_features: int, out_features: int, group_size: int, bias: torch.Tensor | None):
        super().__init__()
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        self.register_buffer("packed_weight", torch.empty(0, dtype=torch.uint8))  # (out, in/2)
        self.register_buffer("scale_and_zero", torch.empty(0, dtype=torch.bfloat16))  # (out, in/group, 2)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        #: True once repacked for PyTorch's kernel (:meth:`use_pytorch_kernel`).
        self.pytorch_layout = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        kernel = int4_kernel.load()
        if self.pytorch_layout:  # vectorized for bfloat16 activations only
            out = torch.ops.aten._weight_int4pack_mm_for_cpu(
                rows.to(torch.bfloat16).contiguous(), self.packed_weight, self.group_size, self.scale_and_zero
            ).to(rows.dtype)
        elif kernel is not None and rows.shape[0] <= KERNEL_MAX_ROWS and rows.dtype in (torch.float32, torch.bfloat16):
            out = kernel.linear(rows.contiguous(), self.packed_weight, self.scale_and_zero, self.group_size)
        else:
            out = functional.linear(rows, self.dequantized_weight().to(rows.dtype))
        if self.bias is not None:
            out = out + self.bias
        return out.view(*x.shape[:-1], self.out_features)

    def dequantized_weight(self) -> torch.Tensor:
        """The (out, in) bfloat16 weight this layer computes with."""
        if self.pytorch_layout:
            eye = torch.eye(self.in_features, dtype=torch.bfloat16)
            return torch.ops.aten._weight_int4pack_mm_for_cpu(
                eye, self.packed_weight, self.group_size, self.scale_and_zero
            ).T.contiguous()
        kernel = int4_kernel.load()
        if kernel is not None:
            return kernel.dequantize(self.packed_weight, self.scale_and_zero, self.group_size)
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
        return f"in_features={self.in_features}, out_features={self.out_features}, group_size={self.group_size}"


def int4_linear_many(pairs: list[tuple[nn.Module, torch.Tensor]]) -> list[torch.Tensor] | None:
    """``[layer(x) for layer, x in pairs]`` in one kernel call, or None where that cannot be done
    (a layer that is not :class:`Int4Linear`, an input of more than one row, mixed dtypes or
    group sizes, no kernel). Decoding issues ~280 small products a step; grouped by the ~50
    places that have their inputs at once, the two threads stream longer runs of weights.
    """
    kernel = int4_kernel.load()
    first_layer, first_x = pairs[0]
    if kernel is None or not isinstance(first_layer, Int4Linear):
        return None
    for layer, x in pairs:
        if not (
            isinstance(layer, Int4Linear)
            and not layer.pytorch_layout
            and layer.bias is None
            and layer.group_size == first_layer.group_size
            and x.numel() == layer.in_features
            and x.dtype == first_x.dtype
            and x.dtype in (torch.float32, torch.bfloat16)
        ):
            return None
    products = [(x.contiguous(), layer.packed_weight, layer.scale_and_zero) for layer, x in pairs]
    outs = kernel.linear_many(products, first_layer.group_size)
    return [out.view(*x.shape[:-1], -1) for out, (_, x) in zip(outs, pairs, strict=True)]


def stack_int4_experts(experts: list[nn.Module]) -> list[torch.Tensor] | None:
    """Move the int4 weights of same-shaped SwiGLU experts into one tensor per projection
    (gate, up, down packed weights and scales, each (experts, ...)), leaving each expert's
    :class:`Int4Linear` a view into them: the kernel then finds any expert from six addresses.
    None (and nothing moved) unless every projection can take the fused path."""
    names = ("gate_proj", "up_proj", "down_proj")
    layers = [[getattr(expert, name) for expert in experts] for name in names]
    if not all(
        _fused_eligible(layer) and layer.packed_weight.shape == group[0].packed_weight.shape
        for group in layers
        for layer in group
    ):
        return None
    stacks = []
    for group in layers:
        packed = torch.empty(len(group), *group[0].packed_weight.shape, dtype=torch.uint8)
        scales = torch.empty(len(group), *group[0].scale_and_zero.shape, dtype=group[0].scale_and_zero.dtype)
        for index, layer in enumerate(group):
            packed[index], scales[index] = layer.packed_weight, layer.scale_and_zero
            layer.packed_weight, layer.scale_and_zero = packed[index], scales[index]
        stacks += [packed, scales]
    return stacks


def int4_moe_step(
    x: torch.Tensor, norm: nn.Module, router: nn.Module, stacks: list[torch.Tensor], shared: nn.Module | None
) -> torch.Tensor | None:
    """A mixture-of-experts layer's decoding step for one token x in one kernel call: ``norm``
    (its input RMSNorm), ``router`` (``weight`` float32, ``top_k``, ``norm_topk_prob``,
    ``routed_scaling_factor``), the routed experts' ``stacks`` (:func:`stack_int4_experts`) and
    the ``shared`` SwiGLU experts. (H,)-shaped as x, float32; None where that cannot be done."""
    kernel = int4_kernel.load()
    if (
        kernel is None
        or x.numel() != x.shape[-1]
        or x.dtype not in (torch.float32, torch.bfloat16)
        or norm.weight.dtype != x.dtype
        or router.weight.dtype != torch.float32
    ):
        return None
    shared_tensors = None
    if shared is not None:
        projections = (shared.gate_proj, shared.up_proj, shared.down_proj)
        if not all(_fused_eligible(layer) for layer in projections):
            return None
        shared_tensors = [t for layer in projections for t in (layer.packed_weight, layer.scale_and_zero)]
    out = kernel.moe_step(
        x.contiguous(), (norm.weight.contiguous(), norm.variance_epsilon), router.weight.contiguous(), router.top_k,
        router.norm_topk_prob, router.routed_scaling_factor, stacks, shared_tensors,
    )  # fmt: skip
    return None if out is None else out.view(x.shape)


def _fused_eligible(layer: nn.Module) -> bool:
    return (
        isinstance(layer, Int4Linear) and not layer.pytorch_layout and layer.bias is None and layer.group_size == 64
    )


def int4_qkv_rotary(
    x: torch.Tensor, norm: nn.Module | None, projections: tuple[nn.Module, nn.Module, nn.Module],
    cos: torch.Tensor, sin: torch.Tensor, head_dim: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:  # fmt: skip
    """An attention layer's q, k, v for one token x, after its input RMSNorm (``norm``: a module
    with ``weight`` and ``variance_epsilon``, or None) and with rotary applied to q and k, in one
    kernel call (each (width,) in x's dtype); None where that cannot be done (a projection that
    is not a bias-free :class:`Int4Linear` with groups of 64, more than one row, no kernel or no
    VNNI)."""
    kernel = int4_kernel.load()
    if (
        kernel is None
        or x.numel() != x.shape[-1]
        or x.dtype not in (torch.float32, torch.bfloat16)
        or cos.dtype != x.dtype
        or cos.numel() != head_dim
        or (norm is not None and norm.weight.dtype != x.dtype)
        or not all(_fused_eligible(layer) for layer in projections)
    ):
        return None
    weights = [t for layer in projections for t in (layer.packed_weight, layer.scale_and_zero)]
    norm_arguments = (norm.weight.contiguous(), norm.variance_epsilon) if norm is not None else None
    return kernel.qkv_rotary(x.contiguous(), norm_arguments, weights, head_dim, cos.contiguous(), sin.contiguous())


def int4_attend_project(
    q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scaling: float, o_proj: nn.Module
) -> torch.Tensor | None:
    """``o_proj(softmax(q K^T scaling) V)`` for one query (1, heads, 1, head_dim) against the
    (1, heads, length, head_dim) cache, in one kernel call: (o_proj.out_features,) in q's dtype.
    None where that cannot be done."""
    kernel = int4_kernel.load()
    if (
        kernel is None
        or not _fused_eligible(o_proj)
        or q.shape[0] != 1
        or q.shape[2] != 1
        or not (q.dtype == keys.dtype == values.dtype)
        or q.dtype not in (torch.float32, torch.bfloat16)
        or keys.stride(-1) != 1
        or values.stride(-1) != 1
    ):
        return None
    heads, head_dim = q.shape[1], q.shape[3]
    packed, scales = o_proj.packed_weight, o_proj.scale_and_zero
    return kernel.attend_project(q.reshape(heads, head_dim), keys[0], values[0], scaling, packed, scales)


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
    """Replace the named ``nn.Linear`` submodules of ``model`` by :class:`Int4Linear`, one at a time.

    ``read_weight(parameter_name)`` supplies each float weight (for example straight from the
    checkpoint file, so the full-precision model is never resident); by default the module's own.
    """
    kernel = int4_kernel.load()
    pytorch_is_faster = kernel is None or not kernel.vnni
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        linear = getattr(parent, child)
        weight = read_weight(f"{name}.weight") if read_weight else linear.weight.detach()
        module = Int4Linear(linear.in_features, linear.out_features, int4_group_size(linear), linear.bias)
        module.packed_weight, module.scale_and_zero = quantize_int4(weight, module.group_size)
        if pytorch_is_faster and module.out_features % 16 == 0:
            module.use_pytorch_kernel()
        setattr(parent, child, module)
