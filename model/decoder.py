"""DeepSeek-3B-MoE decoder (DeepSeek-V2 family with ``use_mla=false``).

Plain multi-head attention with half-split ("rotate half") RoPE, RMSNorm, a dense SwiGLU
MLP in the first layer and mixture-of-experts layers after it: softmax router, greedy
top-k without renormalisation, plus always-on shared experts. Routed experts are separate
``nn.Linear`` modules with the checkpoint's names so bitsandbytes can quantize them.

This file is plain torch and says what the decoder computes. On a CPU the loader gives these
modules variants that compute the same faster (:mod:`.cpu.decoder`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers.cache_utils import Cache
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .configuration import DeepseekOcrConfig


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
    ) -> torch.Tensor:
        q, k, v = self.q_proj(hidden_states), self.k_proj(hidden_states), self.v_proj(hidden_states)
        return self.attend(q, k, v, rotary, attention_mask, cache)

    def attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        rotary: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None,
        cache: Cache | None,
    ) -> torch.Tensor:
        """Projected queries, keys and values (B, L, width) -> the block's output (B, L, hidden):
        rotary positions, the cache, attention (as ``config._attn_implementation`` chooses) and o_proj."""
        b, n, _ = q.shape
        shape = (b, n, -1, self.head_dim)
        q, k, v = (t.view(shape).transpose(1, 2) for t in (q, k, v))
        cos, sin = rotary
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, sdpa_attention_forward
        )
        out, _ = interface(self, q, k, v, attention_mask, dropout=0.0, scaling=self.scaling)
        return self.o_proj(out.reshape(b, n, -1))


class SwiGluMlp(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


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

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        shape = hidden_states.shape
        x = hidden_states.reshape(-1, shape[-1])
        weights, ids = self.gate(x)
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

    def forward(
        self,
        hidden_states: torch.Tensor,
        rotary: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None,
        cache: Cache | None,
    ) -> torch.Tensor:
        hidden_states = hidden_states + self.self_attn(self.input_layernorm(hidden_states), rotary, attention_mask, cache)
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))
