"""DeepSeek-OCR configuration: reads the official ``config.json`` unchanged.

The official file stores the decoder keys at top level (duplicated under ``language_config``)
and a ``vision_config`` block that the official code never reads: it hard-codes the SAM,
CLIP and projector sizes. Here those hard-coded values are the defaults of optional keys
(``vision_config.width.sam_vit_b.*``, ``vision_config.width.clip-l-14-224.*``,
``projector_config.*``), so the real checkpoint and the tiny parity fixtures load alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from transformers import PretrainedConfig

OFFICIAL_IMAGE_TOKEN_ID = 128815


@dataclass(frozen=True)
class SamConfig:
    """SAM-ViT-B encoder + neck + 16x token compressor (paper §3.2)."""

    width: int = 768
    layers: int = 12
    heads: int = 12
    global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    downsample_channels: tuple[int, int] = (512, 1024)  # out channels of net_2, net_3
    out_chans: int = 256  # neck channels
    window_size: int = 14
    mlp_ratio: float = 4.0
    image_size: int = 1024  # absolute pos-embed grid = image_size / patch_size
    patch_size: int = 16
    layer_norm_eps: float = 1e-6
    neck_layer_norm_eps: float = 1e-6
    use_rel_pos: bool = True
    qkv_bias: bool = True

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size


@dataclass(frozen=True)
class ClipConfig:
    """CLIP-L/14 run over the compressed SAM map (its own patch embedding is bypassed)."""

    width: int = 1024
    layers: int = 24
    heads: int = 16
    image_size: int = 224
    patch_size: int = 14
    ffn_hidden_size: int = 4096
    layernorm_epsilon: float = 1e-5
    pre_layernorm_epsilon: float = 1e-5

    @property
    def num_positions(self) -> int:
        return (self.image_size // self.patch_size) ** 2 + 1


_SAM_KEYS = {f for f in SamConfig.__dataclass_fields__}
_CLIP_KEYS = {f for f in ClipConfig.__dataclass_fields__}


class DeepseekOcrConfig(PretrainedConfig):
    """Configuration of :class:`~deepseek_ocr.DeepseekOcrForConditionalGeneration`.

    Decoder keys follow the official top-level keys; keys the official ``DeepseekV2Config``
    leaves at their defaults (``rms_norm_eps``, ``rope_theta``, ``norm_topk_prob`` ...) are
    optional with those defaults.
    """

    model_type = "deepseek_vl_v2"
    keys_to_ignore_at_inference = ["cache"]

    vocab_size: int = 129280
    hidden_size: int = 1280
    intermediate_size: int = 6848
    moe_intermediate_size: int = 896
    num_hidden_layers: int = 12
    num_attention_heads: int = 10
    num_key_value_heads: int | None = 10
    n_routed_experts: int = 64
    num_experts_per_tok: int = 6
    n_shared_experts: int = 2
    first_k_dense_replace: int = 1
    moe_layer_freq: int = 1
    topk_method: str = "greedy"
    scoring_func: str = "softmax"
    norm_topk_prob: bool = False
    routed_scaling_factor: float = 1.0
    use_mla: bool = False
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None
    hidden_act: str = "silu"
    attention_bias: bool = False
    max_position_embeddings: int = 8192
    bos_token_id: int | None = 0
    eos_token_id: int | list[int] | None = 1
    pad_token_id: int | None = None
    tie_word_embeddings: bool = False
    image_token_id: int = OFFICIAL_IMAGE_TOKEN_ID
    vision_config: dict | None = None
    projector_config: dict | None = None
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs: Any) -> None:
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        super().__post_init__(**kwargs)
        # transformers' strict validation does not reach this override, and a config the model
        # cannot compute (MLA, grouped routing) would otherwise load and compute something else.
        self.validate_architecture()

    def validate_architecture(self) -> None:
        """Raise ``ValueError`` for a config this implementation does not compute as written."""
        if self.use_mla:
            raise ValueError(
                "use_mla is true, but multi-head latent attention is not implemented: "
                "DeepSeek-OCR's decoder uses plain multi-head attention (use_mla: false)"
            )
        if self.topk_method != "greedy" or self.scoring_func != "softmax":
            raise ValueError(
                f"topk_method {self.topk_method!r} with scoring_func {self.scoring_func!r} is not implemented: "
                "only greedy top-k routing over softmax scores (DeepSeek-OCR's setting) is"
            )
        if self.num_key_value_heads != self.num_attention_heads:
            raise ValueError(
                "DeepSeek-OCR uses multi-head attention: num_key_value_heads must equal num_attention_heads"
            )
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("hidden_size must be divisible by num_attention_heads")
        if self.clip.width != self.sam.downsample_channels[1]:
            raise ValueError("CLIP width must equal the SAM compressor's output channels")
        if self.projector_input_dim != self.clip.width + self.sam.downsample_channels[1]:
            raise ValueError("projector input_dim must equal CLIP width + SAM output channels")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def sam(self) -> SamConfig:
        raw = ((self.vision_config or {}).get("width") or {}).get("sam_vit_b") or {}
        values = {k: v for k, v in raw.items() if k in _SAM_KEYS}
        for key in ("global_attn_indexes", "downsample_channels"):
            if key in values:
                values[key] = tuple(values[key])
        return SamConfig(**values)

    @property
    def clip(self) -> ClipConfig:
        raw = ((self.vision_config or {}).get("width") or {}).get("clip-l-14-224") or {}
        return ClipConfig(**{k: v for k, v in raw.items() if k in _CLIP_KEYS})

    @property
    def projector_input_dim(self) -> int:
        return int(
            (self.projector_config or {}).get("input_dim", self.clip.width + self.sam.downsample_channels[1])
        )

    def is_moe_layer(self, index: int) -> bool:
        return (
            self.n_routed_experts is not None
            and index >= self.first_k_dense_replace
            and index % self.moe_layer_freq == 0
        )
