"""The decoder's CPU variants: the same computation as :mod:`..decoder`, in fewer and faster calls.

Decoding on a CPU is bound by how fast the weights stream from memory, and after each weight
stream the caches are cold: the ~30 small torch operations a layer would otherwise run cost
more than its weights take to read. So, where the weights allow it:

- :class:`GemvLinear`: a one-row product (one token of one page) goes through ``torch.mv``.
- :class:`CpuDecoderAttention`, :class:`CpuSwiGluMlp`: the projections that read the same
  input (q, k, v; gate, up) are one kernel call.
- :class:`CpuMoeMlp`: one token's chosen experts (and the shared ones) are issued together,
  without the sort and scatter that arrange many tokens.
- :class:`CpuDecoderLayer`: a decoding step (one token per sequence) runs each half of the
  layer in one kernel call (:func:`attention_step`, :func:`mlp_step`).

Each falls back to its modeling class's ``forward`` where its conditions do not hold; the
loader attaches them (:mod:`.dispatch`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.cache_utils import Cache

from ..cache import GrowingLayer
from ..decoder import DecoderAttention, DecoderLayer, MoeMlp, SwiGluMlp
from . import CpuVariant, library
from .linear import KernelLinear
from .linear import linear_many as kernel_linear_many

#: Most sequences :func:`attention_step` and :func:`mlp_step` take at once (the kernel's limit).
MAX_STEP_ROWS = 16


def linear_many(pairs: list[tuple[nn.Module, torch.Tensor]]) -> list[torch.Tensor]:
    """``[layer(x) for layer, x in pairs]``: products whose inputs are ready together, in one
    kernel call where every layer is a kernel linear decoding one token."""
    grouped = kernel_linear_many(pairs)
    if grouped is not None:
        return grouped
    return [layer(x) for layer, x in pairs]


def _in_one_kernel_call(layers: list[nn.Module]) -> bool:
    """Whether :func:`~.linear.linear_many` can take these layers (their inputs permitting)."""
    return all(isinstance(layer, KernelLinear) and layer.bias is None and layer.takes_kernel() for layer in layers)


class GemvLinear(CpuVariant, nn.Linear):
    """``nn.Linear`` whose one-row products on the CPU go through ``torch.mv``.

    Decoding one page feeds one token at a time, and PyTorch's CPU GEMM path for a (1, K)
    bfloat16 input streams the weight at about half the bandwidth of its GEMV kernel.
    """

    @classmethod
    def applies(cls, module: nn.Module) -> str | None:
        # The dispatch looks classes up exactly: quantized subclasses of nn.Linear (bitsandbytes)
        # never get here and keep their own forward.
        if module.weight.device.type == "cpu":
            return "one-row products on torch.mv"
        return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and x.numel() == self.in_features:
            out = torch.mv(self.weight, x.reshape(-1))
            if self.bias is not None:
                out = out + self.bias
            return out.view(*x.shape[:-1], -1)
        return super().forward(x)


class CpuDecoderAttention(CpuVariant, DecoderAttention):
    """q, k and v of one token in one kernel call."""

    @classmethod
    def applies(cls, module: nn.Module) -> str | None:
        if _in_one_kernel_call([module.q_proj, module.k_proj, module.v_proj]):
            return "q, k and v in one kernel call"
        return None

    def forward(
        self,
        hidden_states: torch.Tensor,
        rotary: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None,
        cache: Cache | None,
    ) -> torch.Tensor:
        grouped = kernel_linear_many([(p, hidden_states) for p in (self.q_proj, self.k_proj, self.v_proj)])
        if grouped is None:
            return super().forward(hidden_states, rotary, attention_mask, cache)
        return self.attend(*grouped, rotary, attention_mask, cache)


class CpuSwiGluMlp(CpuVariant, SwiGluMlp):
    """gate and up of one token in one kernel call."""

    @classmethod
    def applies(cls, module: nn.Module) -> str | None:
        return "gate and up in one kernel call" if _in_one_kernel_call([module.gate_proj, module.up_proj]) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grouped = kernel_linear_many([(self.gate_proj, x), (self.up_proj, x)])
        if grouped is None:
            return super().forward(x)
        gate, up = grouped
        return self.down_proj(F.silu(gate) * up)


class CpuMoeMlp(CpuVariant, MoeMlp):
    """One token: the chosen experts' and the shared experts' products issued together.

    Decoding one page is one token per step: the sort/scatter bookkeeping of
    :meth:`MoeMlp._run_experts` would cost more than the expert products it arranges, and the
    products can go to the kernel in two calls (gates and ups, then downs).
    """

    @classmethod
    def applies(cls, module: nn.Module) -> str | None:
        return "one token's experts issued together" if module.gate.weight.device.type == "cpu" else None

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        x = hidden_states.reshape(-1, hidden_states.shape[-1])
        if x.shape[0] != 1:
            return super().forward(hidden_states)
        weights, ids = self.gate(x)
        weights, chosen = weights[0], ids[0].tolist()
        mlps = [self.experts[expert_id] for expert_id in chosen]
        if self.shared_experts is not None:
            mlps.append(self.shared_experts)
        projected = linear_many(
            [(mlp.gate_proj, hidden_states) for mlp in mlps] + [(mlp.up_proj, hidden_states) for mlp in mlps]
        )
        hidden = F.silu(torch.cat(projected[: len(mlps)], dim=-1)) * torch.cat(projected[len(mlps) :], dim=-1)
        sizes = [mlp.down_proj.in_features for mlp in mlps]
        outs = linear_many([(mlp.down_proj, h) for mlp, h in zip(mlps, hidden.split(sizes, dim=-1), strict=True)])
        routed = torch.cat(outs[: len(chosen)]).float().mul_(weights[:, None, None]).sum(dim=0, keepdim=True)
        routed = routed.to(hidden_states.dtype)
        return routed + outs[-1] if self.shared_experts is not None else routed


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


def takes_fused_steps(layer: nn.Module) -> bool:
    return isinstance(layer, KernelLinear) and layer.takes_fused_steps()


#: A decoder layer's weights as the whole-step kernel calls read them: attention (q, k, v, o),
#: the routed experts (every expert's gate, up, down; None in a dense layer) and the shared
#: experts (or the dense MLP).
StepWeights = tuple[FusedWeights, FusedWeights | None, FusedWeights | None]


def step_weights(layer: DecoderLayer) -> StepWeights | None:
    """The layer's tables, or None unless every projection of the layer takes the fused steps."""

    def projections(mlp: SwiGluMlp) -> list[nn.Module]:
        return [mlp.gate_proj, mlp.up_proj, mlp.down_proj]

    moe = isinstance(layer.mlp, MoeMlp)
    shared_mlp = layer.mlp.shared_experts if moe else layer.mlp  # a dense MLP runs as the shared one
    attention = fused_weights([getattr(layer.self_attn, f"{x}_proj") for x in "qkvo"])
    routed = fused_weights([p for expert in layer.mlp.experts for p in projections(expert)]) if moe else None
    shared = fused_weights(projections(shared_mlp)) if shared_mlp is not None else None
    complete = attention is not None and (routed is not None) == moe and (shared is not None) == (shared_mlp is not None)
    return (attention, routed, shared) if complete else None


