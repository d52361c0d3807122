"""DeepSeek-OCR: DeepEncoder (SAM -> 16x compressor -> CLIP) + linear projector + MoE decoder.

Module tree and parameter names are the official checkpoint's, so
``DeepseekOcrForConditionalGeneration.from_pretrained(dir)`` loads the download unchanged.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache
from transformers.masking_utils import create_causal_mask
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from .cache import GrowingCache
from .clip import ClipVisionModel
from .configuration import DeepseekOcrConfig
from .decoder import DecoderLayer, MoeRouter, RMSNorm, rotary_cos_sin
from .sam import LayerNorm2d, SamAttention, SamEncoder

#: Vision inputs are consumed by the prefill only; decode steps must not re-encode the page.
VISION_INPUTS = ("pixel_values", "pixel_values_tiles", "images_spatial_crop", "images_seq_mask")

#: Views encoded per SAM/CLIP call; bounds activation memory for pages with many tiles.
_VIEWS_PER_CHUNK = 4


class Projector(nn.Module):
    """Linear 2048 -> 1280; the checkpoint calls the Linear itself ``projector.layers``."""

    def __init__(self, input_dim: int, n_embed: int):
        super().__init__()
        self.layers = nn.Linear(input_dim, n_embed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class DeepseekOcrPreTrainedModel(PreTrainedModel):
    config: DeepseekOcrConfig
    config_class = DeepseekOcrConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _no_split_modules = ["DecoderLayer", "SamBlock", "ClipBlock"]
    _supports_sdpa = True
    _supports_flash_attn = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Random init for weights absent from a checkpoint (benchmarks build random full-size models)."""
        super()._init_weights(module)
        std = self.config.initializer_range
        if isinstance(module, SamEncoder):
            init.normal_(module.pos_embed, std=std)
        elif isinstance(module, SamAttention):
            init.normal_(module.rel_pos_h, std=std)
            init.normal_(module.rel_pos_w, std=std)
        elif isinstance(module, LayerNorm2d):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, MoeRouter):
            init.normal_(module.weight, std=std)
        elif isinstance(module, DeepseekOcrModel) and module.has_vision:
            init.normal_(module.vision_model.embeddings.class_embedding, std=std)
            init.normal_(module.image_newline, std=std)
            init.normal_(module.view_seperator, std=std)


