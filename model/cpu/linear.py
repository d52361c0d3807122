"""Linears whose weights are in a CPU kernel format, and the decoding steps that run on them.

Two formats share the kernel (``kernels/cpu_decode.c``): int4 (:class:`~.int4.Int4Linear`,
lossy, a quarter of the bfloat16 bytes) and exponent-coded bfloat16
(:class:`~.exponent_coding.ExponentCodedLinear`, lossless, three quarters). Up to
:attr:`KernelLinear.kernel_max_rows` activation rows (decoding) are multiplied by the kernel's
product, whose speed is how fast the weight streams in; longer inputs (prefill) decode the
weight to bfloat16 for torch's matmul.

Decoding one token per sequence, the decoder runs each half of a layer in one kernel call where
every weight of the layer allows it (:func:`attention_step`, :func:`mlp_step`): after each
weight stream the caches are cold, and the ~30 small torch operations a layer would otherwise
run cost more than its weights take to read. Each returns False where it does not apply, and
the caller takes the torch path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional

from . import library

#: Most sequences :func:`attention_step` and :func:`mlp_step` take at once (the kernel's limit).
MAX_STEP_ROWS = 16


class KernelLinear(nn.Module):
    """``nn.Linear`` with a weight in a kernel format; same input/output shapes and dtype, CPU only."""

    #: Activation rows up to which the kernel's product beats decoding the weight for torch's matmul.
    kernel_max_rows = 24

    def __init__(self, in_features: int, out_features: int, bias: torch.Tensor | None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self._descriptor: tuple[tuple[int, ...], torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        if rows.shape[0] <= self.kernel_max_rows and rows.dtype in (torch.float32, torch.bfloat16) and self.takes_kernel():
            out = library.load().linear(rows.contiguous(), self.descriptor(), self.out_features)
            if self.bias is not None:
                out = out + self.bias
        else:
            out = self.forward_without_kernel(rows)
        return out.view(*x.shape[:-1], self.out_features)

    def forward_without_kernel(self, rows: torch.Tensor) -> torch.Tensor:
        """The product with the decoded weight (and the bias) through torch."""
        bias = self.bias.to(rows.dtype) if self.bias is not None else None
        return functional.linear(rows, self.decoded_weight().to(rows.dtype), bias)

    def takes_kernel(self) -> bool:
        """Whether this machine's kernel multiplies this weight."""
        raise NotImplementedError

    def takes_fused_steps(self) -> bool:
        """Whether the kernel's whole-step entry points (vector paths only) can read this weight."""
        return self.bias is None and self.takes_kernel()

    def decoded_weight(self) -> torch.Tensor:
        """The (out, in) bfloat16 weight this layer computes with."""
        raise NotImplementedError

    def descriptor_fields(self) -> tuple[int, int, tuple[torch.Tensor, ...]]:
        """(format, group, the weight's tensors in the descriptor's order)."""
        raise NotImplementedError

    def descriptor(self) -> torch.Tensor:
        """The weight as the kernel reads it: eight int64 (format, N, K, group, then four addresses)."""
        weight_format, group, tensors = self.descriptor_fields()
        key = tuple(t.data_ptr() for t in tensors)
        if self._descriptor is None or self._descriptor[0] != key:
            addresses = list(key) + [0] * (4 - len(key))
            fields = [weight_format, self.out_features, self.in_features, group, *addresses]
            self._descriptor = key, torch.tensor(fields, dtype=torch.int64)
        return self._descriptor[1]

    def _apply(self, fn, recurse=True):
        self._descriptor = None
        return super()._apply(fn, recurse)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


def replace_linears(
    model: nn.Module,
    names: list[str],
    convert: Callable[[nn.Linear, torch.Tensor], nn.Module],
    read_weight: Callable[[str], torch.Tensor] | None = None,
) -> None:
    """Replace each named ``nn.Linear`` submodule of ``model`` by ``convert(linear, weight)``, one at
    a time. ``read_weight(parameter_name)`` supplies each weight (for example straight from the
    checkpoint file, so the full-precision model is never resident); by default the module's own."""
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        linear = getattr(parent, child)
        weight = read_weight(f"{name}.weight") if read_weight else linear.weight.detach()
        setattr(parent, child, convert(linear, weight))


def takes_fused_steps(layer: nn.Module) -> bool:
    return isinstance(layer, KernelLinear) and layer.takes_fused_steps()


