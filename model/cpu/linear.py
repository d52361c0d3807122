"""Linears whose weights are in a CPU kernel format.

Two formats share the kernel (``kernels/cpu_decode.c``): int4 (:class:`~.int4.Int4Linear`,
lossy, a quarter of the bfloat16 bytes) and exponent-coded bfloat16
(:class:`~.exponent_coding.ExponentCodedLinear`, lossless, three quarters). Up to
:attr:`KernelLinear.kernel_max_rows` activation rows (decoding) are multiplied by the kernel's
product, whose speed is how fast the weight streams in; longer inputs (prefill) decode the
weight to bfloat16 for torch's matmul. The decoder's whole-step kernel calls read these weights
too (:mod:`.decoder`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional

from . import library


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
