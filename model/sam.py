"""SAM-ViT-B encoder with the 16x token compressor (DeepEncoder's high-resolution half).

Windowed attention (14x14) in most blocks and global attention in a few keeps activation
memory low at 1024-1280 px; the neck and two stride-2 convolutions then cut the token count
16x before the dense CLIP half. Parameter names follow the official checkpoint
(``model.sam_model.*``).

This file is plain torch and says what SAM computes. On a CPU the loader gives its attention
and MLP variants that compute the same faster (:mod:`.cpu.sam`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .configuration import SamConfig

#: Attention-bias elements materialised at once; larger maps are processed in chunks of query
#: rows (identical result per row). Summed by broadcasting (float32), 4M elements keeps a chunk's
#: bias near the CPU caches: a 1024 px SAM pass took 2.3 s against 3.0 s with 32M-element chunks.
#: Built as a matrix product (half precision, relative_position_bias), 16M-element chunks (32 MB)
#: ran about as fast as 8M and faster than 32M-64M: 1024 px 3.43 s, 4.21 s added in 4M chunks.
_MAX_ADDED_BIAS_ELEMENTS = 1 << 22
_MAX_MULTIPLIED_BIAS_ELEMENTS = 1 << 24


def resize_abs_pos_embed(pos_embed: torch.Tensor, grid: int) -> torch.Tensor:
    """(1, G0, G0, C) table -> (1, grid, grid, C); bicubic + antialias in float32 as the reference."""
    if pos_embed.shape[1] == grid:
        return pos_embed
    table = pos_embed.permute(0, 3, 1, 2).float()
    table = F.interpolate(table, size=(grid, grid), mode="bicubic", antialias=True, align_corners=False)
    return table.to(pos_embed.dtype).permute(0, 2, 3, 1)


def get_rel_pos(q_size: int, k_size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """Relative position embeddings (q_size, k_size, C), the table linearly resized when needed."""
    max_rel_dist = 2 * max(q_size, k_size) - 1
    if rel_pos.shape[0] != max_rel_dist:
        resized = F.interpolate(
            rel_pos.float().reshape(1, rel_pos.shape[0], -1).permute(0, 2, 1),
            size=max_rel_dist,
            mode="linear",
        )
        rel_pos = resized.to(rel_pos.dtype).reshape(-1, max_rel_dist).permute(1, 0)
    q_coords = torch.arange(q_size, device=rel_pos.device)[:, None] * max(k_size / q_size, 1.0)
    k_coords = torch.arange(k_size, device=rel_pos.device)[None, :] * max(q_size / k_size, 1.0)
    relative = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    return rel_pos[relative.long()]


def window_partition(
    x: torch.Tensor, window: int, fill: torch.Tensor | None = None
) -> tuple[torch.Tensor, tuple[int, int]]:
    """(B, H, W, C) -> (B * nWindows, window, window, C), padding bottom/right with zeros, or with
    ``fill`` (C,) at every padded position (padding is not masked)."""
    b, h, w, c = x.shape
    pad_h, pad_w = (window - h % window) % window, (window - w % window) % window
    if fill is not None and (pad_h or pad_w):
        padded = fill.to(x.dtype).expand(b, h + pad_h, w + pad_w, c).clone()
        padded[:, :h, :w] = x
        x = padded
    elif pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    x = x.view(b, hp // window, window, wp // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window, window, c), (hp, wp)


def window_unpartition(
    windows: torch.Tensor, window: int, padded: tuple[int, int], size: tuple[int, int]
) -> torch.Tensor:
    hp, wp = padded
    h, w = size
    b = windows.shape[0] // (hp * wp // window // window)
    x = windows.view(b, hp // window, wp // window, window, window, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, -1)
    return x[:, :h, :w, :].contiguous()


class SamPatchEmbed(nn.Module):
    def __init__(self, config: SamConfig):
        super().__init__()
        self.proj = nn.Conv2d(3, config.width, kernel_size=config.patch_size, stride=config.patch_size)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        # (B, G, G, C) channels-last, made contiguous: left as a view of the (B, C, G, G) output, every
        # later residual add and norm of the encoder ran on strided memory (a 1024 px add 11.7 ms, 1.3 ms contiguous).
        return self.proj(pixel_values).permute(0, 2, 3, 1).contiguous()


class SamAttention(nn.Module):
    """Multi-head attention with decomposed relative position bias (MViTv2 / SAM)."""

    def __init__(self, config: SamConfig, rel_pos_size: int):
        super().__init__()
        self.num_heads = config.heads
        self.head_dim = config.width // config.heads
        self.qkv = nn.Linear(config.width, config.width * 3, bias=config.qkv_bias)
        self.proj = nn.Linear(config.width, config.width)
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * rel_pos_size - 1, self.head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * rel_pos_size - 1, self.head_dim))

    def forward(self, x: torch.Tensor, window: int = 0) -> torch.Tensor:
        """(b, h, w, width) -> (b, h, w, width); ``window``: attention within window x window squares."""
        qkv = self.qkv(x)  # (b, h, w, 3 * width): (3, heads, head_dim) per position
        return self.proj(in_windows(qkv, window, self.qkv.bias, self.attend))

    def attend(self, qkv: torch.Tensor) -> torch.Tensor:
        """The attention of (b, h, w, 3 * width) projections -> (b, h, w, width), before the output projection."""
        return self._attend(qkv, *self.relative_terms(qkv))

    def relative_terms(self, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The bias terms (b, heads, h, w, h) and (b, heads, h, w, w) from the UNSCALED queries:
        the bias at key (ky, kx) of query (y, x) is rel_h[..., y, x, ky] + rel_w[..., y, x, kx]."""
        b, h, w, _ = qkv.shape
        q = qkv.reshape(b, h, w, 3, self.num_heads, self.head_dim)[:, :, :, 0].permute(0, 3, 1, 2, 4)
        rel_h = torch.einsum("bnywc,ykc->bnywk", q, get_rel_pos(h, h, self.rel_pos_h))
        rel_w = torch.einsum("bnywc,wkc->bnywk", q, get_rel_pos(w, w, self.rel_pos_w))
        return rel_h, rel_w

    def _attend(self, qkv: torch.Tensor, rel_h: torch.Tensor, rel_w: torch.Tensor) -> torch.Tensor:
        """(b, h, w, width) by torch's SDPA with the bias materialised, a chunk of query rows at a time."""
        b, h, w, _ = qkv.shape
        q, k, v = qkv.reshape(b, h * w, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        multiply = q.dtype != torch.float32  # see relative_position_bias
        limit = _MAX_MULTIPLIED_BIAS_ELEMENTS if multiply else _MAX_ADDED_BIAS_ELEMENTS
        rows_per_chunk = max(1, limit // (b * self.num_heads * w * h * w))
        # Written in place: chunk results kept alive for a final cat would sit between the
        # chunks' freed bias buffers and grow the heap by one bias per chunk.
        out = torch.empty_like(q)
        for start in range(0, h, rows_per_chunk):
            end = min(h, start + rows_per_chunk)
            bias = relative_position_bias(rel_h[:, :, start:end], rel_w[:, :, start:end], multiply)
            out[:, :, start * w : end * w] = F.scaled_dot_product_attention(
                q[:, :, start * w : end * w], k, v, attn_mask=bias
            )
        return out.transpose(1, 2).reshape(b, h, w, -1)


def in_windows(
    qkv: torch.Tensor, window: int, qkv_bias: torch.Tensor | None, attend: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """``attend`` over the (b, h, w, 3 * width) projections, within window x window squares when
    ``window`` > 0 -> (b, h, w, width).

    SAM pads the normalised map with zeros to whole windows before its qkv projection, so every
    padded position's projections are the projection's bias: they are filled in here rather than
    computed (SAM-B at 1024 px: 4,900 positions through the windowed blocks' linears instead of
    4,096). The padded keys and values take part in the edge windows' attention, as in SAM; the
    padded queries' outputs are dropped before the output projection.
    """
    if not window:
        return attend(qkv)
    size = (qkv.shape[1], qkv.shape[2])
    windows, padded = window_partition(qkv, window, fill=qkv_bias)  # no bias: zeros
    return window_unpartition(attend(windows), window, padded, size)


def relative_position_bias(rel_h: torch.Tensor, rel_w: torch.Tensor, multiply: bool) -> torch.Tensor:
    """(b, heads, rows, w, h) and (b, heads, rows, w, w) terms -> bias (b, heads, rows * w, h * w),
    rel_h[..., ky] + rel_w[..., kx] at key (ky, kx).

    ``multiply`` builds the same sums as one product with a 0/1 key selector (each output is
    1 * rel_h + 1 * rel_w, accumulated in float32 and rounded once, as the broadcast add). Matrix
    units make that ~4x faster than the broadcast add in bfloat16; in float32 the add is faster.
    """
    b, heads, rows, w, h = rel_h.shape
    if not multiply:
        return (rel_h.unsqueeze(-1) + rel_w.unsqueeze(-2)).reshape(b, heads, rows * w, h * w)
    terms = torch.cat([rel_h, rel_w], dim=-1).reshape(b, heads, rows * w, h + w)
    keys = torch.arange(h * w, device=rel_h.device)
    selector = torch.zeros(h + w, h * w, dtype=rel_h.dtype, device=rel_h.device)
    selector[keys // w, keys] = 1
    selector[h + keys % w, keys] = 1
    return terms @ selector


class SamMlp(nn.Module):
    def __init__(self, config: SamConfig):
        super().__init__()
        hidden = int(config.width * config.mlp_ratio)
        self.lin1 = nn.Linear(config.width, hidden)
        self.lin2 = nn.Linear(hidden, config.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(F.gelu(self.lin1(x)))


class SamBlock(nn.Module):
    def __init__(self, config: SamConfig, index: int):
        super().__init__()
        self.window_size = 0 if index in config.global_attn_indexes else config.window_size
        rel_pos_size = config.window_size if self.window_size else config.grid
        self.norm1 = nn.LayerNorm(config.width, eps=config.layer_norm_eps)
        self.attn = SamAttention(config, rel_pos_size)
        self.norm2 = nn.LayerNorm(config.width, eps=config.layer_norm_eps)
        self.mlp = SamMlp(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), self.window_size)
        return x + self.mlp(self.norm2(x))


class LayerNorm2d(nn.Module):
    """LayerNorm over channels of a (B, C, H, W) map, written elementwise as in SAM."""

    def __init__(self, channels: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class SamEncoder(nn.Module):
    """pixels (B, 3, S, S) -> compressed features (B, C_out, S/64, S/64)."""

    def __init__(self, config: SamConfig):
        super().__init__()
        self.patch_embed = SamPatchEmbed(config)
        self.pos_embed = nn.Parameter(torch.zeros(1, config.grid, config.grid, config.width))
        self.blocks = nn.ModuleList(SamBlock(config, i) for i in range(config.layers))
        self.neck = nn.Sequential(
            nn.Conv2d(config.width, config.out_chans, kernel_size=1, bias=False),
            LayerNorm2d(config.out_chans, config.neck_layer_norm_eps),
            nn.Conv2d(config.out_chans, config.out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(config.out_chans, config.neck_layer_norm_eps),
        )
        mid, out = config.downsample_channels
        self.net_2 = nn.Conv2d(config.out_chans, mid, kernel_size=3, stride=2, padding=1, bias=False)
        self.net_3 = nn.Conv2d(mid, out, kernel_size=3, stride=2, padding=1, bias=False)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(pixel_values)  # (B, G, G, C)
        x = x + resize_abs_pos_embed(self.pos_embed, x.shape[1])
        for block in self.blocks:
            x = block(x)
        x = self.neck(x.permute(0, 3, 1, 2))
        return self.net_3(self.net_2(x))
