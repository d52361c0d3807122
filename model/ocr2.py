"""DeepSeek-OCR-2's decoder as ``deepseek_ocr``'s: its text weights in this package's decoder.

OCR-2 keeps DeepSeek-OCR's DeepSeek-3B-MoE decoder (tests/model/test_ocr2_decoder_parity.py shows
this package's decoder, given OCR-2's text weights, computes transformers' OCR-2 logits), so the
CPU decoding work (int4, exponent-coded bfloat16, fused decoder steps: :mod:`.cpu`) serves it as
is. This module maps OCR-2's text weights onto the decoder's names and loads them as
:func:`~.loading.load_model` loads v1's: streamed from the safetensors files, converted to the
kernel formats as they arrive, then the CPU fast paths attached. OCR-2's vision part stays
transformers' (the caller computes the input embeddings with it).

OCR-2 checkpoints come in two spellings: the original one (``model.layers.N.mlp.experts.E.gate_proj
.weight``, which is v1's) and transformers' (``model.language_model.layers.N.mlp.experts.gate_up_proj``,
every expert stacked, gate rows above up rows). Both are read.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .configuration import DeepseekOcrConfig
from .cpu.dispatch import attach_fast_paths
from .cpu.exponent_coding import code_linears
from .cpu.int4 import quantize_linears_int4
from .loading import (
    _RUNTIME_HEADROOM,
    CheckpointError,
    CheckpointTensors,
    RuntimePlan,
    _weight_bytes,
    available_memory,
    codable_linears,
    codes_bfloat16,
    convert_from_checkpoint,
    quantizable_linears,
    return_freed_memory,
    store_routers_in_float32,
    weight_files,
)
from .modeling import DeepseekOcrForConditionalGeneration

logger = logging.getLogger(__name__)

OCR2_MODEL_TYPE = "deepseek_ocr2"

#: OCR-2 text-config keys that mean the same in :class:`~.configuration.DeepseekOcrConfig`.
SHARED_TEXT_KEYS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "moe_intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "n_routed_experts",
    "num_experts_per_tok",
    "n_shared_experts",
    "routed_scaling_factor",
    "norm_topk_prob",
    "topk_method",
    "rms_norm_eps",
    "hidden_act",
    "attention_bias",
    "max_position_embeddings",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "tie_word_embeddings",
)

#: A decoder weight under either spelling: ``model.`` then, in transformers', ``language_model.``.
_DECODER_NAME = re.compile(r"^model\.(?:language_model\.)?((?:embed_tokens|layers|norm)\..*)$")
#: transformers' stacked experts: (experts, 2 x intermediate, hidden) and (experts, hidden, intermediate).
_STACKED = re.compile(r"^(model\.layers\.\d+\.mlp\.experts)\.(gate_up_proj|down_proj)$")


@dataclass(frozen=True)
class TensorSource:
    """Where one decoder weight is in an OCR-2 checkpoint: a tensor, or one expert's rows of a
    stacked one (``part``: ``gate`` or ``up``, the halves of ``gate_up_proj``; ``all``)."""

    name: str
    expert: int | None = None
    part: str = "all"

    def take(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.expert is None:
            return tensor
        block = tensor[self.expert]
        if self.part == "all":
            return block
        gate, up = block.chunk(2, dim=0)
        return gate if self.part == "gate" else up


def decoder_config(raw: Mapping[str, Any]) -> DeepseekOcrConfig:
    """The decoder's configuration from an OCR-2 ``config.json`` (its ``text_config``); raises
    ``ValueError`` for a text model this decoder does not compute."""
    text = raw.get("text_config") or {}
    values = {key: text[key] for key in SHARED_TEXT_KEYS if key in text}
    rope = text.get("rope_parameters") or {}
    if rope.get("rope_type", "default") != "default":
        raise ValueError(f"rope_type {rope['rope_type']!r}: only plain rotary positions are implemented")
    values["rope_theta"] = rope.get("rope_theta", text.get("rope_theta", 10000.0))
    values["first_k_dense_replace"] = _dense_layers(text)
    head_dim = text.get("head_dim")
    if head_dim is not None and head_dim * text["num_attention_heads"] != text["hidden_size"]:
        raise ValueError("head_dim x num_attention_heads must equal hidden_size")
    return DeepseekOcrConfig(
        **values,
        image_token_id=raw.get("image_token_id", DeepseekOcrConfig.image_token_id),
        dtype=raw.get("dtype") or raw.get("torch_dtype") or text.get("dtype"),
    )


def _dense_layers(text: Mapping[str, Any]) -> int:
    """Leading dense layers; the decoder has dense layers first, mixture-of-experts after."""
    kinds = text.get("mlp_layer_types")
    if kinds is None:
        return int(text.get("first_k_dense_replace", 1))
    dense = next((index for index, kind in enumerate(kinds) if kind != "dense"), len(kinds))
    if any(kind != "sparse" for kind in kinds[dense:]):
        raise ValueError(
            f"mlp_layer_types {kinds}: only dense layers followed by sparse ones are implemented"
        )
    return dense


def decoder_sources(names: Iterable[str], config: DeepseekOcrConfig) -> dict[str, TensorSource]:
    """Decoder parameter name -> where it is among an OCR-2 checkpoint's tensor ``names``
    (vision tensors are left out; lm_head is the token table where the two are tied)."""
    sources: dict[str, TensorSource] = {}
    for name in names:
        if name == "lm_head.weight":
            sources[name] = TensorSource(name)
            continue
        match = _DECODER_NAME.match(name)
        if match is None:
            continue
        decoder_name = f"model.{match.group(1)}"
        stacked = _STACKED.match(decoder_name)
        if stacked is None:
            sources[decoder_name] = TensorSource(name)
            continue
        prefix, kind = stacked.groups()
        parts = ("gate", "up") if kind == "gate_up_proj" else ("all",)
        for expert in range(config.n_routed_experts):
            for part in parts:
                projection = "down" if part == "all" else part
                sources[f"{prefix}.{expert}.{projection}_proj.weight"] = TensorSource(name, expert, part)
    if (
        "lm_head.weight" not in sources
        and config.tie_word_embeddings
        and "model.embed_tokens.weight" in sources
    ):
        sources["lm_head.weight"] = sources["model.embed_tokens.weight"]
    return sources


def decoder_state_from_ocr2(
    state: Mapping[str, torch.Tensor], config: DeepseekOcrConfig
) -> dict[str, torch.Tensor]:
    """OCR-2's text weights (a state dict in either spelling) under the decoder's names."""
    return {name: source.take(state[source.name]) for name, source in decoder_sources(state, config).items()}


def meta_decoder(config: DeepseekOcrConfig) -> DeepseekOcrForConditionalGeneration:
    """The decoder's structure (no vision part) without memory."""
    with torch.device("meta"):
        return DeepseekOcrForConditionalGeneration(config, vision=False)