def linear_many(pairs: list[tuple[nn.Module, torch.Tensor]]) -> list[torch.Tensor] | None:
    """``[layer(x) for layer, x in pairs]`` in one kernel call, or None where that cannot be done
    (a layer the kernel cannot take, a bias, an input of more than one row, mixed dtypes).
    Decoding issues ~280 small products a step; grouped by the ~50 places that have their
    inputs at once, the two threads stream longer runs of weights.
    """
    first_x = pairs[0][1]
    if not all(
        isinstance(layer, KernelLinear)
        and layer.bias is None
        and x.numel() == layer.in_features
        and x.dtype == first_x.dtype
        and x.dtype in (torch.float32, torch.bfloat16)
        and layer.takes_kernel()
        for layer, x in pairs
    ):
        return None
    products = [(x.contiguous(), layer.descriptor(), layer.out_features) for layer, x in pairs]
    outs = library.load().linear_many(products)
    if outs is None:
        return None
    return [out.view(*x.shape[:-1], -1) for out, (_, x) in zip(outs, pairs, strict=True)]


@dataclass
class FusedWeights:
    """Kernel weights as one table of descriptors (count, 8), for the kernel's whole-step entry
    points; ``tensors`` keeps every tensor the descriptors point at alive."""

    descriptors: torch.Tensor
    tensors: list[torch.Tensor]


def fused_weights(layers: list[nn.Module]) -> FusedWeights | None:
    """The table for ``layers`` in order, or None unless every one takes the fused steps."""
    if not layers or not all(takes_fused_steps(layer) for layer in layers):
        return None
    return FusedWeights(
        torch.stack([layer.descriptor() for layer in layers]),
        [t for layer in layers for t in layer.descriptor_fields()[2]],
    )


def attention_step(
    hidden: torch.Tensor, norm: nn.Module | None, weights: FusedWeights, head_dim: int, scaling: float,
    rotary: tuple[torch.Tensor, torch.Tensor], keys: torch.Tensor, values: torch.Tensor, length: int,
) -> bool:  # fmt: skip
    """An attention block for one token per sequence, ``hidden`` (B, 1, H) contiguous, B <= 16,
    updated in place with its residual: the input RMSNorm ``norm``, q/k/v (``weights``: q, k, v,
    o), rotary (cos, sin (B or 1, 1, head_dim)), the append to the cache buffers ``keys``/``values``
    (B, heads, capacity, head_dim) holding ``length`` positions for every sequence, attention and
    o_proj, in one kernel call. False (nothing written) where that cannot be done."""
    rows = hidden.numel() // hidden.shape[-1]
    cos, sin = rotary
    if rows > 1 and cos.shape[0] == 1:  # one position for every sequence
        cos, sin = cos.expand(rows, *cos.shape[1:]), sin.expand(rows, *sin.shape[1:])
    if (
        rows > MAX_STEP_ROWS
        or not hidden.is_contiguous()
        or hidden.dtype not in (torch.float32, torch.bfloat16)
        or not (cos.dtype == keys.dtype == values.dtype == hidden.dtype)
        or cos.numel() != rows * head_dim
        or keys.shape[0] != rows
        or not (keys.is_contiguous() and values.is_contiguous())
        or (norm is not None and norm.weight.dtype != hidden.dtype)
    ):
        return False
    norm_arguments = (norm.weight, norm.variance_epsilon) if norm is not None else None
    return library.load().attention_step(
        hidden, norm_arguments, weights.descriptors, head_dim, cos.contiguous(), sin.contiguous(), scaling, keys,
        values, length,
    )  # fmt: skip


def mlp_step(
    hidden: torch.Tensor, norm: nn.Module, router: nn.Module | None, routed: FusedWeights | None,
    shared: FusedWeights | None,
) -> bool:  # fmt: skip
    """A SwiGLU MLP block for one token per sequence, ``hidden`` (B, 1, H) contiguous, B <= 16,
    updated in place with its residual: the post-attention RMSNorm ``norm``, then a MoE
    (``router``: ``weight`` float32, ``top_k``, ``norm_topk_prob``, ``routed_scaling_factor``;
    ``routed``: gate, up, down of every expert; ``shared``: the shared experts') or a dense MLP
    (``router`` and ``routed`` None, the MLP as ``shared``), in one kernel call. Each expert
    reads its weights once for all the rows routed to it. False (nothing written) where that
    cannot be done."""
    if (
        hidden.numel() // hidden.shape[-1] > MAX_STEP_ROWS
        or not hidden.is_contiguous()
        or hidden.dtype not in (torch.float32, torch.bfloat16)
        or norm.weight.dtype != hidden.dtype
        or (router is not None and router.weight.dtype != torch.float32)
    ):
        return False
    routing = (
        (router.weight, router.top_k, router.norm_topk_prob, router.routed_scaling_factor) if router is not None else None
    )
    return library.load().mlp_step(
        hidden, (norm.weight, norm.variance_epsilon), routing,
        routed.descriptors if routed is not None else None, shared.descriptors if shared is not None else None,
    )  # fmt: skip