class DeepseekOcrModel(DeepseekOcrPreTrainedModel):
    """Vision encoders, projector and decoder stack (everything under the ``model.`` prefix)."""

    def __init__(self, config: DeepseekOcrConfig, vision: bool = True):
        """``vision=False``: the decoder alone, for a checkpoint whose vision part is another
        model's (DeepSeek-OCR-2's decoder, :mod:`.ocr2`); it reads ``inputs_embeds`` and token ids only."""
        super().__init__(config)
        self.has_vision = vision
        if vision:
            self.sam_model = SamEncoder(config.sam)
            self.vision_model = ClipVisionModel(config.clip)
            self.projector = Projector(config.projector_input_dim, config.hidden_size)
            self.image_newline = nn.Parameter(torch.zeros(config.hidden_size))
            self.view_seperator = nn.Parameter(torch.zeros(config.hidden_size))  # sic: checkpoint spelling
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    # ---- vision -------------------------------------------------------------------------

    def encode_views(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Square views (N, 3, S, S) -> projected tokens (N, (S/64)^2, hidden)."""
        dtype = self.sam_model.patch_embed.proj.weight.dtype
        chunks = []
        for views in pixel_values.to(dtype).split(_VIEWS_PER_CHUNK):
            sam = self.sam_model(views)  # (n, C, g, g)
            clip = self.vision_model(sam)  # (n, 1 + g*g, C), class token first
            # CLIP channels first, then SAM channels (pitfall 4).
            fused = torch.cat([clip[:, 1:], sam.flatten(2).transpose(1, 2)], dim=-1)
            chunks.append(self.projector(fused))
        return torch.cat(chunks)

    def arrange_image_tokens(
        self, global_tokens: torch.Tensor, tile_tokens: torch.Tensor | None, grid: tuple[int, int]
    ) -> torch.Tensor:
        """One image's sequence block: [tile rows + newline..., global rows + newline..., separator]."""
        hidden = global_tokens.shape[-1]
        g = int(global_tokens.shape[0] ** 0.5)
        newline = self.image_newline.to(global_tokens.dtype)
        rows = global_tokens.view(g, g, hidden)
        parts = []
        if tile_tokens is not None:
            cols, tile_rows = grid
            t = int(tile_tokens.shape[1] ** 0.5)
            # (rows, cols, t, t, H) -> (rows, t, cols, t, H): stitch tiles into one big grid (pitfall 2).
            stitched = tile_tokens.view(tile_rows, cols, t, t, hidden).permute(0, 2, 1, 3, 4)
            stitched = stitched.reshape(tile_rows * t, cols * t, hidden)
            parts.append(
                torch.cat([stitched, newline.expand(tile_rows * t, 1, hidden)], dim=1).reshape(-1, hidden)
            )
        parts.append(torch.cat([rows, newline.expand(g, 1, hidden)], dim=1).reshape(-1, hidden))
        parts.append(self.view_seperator.to(global_tokens.dtype)[None])
        return torch.cat(parts)

    def image_embeddings(
        self,
        pixel_values: torch.Tensor,
        pixel_values_tiles: torch.Tensor | None,
        images_spatial_crop: torch.Tensor,
    ) -> list[torch.Tensor]:
        """Per image in the batch: its vision block, local tiles first (pitfall 1)."""
        global_tokens = self.encode_views(pixel_values)
        tile_tokens = self.encode_views(pixel_values_tiles) if pixel_values_tiles is not None else None
        blocks, offset = [], 0
        for i, (cols, rows) in enumerate(images_spatial_crop.tolist()):
            tiles = None
            if cols * rows > 1:
                if tile_tokens is None:
                    raise ValueError("images_spatial_crop announces tiles but pixel_values_tiles is missing")
                tiles = tile_tokens[offset : offset + cols * rows]
                offset += cols * rows
            blocks.append(self.arrange_image_tokens(global_tokens[i], tiles, (cols, rows)))
        return blocks

    def embed_inputs(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        pixel_values_tiles: torch.Tensor | None = None,
        images_spatial_crop: torch.Tensor | None = None,
        images_seq_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Token embeddings with the vision blocks written over the image-token positions."""
        embeds = self.embed_tokens(input_ids)
        if pixel_values is None:
            return embeds
        if not self.has_vision:
            raise ValueError("this decoder has no vision part: pass inputs_embeds with the image embeddings")
        if images_seq_mask is None or images_spatial_crop is None:
            raise ValueError("pixel_values need images_seq_mask and images_spatial_crop")
        vision = torch.cat(self.image_embeddings(pixel_values, pixel_values_tiles, images_spatial_crop))
        mask = images_seq_mask.to(embeds.device, torch.bool)
        if int(mask.sum()) != vision.shape[0]:
            raise ValueError(
                f"prompt has {int(mask.sum())} image tokens but the images produce {vision.shape[0]} embeddings"
            )
        embeds = embeds.clone()
        embeds[mask] = vision.to(embeds.dtype)
        return embeds

    # ---- decoder ------------------------------------------------------------------------

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        pixel_values_tiles: torch.Tensor | None = None,
        images_spatial_crop: torch.Tensor | None = None,
        images_seq_mask: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        if inputs_embeds is None:
            inputs_embeds = self.embed_inputs(
                input_ids, pixel_values, pixel_values_tiles, images_spatial_crop, images_seq_mask
            )
        if use_cache and cache is None:
            cache = GrowingCache()
        if position_ids is None:
            past = cache.get_seq_length() if cache is not None else 0
            position_ids = torch.arange(past, past + inputs_embeds.shape[1], device=inputs_embeds.device)[
                None
            ]
        mask = create_causal_mask(
            config=self.config,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            cache=cache,
            position_ids=position_ids,
        )
        rotary = rotary_cos_sin(
            position_ids, self.config.head_dim, self.config.rope_theta, inputs_embeds.dtype
        )
        hidden = inputs_embeds
        all_hidden = [hidden] if output_hidden_states else None
        for layer in self.layers:
            hidden = layer(hidden, rotary, mask, cache)
            if all_hidden is not None:
                all_hidden.append(hidden)
        hidden = self.norm(hidden)
        if all_hidden is not None:
            all_hidden[-1] = hidden  # HF convention: the last entry is the normed output
        return BaseModelOutputWithPast(
            last_hidden_state=hidden,
            cache=cache if use_cache else None,
            hidden_states=tuple(all_hidden) if all_hidden is not None else None,
        )


class DeepseekOcrForConditionalGeneration(DeepseekOcrPreTrainedModel, GenerationMixin):
    """DeepSeek-OCR with its language-model head; ``generate`` reads pages greedily."""

    def __init__(self, config: DeepseekOcrConfig, vision: bool = True):
        super().__init__(config)
        self.model = DeepseekOcrModel(config, vision=vision)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        pixel_values_tiles: torch.Tensor | None = None,
        images_spatial_crop: torch.Tensor | None = None,
        images_seq_mask: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        logits_to_keep: int = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """``logits_to_keep=0`` returns logits for every position (the reference does); generate asks for 1."""
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            pixel_values=pixel_values,
            pixel_values_tiles=pixel_values_tiles,
            images_spatial_crop=images_spatial_crop,
            images_seq_mask=images_seq_mask,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
        )
        hidden = outputs.last_hidden_state
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.lm_head(hidden).float()
        return CausalLMOutputWithPast(
            logits=logits, cache=outputs.cache, hidden_states=outputs.hidden_states
        )

    def prepare_inputs_for_generation(
        self, *args, inputs_embeds: torch.Tensor | None = None, is_first_iteration: bool | None = False, **kwargs
    ):
        """``inputs_embeds`` (named so generate accepts them) feed the prefill: DeepSeek-OCR-2's
        image embeddings reach the decoder that way (:mod:`.ocr2`)."""
        inputs = super().prepare_inputs_for_generation(
            *args, inputs_embeds=inputs_embeds, is_first_iteration=is_first_iteration, **kwargs
        )
        if not is_first_iteration:
            for name in VISION_INPUTS:
                inputs.pop(name, None)
        return inputs