class _CheckpointReader:
    """Reads decoder weights from OCR-2's files by decoder name. A stacked expert tensor is read
    once and kept while its experts are taken (two at a time: gate_up and down alternate)."""

    def __init__(self, tensors: CheckpointTensors, sources: dict[str, TensorSource]):
        self.tensors, self.sources = tensors, sources
        self.stacked: dict[str, torch.Tensor] = {}

    def read(self, name: str) -> torch.Tensor:
        source = self.sources[name]
        if source.expert is None:
            return self.tensors.read(source.name)
        if source.name not in self.stacked:
            if len(self.stacked) >= 2:
                self.stacked.pop(next(iter(self.stacked)))
            self.stacked[source.name] = self.tensors.read(source.name)
        # A copy: a view would keep the whole stacked tensor alive.
        return source.take(self.stacked[source.name]).clone()


def load_ocr2_decoder(path: str | os.PathLike[str], plan: RuntimePlan) -> DeepseekOcrForConditionalGeneration:
    """DeepSeek-OCR-2's decoder (language model and lm_head, no vision part) from the checkpoint at
    ``path``, on the CPU as ``plan`` says (quant none or int4; bfloat16 exponent-coded where
    :func:`~.loading.codes_bfloat16` holds), with the CPU fast paths attached."""
    directory = Path(path)
    if plan.device != "cpu" or plan.quant not in ("none", "int4"):
        raise CheckpointError(
            f"DeepSeek-OCR-2's decoder runs in deepseek_ocr on the CPU only (quant none or int4), "
            f"not on {plan.device} with quant {plan.quant}"
        )
    config = _read_config(directory)
    tensors = CheckpointTensors(weight_files(directory))
    sources = decoder_sources(tensors.entries, config)
    model = meta_decoder(config)
    _check_decoder_tensors(directory, model, sources, tensors)
    _check_memory(model, plan, config)
    read = _CheckpointReader(tensors, sources)
    if plan.quant == "int4":
        convert_from_checkpoint(model, list(quantizable_linears(model, "int4")), quantize_linears_int4, read)
    elif codes_bfloat16(plan.device, plan.dtype, plan.quant, config):
        convert_from_checkpoint(model, codable_linears(model), code_linears, read)
    _read_remaining(model, read, plan.dtype)
    return_freed_memory()
    store_routers_in_float32(model)
    for fast_path in attach_fast_paths(model):
        logger.info("fast path: %s", fast_path)
    return model.eval()


