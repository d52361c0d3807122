"""DeepSeek-3B-MoE decoder (DeepSeek-V2 family with ``use_mla=false``).

Plain multi-head attention with half-split ("rotate half") RoPE, RMSNorm, a dense SwiGLU
MLP in the first layer and mixture-of-experts layers after it: softmax router, greedy
top-k without renormalisation, plus always-on shared experts. Routed experts are separate
``nn.Linear`` modules with the checkpoint's names so bitsandbytes can quantize them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers.cache_utils import Cache
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .cache import GrowingLayer
from .configuration import DeepseekOcrConfig
from .cpu import linear as kernel_linear
from .cpu.linear import FusedWeights, attention_step, fused_weights, mlp_step


def linear(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)``; a single row on CPU goes through ``torch.mv``.

    Decoding one page feeds one token at a time, and PyTorch's CPU GEMM path for a (1, K)
    bfloat16 input streams the weight at about half the bandwidth of its GEMV kernel. Quantized
    layers (bitsandbytes subclasses) keep their own forward.
    """
    if type(layer) is nn.Linear and x.device.type == "cpu" and x.numel() == layer.in_features:
        out = torch.mv(layer.weight, x.reshape(-1))
        if layer.bias is not None:
            out = out + layer.bias
        return out.view(*x.shape[:-1], -1)
    return layer(x)


def linear_many(pairs: list[tuple[nn.Module, torch.Tensor]]) -> list[torch.Tensor]:
    """``[linear(layer, x) for layer, x in pairs]``: products whose inputs are ready together.

    Kernel layers decoding one token run them in a single kernel call (see ``kernel_linear.linear_many``).
    """
    grouped = kernel_linear.linear_many(pairs)
    if grouped is not None:
        return grouped
    return [linear(layer, x) for layer, x in pairs]


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x * rsqrt(mean(x^2) + eps) in float32, as the reference; one op instead of five.
        return self.weight * F.rms_norm(x.float(), x.shape[-1:], eps=self.variance_epsilon).to(x.dtype)