class CpuDecoderLayer(CpuVariant, DecoderLayer):
    """A decoding step (one token per sequence) in two kernel calls: the attention half (input
    norm, q/k/v, rotary, the cache append, attention, o_proj and residual) and the MLP half
    (norm, router, chosen and shared experts, residual), each ~30 small torch operations
    otherwise, each slowed ~4x by the caches the weight stream has just evicted. Both take up
    to 16 sequences; the attention half needs a :class:`~..cache.GrowingCache` and no mask
    (no padding). Where a half cannot run so, torch computes it."""

    #: The layer's weights as the kernel reads them (:func:`step_weights`); None once the
    #: weights have moved (``.to()``, ``.float()``), which leaves the layer to torch.
    kernel_weights: StepWeights | None

    @classmethod
    def applies(cls, module: nn.Module) -> str | None:
        return "a decoding step in two kernel calls" if step_weights(module) is not None else None

    def prepare(self) -> None:
        self.kernel_weights = step_weights(self)

    def _apply(self, fn, recurse=True):
        self.kernel_weights = None  # the descriptors hold the addresses of the weights being replaced
        return super()._apply(fn, recurse)

    def forward(
        self,
        hidden_states: torch.Tensor,
        rotary: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None,
        cache: Cache | None,
    ) -> torch.Tensor:
        if self.kernel_weights is None or hidden_states.shape[1] != 1:
            return super().forward(hidden_states, rotary, attention_mask, cache)
        attention, routed, shared = self.kernel_weights
        hidden = self._attention_in_one_call(hidden_states, rotary, attention_mask, cache, attention)
        if hidden is None:
            hidden = hidden_states + self.self_attn(self.input_layernorm(hidden_states), rotary, attention_mask, cache)
        router = self.mlp.gate if isinstance(self.mlp, MoeMlp) else None
        if mlp_step(hidden, self.post_attention_layernorm, router, routed, shared):
            return hidden
        return hidden + self.mlp(self.post_attention_layernorm(hidden))

    def _attention_in_one_call(
        self,
        hidden_states: torch.Tensor,
        rotary: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None,
        cache: Cache | None,
        weights: FusedWeights,
    ) -> torch.Tensor | None:
        """The attention half's output (residual included), or None where the kernel cannot
        compute it (nothing written then, to the cache either)."""
        if attention_mask is not None:  # padded batches
            return None
        layers = getattr(cache, "layers", None)
        index = self.self_attn.layer_idx
        layer = layers[index] if layers is not None and len(layers) > index else None
        room = layer.room_for(1) if isinstance(layer, GrowingLayer) else None
        if room is None:
            return None
        keys, values, length = room
        hidden = hidden_states.clone()
        attn = self.self_attn
        if not attention_step(
            hidden, self.input_layernorm, weights, attn.head_dim, attn.scaling, rotary, keys, values, length
        ):
            return None
        layer.extend(1)
        return hidden