def _read_config(directory: Path) -> DeepseekOcrConfig:
    config_file = directory / "config.json"
    try:
        raw = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{config_file}: unreadable ({error}); download the model again") from None
    if raw.get("model_type") != OCR2_MODEL_TYPE:
        raise CheckpointError(f"{config_file}: model_type {raw.get('model_type')!r} is not DeepSeek-OCR-2")
    try:
        return decoder_config(raw)
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{config_file}: text_config not computable by deepseek_ocr: {error}") from None


def _check_decoder_tensors(
    directory: Path, model: nn.Module, sources: dict[str, TensorSource], tensors: CheckpointTensors
) -> None:
    expected = dict(model.named_parameters())
    missing = sorted(set(expected) - set(sources))
    if missing:
        raise CheckpointError(
            f"{directory}: {len(missing)} decoder tensors missing (e.g. {missing[:3]}); download the model again"
        )
    for name, parameter in expected.items():
        source = sources[name]
        shape = list(tensors.entries[source.name][2]["shape"])
        if source.expert is not None:
            shape = shape[1:]
            if source.part != "all":
                shape[0] //= 2
        if shape != list(parameter.shape):
            raise CheckpointError(
                f"{directory}: tensor {source.name} has shape {shape}, config expects {list(parameter.shape)}"
            )


def _check_memory(model: nn.Module, plan: RuntimePlan, config: DeepseekOcrConfig) -> None:
    coded = codes_bfloat16(plan.device, plan.dtype, plan.quant, config)
    need = int(_weight_bytes(model, plan.dtype, plan.quant, coded) * _RUNTIME_HEADROOM)
    free = available_memory(plan.device)
    if need > free:
        hint = "try quant int4" if plan.quant == "none" else "free memory"
        raise CheckpointError(
            f"not enough memory: DeepSeek-OCR-2's decoder needs about {need / 1e9:.1f} GB "
            f"({plan.dtype_name}, quant {plan.quant}) but {free / 1e9:.1f} GB is free; {hint}"
        )


def _read_remaining(model: nn.Module, read: _CheckpointReader, dtype: torch.dtype) -> None:
    """Every parameter still on the meta device (all but the converted linears), read in ``dtype``."""
    for module_name, module in model.named_modules():
        for name, parameter in list(module.named_parameters(recurse=False)):
            if parameter.is_meta:
                full = f"{module_name}.{name}" if module_name else name
                tensor = read.read(full).to(dtype)
                module._parameters[name] = nn.Parameter(tensor, requires_grad=False)
    leftover = [name for name, tensor in model.named_buffers() if tensor.is_meta]
    if leftover:
        raise RuntimeError(f"buffers left unread: {leftover[:3]}")