def rotary_cos_sin(
    position_ids: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin (B, L, head_dim) for positions (B, L), computed in float32 then cast."""
    exponent = torch.arange(0, head_dim, 2, dtype=torch.int64, device=position_ids.device).float() / head_dim
    inv_freq = 1.0 / (theta**exponent)
    freqs = position_ids[..., None].float() * inv_freq  # (B, L, head_dim/2)
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat([-second, first], dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, heads, L, d); cos/sin (B, L, d)."""
    cos, sin = cos[:, None], sin[:, None]
    return x * cos + rotate_half(x) * sin


class DecoderAttention(nn.Module):
    def __init__(self, config: DeepseekOcrConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        self.scaling = self.head_dim**-0.5
        self.num_key_value_groups = 1
        self.is_causal = True
        width = config.num_attention_heads * self.head_dim
        self.q_proj = nn.Linear(config.hidden_size, width, bias=config.attention_bias)
        self.k_proj = nn.Linear(config.hidden_size, width, bias=config.attention_bias)
        self.v_proj = nn.Linear(config.hidden_size, width, bias=config.attention_bias)
        self.o_proj = nn.Linear(width, config.hidden_size, bias=config.attention_bias)

    def forward(
        self,
        hidden_states: torch.Tensor,
        rotary: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None,
        cache: Cache | None,
        norm: nn.Module | None = None,
    ) -> torch.Tensor:
        """``norm`` (the layer's input RMSNorm) is applied to ``hidden_states`` first."""
        b, n, _ = hidden_states.shape
        shape = (b, n, -1, self.head_dim)
        cos, sin = rotary
        normed = norm(hidden_states) if norm is not None else hidden_states
        projections = (self.q_proj, self.k_proj, self.v_proj)
        q, k, v = (t.view(shape).transpose(1, 2) for t in linear_many([(p, normed) for p in projections]))
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        attend: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, sdpa_attention_forward
        )
        out, _ = attend(self, q, k, v, attention_mask, dropout=0.0, scaling=self.scaling)
        return linear(self.o_proj, out.reshape(b, n, -1))


class SwiGluMlp(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = linear_many([(self.gate_proj, x), (self.up_proj, x)])
        return linear(self.down_proj, F.silu(gate) * up)


class MoeRouter(nn.Module):
    """Softmax over routed experts, greedy top-k; a bare weight (checkpoint ``mlp.gate.weight``)."""

    def __init__(self, config: DeepseekOcrConfig):
        super().__init__()
        self.top_k = config.num_experts_per_tok
        self.norm_topk_prob = config.norm_topk_prob
        self.routed_scaling_factor = config.routed_scaling_factor
        self.weight = nn.Parameter(torch.empty(config.n_routed_experts, config.hidden_size))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (T, H) -> (weights (T, k) float32, expert ids (T, k))."""
        # Routing in float32 (as the reference code asks) keeps expert choice stable under quantization.
        scores = F.linear(x.float(), self.weight.float()).softmax(dim=-1, dtype=torch.float32)
        weights, ids = torch.topk(scores, k=self.top_k, dim=-1)
        if self.norm_topk_prob:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        return weights * self.routed_scaling_factor, ids


class MoeMlp(nn.Module):
    def __init__(self, config: DeepseekOcrConfig):
        super().__init__()
        self.gate = MoeRouter(config)
        self.experts = nn.ModuleList(
            SwiGluMlp(config.hidden_size, config.moe_intermediate_size)
            for _ in range(config.n_routed_experts)
        )
        self.shared_experts = (
            SwiGluMlp(config.hidden_size, config.moe_intermediate_size * config.n_shared_experts)
            if config.n_shared_experts
            else None
        )

    def forward(self, hidden_states: torch.Tensor, norm: nn.Module | None = None) -> torch.Tensor:
        """``norm`` (the layer's post-attention RMSNorm) is applied to ``hidden_states`` first."""
        if norm is not None:
            hidden_states = norm(hidden_states)
        shape = hidden_states.shape
        x = hidden_states.reshape(-1, shape[-1])
        weights, ids = self.gate(x)
        if x.shape[0] == 1:
            return self._forward_one_token(hidden_states, weights[0], ids[0].tolist())
        routed = self._run_experts(x, weights, ids).to(hidden_states.dtype).view(shape)
        if self.shared_experts is not None:
            routed = routed + self.shared_experts(hidden_states)
        return routed

    def _run_experts(self, x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Weighted sum of the chosen experts per token, in float32 as the reference ``moe_infer``."""
        top_k = ids.shape[1]
        flat_ids = ids.flatten()
        order = flat_ids.argsort()
        counts = torch.bincount(flat_ids, minlength=len(self.experts)).tolist()
        sorted_tokens = x[order // top_k]
        outputs, start = [], 0
        for expert_id, count in enumerate(counts):
            if count:
                outputs.append(self.experts[expert_id](sorted_tokens[start : start + count]))
                start += count
        per_choice = torch.empty((flat_ids.shape[0], x.shape[1]), dtype=outputs[0].dtype, device=x.device)
        per_choice[order] = torch.cat(outputs)
        return (per_choice.view(-1, top_k, x.shape[1]).float() * weights[..., None]).sum(dim=1)

    def _forward_one_token(self, hidden_states: torch.Tensor, weights: torch.Tensor, ids: list[int]) -> torch.Tensor:
        # Decoding one page is one token per step: the sort/scatter bookkeeping above would cost
        # more than the expert products it arranges, and the chosen experts' (and the shared
        # experts') projections can be issued together.
        mlps = [self.experts[expert_id] for expert_id in ids]
        if self.shared_experts is not None:
            mlps.append(self.shared_experts)
        projected = linear_many(
            [(mlp.gate_proj, hidden_states) for mlp in mlps] + [(mlp.up_proj, hidden_states) for mlp in mlps]
        )
        hidden = F.silu(torch.cat(projected[: len(mlps)], dim=-1)) * torch.cat(projected[len(mlps) :], dim=-1)
        sizes = [mlp.down_proj.in_features for mlp in mlps]
        outs = linear_many([(mlp.down_proj, h) for mlp, h in zip(mlps, hidden.split(sizes, dim=-1), strict=True)])
        routed = torch.cat(outs[: len(ids)]).float().mul_(weights[:, None, None]).sum(dim=0, keepdim=True)
        routed = routed.to(hidden_states.dtype)
        return routed + outs[-1] if self.shared_experts is not None else routed


class DecoderLayer(nn.Module):
    def __init__(self, config: DeepseekOcrConfig, layer_idx: int):
        super().__init__()
        self.self_attn = DecoderAttention(config, layer_idx)
        self.mlp = (
            MoeMlp(config)
            if config.is_moe_layer(layer_idx)
            else SwiGluMlp(config.hidden_size, config.intermediate_size)
        )
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        #: The layer's weights as the CPU kernel reads them (``prepare_kernel_step``), or None.
        self.kernel_weights: tuple[FusedWeights, FusedWeights | None, FusedWeights | None] | None = None

    def prepare_kernel_step(self) -> None:
        """After the weights are in a kernel format: a one-token decoding step then runs each
        half of the layer in one kernel call (where every projection of the layer allows it)."""

        def projections(mlp: SwiGluMlp) -> list[nn.Module]:
            return [mlp.gate_proj, mlp.up_proj, mlp.down_proj]

        moe = isinstance(self.mlp, MoeMlp)
        shared_mlp = self.mlp.shared_experts if moe else self.mlp  # a dense MLP runs as the shared one
        attention = fused_weights([getattr(self.self_attn, f"{x}_proj") for x in "qkvo"])
        routed = fused_weights([p for expert in self.mlp.experts for p in projections(expert)]) if moe else None
        shared = fused_weights(projections(shared_mlp)) if shared_mlp is not None else None
        complete = attention is not None and (routed is not None) == moe and (shared is not None) == (shared_mlp is not None)
        self.kernel_weights = (attention, routed, shared) if complete else None

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
        if self.kernel_weights is not None and hidden_states.shape[1] == 1:
            return self._decoding_step(hidden_states, rotary, attention_mask, cache)
        hidden_states = hidden_states + self.self_attn(
            hidden_states, rotary, attention_mask, cache, norm=self.input_layernorm
        )
        return hidden_states + self._mlp(hidden_states)

    def _mlp(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if isinstance(self.mlp, MoeMlp):
            return self.mlp(hidden_states, norm=self.post_attention_layernorm)
        return self.mlp(self.post_attention_layernorm(hidden_states))

    def _decoding_step(
        self, hidden_states: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor], attention_mask, cache
    ) -> torch.Tensor:
        """One token per sequence with kernel weights: each block in one kernel call instead of
        ~30 small torch operations, each slowed ~4x by the caches the weight stream has just
        evicted. Both take up to 16 sequences; attention needs a GrowingCache and no mask (no
        padding); otherwise torch computes the block."""
        attention, routed, shared = self.kernel_weights
        hidden = self._attention_in_one_call(hidden_states, rotary, attention_mask, cache, attention)
        if hidden is None:
            hidden = hidden_states + self.self_attn(
                hidden_states, rotary, attention_mask, cache, norm=self.input_layernorm
            )
        router = self.mlp.gate if isinstance(self.mlp, MoeMlp) else None
        if mlp_step(hidden, self.post_attention_layernorm, router, routed, shared):
            return hidden
        return hidden + self._mlp(hidden)

    def _attention_in_one_call(
        self, hidden_states: torch.Tensor, rotary, attention_mask, cache, weights: FusedWeights
    ) -> torch.Tensor | None:
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
