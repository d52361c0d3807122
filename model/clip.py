"""CLIP-L/14 run over SAM's compressed map (DeepEncoder's global-attention half).

CLIP's own patch embedding is bypassed: the (B, 1024, g, g) SAM output is flattened and
used as the patch embeddings, a class token is prepended and the 16x16 position table is
resized to g x g. Parameter names follow the checkpoint (``model.vision_model.*``,
including the misspelt ``pre_layrnorm``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .configuration import ClipConfig


def resize_clip_pos_embed(table: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """(1 + n0^2, C) -> (1, num_tokens, C): class row kept, grid rows bicubic-antialias resized in float32."""
    src = int(math.sqrt(table.shape[0] - 1))
    dst = int(math.sqrt(num_tokens))
    if src == dst:
        return table[None]
    cls_row, grid = table[:1], table[1:]
    grid = grid.view(1, src, src, -1).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=(dst, dst), mode="bicubic", antialias=True, align_corners=False)
    grid = grid.to(table.dtype).permute(0, 2, 3, 1).reshape(dst * dst, -1)
    return torch.cat([cls_row, grid])[None]


class ClipEmbeddings(nn.Module):
    def __init__(self, config: ClipConfig):
        super().__init__()
        self.class_embedding = nn.Parameter(torch.zeros(config.width))
        # Present in the checkpoint (strict load) but never used: SAM features replace it.
        self.patch_embedding = nn.Conv2d(
            3, config.width, kernel_size=config.patch_size, stride=config.patch_size, bias=False
        )
        self.position_embedding = nn.Embedding(config.num_positions, config.width)

    def forward(self, patch_embeds: torch.Tensor) -> torch.Tensor:
        patches = patch_embeds.flatten(2).transpose(1, 2)  # (B, g*g, C), row-major over the grid
        cls = self.class_embedding.expand(patches.shape[0], 1, -1)
        tokens = torch.cat([cls, patches], dim=1)
        return tokens + resize_clip_pos_embed(self.position_embedding.weight, tokens.shape[1])


class ClipAttention(nn.Module):
    def __init__(self, config: ClipConfig):
        super().__init__()
        self.num_heads = config.heads
        self.head_dim = config.width // config.heads
        self.qkv_proj = nn.Linear(config.width, config.width * 3)
        self.out_proj = nn.Linear(config.width, config.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = (
            self.qkv_proj(x).view(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        )
        out = F.scaled_dot_product_attention(q, k, v)  # bidirectional, scale 1/sqrt(head_dim)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, -1))


class ClipMlp(nn.Module):
    def __init__(self, config: ClipConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.width, config.ffn_hidden_size)
        self.fc2 = nn.Linear(config.ffn_hidden_size, config.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc1(x)
        return self.fc2(x * torch.sigmoid(1.702 * x))  # quick-GELU


class ClipBlock(nn.Module):
    def __init__(self, config: ClipConfig):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(config.width, eps=config.layernorm_epsilon)
        self.self_attn = ClipAttention(config)
        self.layer_norm2 = nn.LayerNorm(config.width, eps=config.layernorm_epsilon)
        self.mlp = ClipMlp(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class ClipTransformer(nn.Module):
    def __init__(self, config: ClipConfig):
        super().__init__()
        self.layers = nn.ModuleList(ClipBlock(config) for _ in range(config.layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class ClipVisionModel(nn.Module):
    """SAM features (B, C, g, g) -> CLIP tokens (B, 1 + g*g, C), class token first, no final norm."""

    def __init__(self, config: ClipConfig):
        super().__init__()
        self.embeddings = ClipEmbeddings(config)
        self.pre_layrnorm = nn.LayerNorm(config.width, eps=config.pre_layernorm_epsilon)
        self.transformer = ClipTransformer(config)

    def forward(self, sam_features: torch.Tensor) -> torch.Tensor:
        return self.transformer(self.pre_layrnorm(self.embeddings(sam_features)))
