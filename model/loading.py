"""Loading a checkpoint safely: runtime choice, memory estimate, clear errors, quantization.

``load_model`` checks everything that can be checked cheaply *before* the multi-GB read:
missing files, a foreign model_type, truncated or corrupt safetensors, tensors whose shape
does not match the config, and whether the weights fit in memory for the chosen
dtype/quantization. Each failure is a :class:`CheckpointError` whose message names the fix.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy
import psutil
import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from .configuration import DeepseekOcrConfig
from .cpu.dispatch import attach_fast_paths
from .cpu.exponent_coding import can_code, code_linears, exponent_coded_bytes
from .cpu.int4 import int4_group_size, quantize_linears_int4
from .cpu.linear import KernelLinear
from .decoder import MoeRouter
from .modeling import DeepseekOcrForConditionalGeneration

logger = logging.getLogger(__name__)

MODEL_TYPES = ("deepseek_vl_v2", "deepseek_ocr")

#: The vision tower and projector: read once per page (prefill), small next to the 2.4B
#: routed-expert parameters, and their convolutions cannot be quantized anyway.
VISION_MODULES = ["model.sam_model", "model.vision_model", "model.projector"]

#: Kept in full precision when quantizing with bitsandbytes; lm_head decides every token. The
#: router is a bare parameter (not nn.Linear), so it is never touched.
KEEP_UNQUANTIZED = [*VISION_MODULES, "lm_head"]

#: int4 also quantizes lm_head: its 129,280 x 1,280 bfloat16 weight alone is a quarter of the bytes
#: read per decoded token, and with groups of 64 it keeps greedy tokens (docs/benchmarks.md).
KEEP_UNQUANTIZED_INT4 = VISION_MODULES

#: Bytes per quantized parameter, scales included (int8: one fp32 scale per row of 1280;
#: nf4 with double quantization: 4 bits + an 8-bit absmax per 64 + second-level constants;
#: int4: 4 bits + a bfloat16 scale and zero per 64).
_QUANT_BYTES = {"8bit": 1.0 + 4 / 1280, "4bit": 0.5 + 1 / 64 + 4 / (64 * 256), "int4": 0.5 + 4 / 64}

#: Input features per block of bitsandbytes' CPU 4-bit kernels.
NF4_BLOCK = 64

#: Activations, KV cache and allocator slack on top of the weights.
_RUNTIME_HEADROOM = 1.15


class CheckpointError(RuntimeError):
    """The checkpoint cannot be loaded; the message says why and what to do."""


@dataclass(frozen=True)
class RuntimePlan:
    """Where and how the model runs."""

    device: str
    dtype: torch.dtype
    quant: str  # none | 8bit | 4bit (bitsandbytes) | int4 (our CPU kernel, cpu/int4.py)
    attn: str  # sdpa | flash_attention_2
    reason: str = ""

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")


def pick_device(requested: str = "auto") -> str:
    if requested != "auto":
        if requested.startswith("cuda") and not torch.cuda.is_available():
            raise CheckpointError(
                f"device {requested!r} requested but CUDA is not available; use device 'cpu'"
            )
        if requested == "mps" and not torch.backends.mps.is_available():
            raise CheckpointError("device 'mps' requested but MPS is not available; use device 'cpu'")
        return requested
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def pick_dtype(device: str, requested: str = "auto") -> torch.dtype:
    if requested != "auto":
        return getattr(torch, requested)
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device == "mps":
        return torch.float16
    # bfloat16 halves memory traffic; CPUs without native bf16 dot products run it slowly.
    return (
        torch.bfloat16
        if torch.backends.cpu.get_cpu_capability() in ("AVX512", "AVX512_BF16", "AMX")
        else torch.float32
    )


def pick_attention(device: str, requested: str = "auto") -> str:
    flash_ok = device.startswith("cuda") and _flash_attn_importable()
    if requested == "flash" and not flash_ok:
        raise CheckpointError(
            "attention 'flash' needs CUDA and the flash-attn package (pip install 'docconv[gpu]')"
        )
    if requested == "flash" or (requested == "auto" and flash_ok):
        return "flash_attention_2"
    return "sdpa"


def _flash_attn_importable() -> bool:
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return False
    return True


def available_memory(device: str) -> int:
    """Free bytes where the weights will live."""
    if device.startswith("cuda"):
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return free
    return psutil.virtual_memory().available


def estimate_weight_bytes(
    config: DeepseekOcrConfig, dtype: torch.dtype, quant: str = "none", coded: bool = False
) -> int:
    """Bytes of weights in memory for this dtype and quantization (no model is built); ``coded``:
    bfloat16 with the decoder and lm_head exponent-coded (:func:`codes_bfloat16`)."""
    return _weight_bytes(_meta_model(config), dtype, quant, coded)


def memory_needed(config: DeepseekOcrConfig, device: str, dtype: torch.dtype, quant: str) -> int:
    """Bytes to hold the weights as loading will store them, plus the runtime's headroom."""
    model = _meta_model(config)
    weights = _weight_bytes(model, dtype, quant, coded=False)
    if not codes_bfloat16(device, dtype, quant, config):
        return int(weights * _RUNTIME_HEADROOM)
    # Activations and caches do not shrink with the coding: the headroom stays the uncoded one's.
    return int(_weight_bytes(model, dtype, quant, coded=True) + weights * (_RUNTIME_HEADROOM - 1))


def _meta_model(config: DeepseekOcrConfig) -> nn.Module:
    """The model's structure without memory: names, shapes and module types."""
    with torch.device("meta"):
        return DeepseekOcrForConditionalGeneration(config)


def _weight_bytes(model: nn.Module, dtype: torch.dtype, quant: str, coded: bool) -> int:
    element = torch.finfo(dtype).bits // 8
    total = sum(p.numel() for p in model.parameters())
    if coded:
        linears = [model.get_submodule(name) for name in codable_linears(model)]
        uncoded = total - sum(m.weight.numel() for m in linears)
        return int(uncoded * element + sum(exponent_coded_bytes(m.out_features, m.in_features) for m in linears))
    quantized = (
        sum(m.weight.numel() for m in quantizable_linears(model, quant).values()) if quant != "none" else 0
    )
    per_quantized = _QUANT_BYTES.get(quant, element)
    return int((total - quantized) * element + quantized * per_quantized)


def codes_bfloat16(device: str, dtype: torch.dtype, quant: str, config: DeepseekOcrConfig | None = None) -> bool:
    """Whether loading exponent-codes the decoder's weights: unquantized, on a CPU whose kernel
    has a coded product, for a bfloat16 model, or for a float32 one whose checkpoint stores
    bfloat16 (the coded weights are the checkpoint's exactly; the product widens them to float32,
    so nothing is rounded that a float32 load would not round)."""
    if device != "cpu" or quant != "none" or not can_code():
        return False
    return dtype == torch.bfloat16 or (dtype == torch.float32 and config is not None and stores_bfloat16(config))


def stores_bfloat16(config: DeepseekOcrConfig) -> bool:
    """Whether the checkpoint's weights are bfloat16 (its config's ``torch_dtype``)."""
    stored = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    return str(stored).removeprefix("torch.") == "bfloat16"


def codable_linears(model: nn.Module) -> list[str]:
    """The nn.Linear layers exponent coding replaces: every one outside the vision tower."""
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and not any(name.startswith(prefix) for prefix in VISION_MODULES)
    ]


def quantizable_linears(model: nn.Module, quant: str) -> dict[str, nn.Linear]:
    """The nn.Linear layers the quantizer replaces: the decoder's (and, for int4, lm_head).

    bitsandbytes' CPU 4-bit kernels work on blocks of 64 input features and int4 on groups of
    32 or 64; a layer whose shape does not fit (only in tiny test configs) stays unquantized.
    """
    keep = KEEP_UNQUANTIZED_INT4 if quant == "int4" else KEEP_UNQUANTIZED
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear)
        and not any(name.startswith(prefix) for prefix in keep)
        and not (quant == "4bit" and module.in_features % NF4_BLOCK)
        and not (quant == "int4" and int4_group_size(module) is None)
    }


def plan_runtime(
    device: str = "auto",
    dtype: str = "auto",
    quant: str = "auto",
    attn: str = "auto",
    config: DeepseekOcrConfig | None = None,
) -> RuntimePlan:
    """Resolve every ``auto``. Quant ``auto`` = full precision when the weights fit in free memory,
    else 4-bit: bitsandbytes nf4 on a GPU, int4 on the CPU."""
    chosen_device = pick_device(device)
    chosen_dtype = pick_dtype(chosen_device, dtype)
    chosen_quant, reason = quant, "requested"
    if quant == "int4" and chosen_device != "cpu":
        raise CheckpointError(
            f"quant int4 runs on the CPU only; on {chosen_device} use quant 4bit (bitsandbytes nf4)"
        )
    if quant == "auto":
        chosen_quant, reason = "none", "full precision fits"
        if config is not None and chosen_device != "mps":  # MPS shares memory it cannot report
            need = memory_needed(config, chosen_device, chosen_dtype, "none")
            if need > available_memory(chosen_device):
                chosen_quant, reason = (
                    "int4" if chosen_device == "cpu" else "4bit",
                    f"{need / 1e9:.1f} GB needed in {chosen_dtype} exceeds free memory on {chosen_device}",
                )
    return RuntimePlan(chosen_device, chosen_dtype, chosen_quant, pick_attention(chosen_device, attn), reason)


def load_config(path: Path) -> DeepseekOcrConfig:
    config_file = path / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{path}: no config.json; is this a DeepSeek-OCR checkpoint directory?")
    try:
        raw = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{config_file}: unreadable JSON ({error}); re-download the model") from None
    if raw.get("model_type") not in MODEL_TYPES:
        raise CheckpointError(
            f"{config_file}: model_type {raw.get('model_type')!r} is not DeepSeek-OCR "
            f"(expected one of {', '.join(MODEL_TYPES)}); pass a DeepSeek-OCR checkpoint"
        )
    try:
        config = DeepseekOcrConfig.from_dict(raw)
        # A setting this model does not compute (MLA, grouped routing, ...) would load and read
        # pages wrongly: refused here, before any weight is read.
        config.validate_architecture()
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{config_file}: invalid configuration: {error}") from None
    return config


def weight_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        files = [path / shard for shard in shards]
    else:
        files = sorted(path.glob("*.safetensors"))
    missing = [f.name for f in files if not f.is_file()]
    if not files or missing:
        what = ", ".join(missing) if missing else "*.safetensors"
        raise CheckpointError(f"{path}: missing weight file(s) {what}; download the model again")
    return files


def check_tensors(path: Path, config: DeepseekOcrConfig) -> None:
    """Every tensor readable, none missing or unexpected, every shape as the config says."""
    expected = {name: tuple(p.shape) for name, p in _meta_model(config).named_parameters()}
    found: dict[str, tuple[int, ...]] = {}
    for file in weight_files(path):
        try:
            with safe_open(file, framework="pt") as handle:
                for name in handle.keys():  # noqa: SIM118 - safe_open handles are not iterable
                    found[name] = tuple(handle.get_slice(name).get_shape())
        except (SafetensorError, OSError) as error:
            raise CheckpointError(
                f"{file}: corrupt or truncated safetensors ({error}); download the model again"
            ) from None
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    if missing or unexpected:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise CheckpointError(
            f"{path}: checkpoint does not match its config ({len(missing)} missing, {len(unexpected)} unexpected "
            f"tensors, e.g. {detail}); use the official DeepSeek-OCR files"
        )
    for name, shape in expected.items():
        if found[name] != shape:
            raise CheckpointError(
                f"{path}: tensor {name} has shape {list(found[name])}, config expects {list(shape)}"
            )


def check_memory(config: DeepseekOcrConfig, plan: RuntimePlan) -> None:
    need = memory_needed(config, plan.device, plan.dtype, plan.quant)
    free = available_memory(plan.device)
    if need > free:
        smallest = "int4" if plan.device == "cpu" else "4bit"
        suggestion = f"try quant {smallest}" if plan.quant not in ("4bit", "int4") else "free memory or use a machine with more"
        raise CheckpointError(
            f"not enough memory on {plan.device}: the model needs about {need / 1e9:.1f} GB "
            f"({plan.dtype_name}, quant {plan.quant}) but {free / 1e9:.1f} GB is free; {suggestion}"
        )


def quantization_config(plan: RuntimePlan, config: DeepseekOcrConfig):
    if plan.quant in ("none", "int4"):
        return None
    from transformers import BitsAndBytesConfig

    model = _meta_model(config)
    quantized = quantizable_linears(model, plan.quant)
    keep = KEEP_UNQUANTIZED + [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and name not in quantized
    ]
    if plan.quant == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=keep)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=plan.dtype,
        llm_int8_skip_modules=keep,
    )


def load_model(path: str | os.PathLike[str], plan: RuntimePlan) -> DeepseekOcrForConditionalGeneration:
    """Validate the checkpoint at ``path`` and load it as ``plan`` says; raises :class:`CheckpointError`."""
    directory = Path(path)
    if not directory.is_dir():
        raise CheckpointError(
            f"{directory}: not a directory; pass a checkpoint directory"
        )
    config = load_config(directory)
    check_tensors(directory, config)
    check_memory(config, plan)
    quantization = quantization_config(plan, config)
    coded = codes_bfloat16(plan.device, plan.dtype, plan.quant, config)
    # A float32 model whose decoder is coded or int4 is loaded as the checkpoint's bfloat16 (mapped,
    # no copy), its decoder converted from the file, and only the rest widened to float32: a
    # full float32 copy of the model would need twice the memory it ends up in.
    widen_later = plan.dtype == torch.float32 and stores_bfloat16(config) and (coded or plan.quant == "int4")
    model = DeepseekOcrForConditionalGeneration.from_pretrained(
        directory,
        config=config,
        dtype=torch.bfloat16 if widen_later else plan.dtype,
        attn_implementation=plan.attn,
        quantization_config=quantization,
        device_map=plan.device if quantization is not None else None,
    )
    if quantization is None:
        model.to(plan.device)
    if plan.device == "cpu":
        tensors = CheckpointTensors(weight_files(directory))
        if plan.quant == "int4":
            quantize_from_checkpoint(model, tensors)
        if coded:
            code_from_checkpoint(model, tensors)
        if widen_later:
            widen_outside_kernel_linears(model, plan.dtype)
        if plan.quant == "4bit":
            repack_bitsandbytes_for_cpu(model)
        read_mapped_weights_into_memory(model, tensors, KEPT_MAPPED if plan.quant == "4bit" else ())
        return_freed_memory()
    store_routers_in_float32(model)
    # The modules' CPU variants are chosen now that every weight has its final format, dtype and device.
    for fast_path in attach_fast_paths(model):
        logger.info("fast path: %s", fast_path)
    return model.eval()


def widen_outside_kernel_linears(model: nn.Module, dtype: torch.dtype) -> None:
    """Cast every floating-point tensor not held by a kernel linear (whose formats stay as they
    are) to ``dtype``, module by module, handing the freed memory back as it goes."""
    for index, module in enumerate(model.modules()):
        if isinstance(module, KernelLinear):
            continue
        for tensor in [*module.parameters(recurse=False), *module.buffers(recurse=False)]:
            if tensor.is_floating_point() and tensor.dtype != dtype:
                tensor.data = tensor.data.to(dtype)
        if index % 256 == 0:
            return_freed_memory()
    return_freed_memory()


def store_routers_in_float32(model: nn.Module) -> None:
    """Routers compute in float32 (as the reference does); holding their 64 x 1,280 weights in
    float32 (exact from bfloat16, 0.3 MB each) saves converting them at every token."""
    for module in model.modules():
        if isinstance(module, MoeRouter):
            module.weight.data = module.weight.data.float()


def quantize_from_checkpoint(model: nn.Module, tensors: CheckpointTensors) -> None:
    """int4-quantize the decoder linears and lm_head, reading each float weight from the file."""
    convert_from_checkpoint(model, list(quantizable_linears(model, "int4")), quantize_linears_int4, tensors)


def code_from_checkpoint(model: nn.Module, tensors: CheckpointTensors) -> None:
    """Exponent-code the bfloat16 decoder linears and lm_head (lossless, 3/4 of the bytes; see
    :mod:`.cpu.exponent_coding`), reading each weight from the file; the vision tower stays as it is."""
    convert_from_checkpoint(model, codable_linears(model), code_linears, tensors)


def convert_from_checkpoint(
    model: nn.Module, names: list[str], convert: Callable, tensors: CheckpointTensors, modules_per_step: int = 64
) -> None:
    """``convert(model, names, read_weight)`` a few dozen modules at a time. The float temporaries
    of thousands of small conversions fragment the heap; returning freed memory every few dozen
    modules keeps the load's peak near the final size."""
    for start in range(0, len(names), modules_per_step):
        convert(model, names[start : start + modules_per_step], tensors.read)
        return_freed_memory()


def repack_bitsandbytes_for_cpu(model: nn.Module, modules_per_step: int = 64) -> None:
    """Have bitsandbytes repack its 4-bit weights for the CPU kernel now, layer by layer.

    bitsandbytes does it lazily in each layer's first forward, through int32 temporaries; on
    the first page that left ~0.9 GB of fragmented heap resident. One dummy row through each
    layer at load time, handing freed memory back as it goes, does the same work up front.
    """
    from bitsandbytes.nn import Linear4bit

    layers = [module for module in model.modules() if isinstance(module, Linear4bit)]
    with torch.inference_mode():
        for index, layer in enumerate(layers, start=1):
            layer(torch.zeros(1, layer.in_features, dtype=layer.compute_dtype or torch.bfloat16))
            if index % modules_per_step == 0:
                return_freed_memory()


def return_freed_memory() -> None:
    """Hand heap freed while loading (bf16 tensors quantized and dropped) back to the OS.

    glibc keeps freed blocks in its arenas; after a quantized load that is hundreds of MB of
    resident memory nothing uses. A no-op where glibc is not the allocator.
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class CheckpointTensors:
    """Reads checkpoint tensors into private memory with plain file reads, or maps one alone.

    safetensors and from_pretrained only read a tensor by mapping its whole file, and pages of
    a mapped file are reclaimable cache: under memory pressure (or a host's proactive reclaim)
    rarely used experts are dropped and read back from disk in the middle of decoding, at disk
    speed. The safetensors header (8-byte length + JSON) is parsed here for that reason.
    """

    def __init__(self, files: list[Path]):
        self.entries: dict[str, tuple[Path, int, dict]] = {}
        for file in files:
            with open(file, "rb") as raw:
                header_length = int.from_bytes(raw.read(8), "little")
                for name, entry in json.loads(raw.read(header_length)).items():
                    if name != "__metadata__":
                        self.entries[name] = (file, 8 + header_length, entry)

    def dtype(self, name: str) -> torch.dtype | None:
        return _SAFETENSORS_DTYPES.get(self.entries[name][2]["dtype"]) if name in self.entries else None

    def read(self, name: str) -> torch.Tensor:
        file, data_start, entry = self.entries[name]
        tensor = torch.empty(entry["shape"], dtype=_SAFETENSORS_DTYPES[entry["dtype"]])
        with open(file, "rb") as raw:
            raw.seek(data_start + entry["data_offsets"][0])
            raw.readinto(memoryview(tensor.view(-1).view(torch.uint8).numpy()))
        return tensor

    def map(self, name: str) -> torch.Tensor:
        """The tensor as its own copy-on-write mapping of the file: pages become resident when read."""
        file, data_start, entry = self.entries[name]
        begin, end = entry["data_offsets"]
        raw = numpy.memmap(file, dtype=numpy.uint8, mode="c", offset=data_start + begin, shape=(end - begin,))
        return torch.from_numpy(raw).view(_SAFETENSORS_DTYPES[entry["dtype"]]).view(entry["shape"])


#: Kept memory-mapped under nf4, the smallest setting: decoding looks up one row per token, so
#: only the rows a page uses become resident (a few MB instead of 331 MB). The price is a disk
#: read (1-8 ms measured here) for each token whose row the host has reclaimed from its page
#: cache, ~2 ms a step on random tokens: the faster settings keep the table in memory.
KEPT_MAPPED = ("model.embed_tokens.weight",)


def read_mapped_weights_into_memory(model: nn.Module, tensors: CheckpointTensors, keep_mapped: tuple[str, ...]) -> None:
    """Give every weight still backed by from_pretrained's mapping of the checkpoint private
    memory (see :class:`CheckpointTensors`); those named in ``keep_mapped`` get mappings of their own.

    Once nothing refers to from_pretrained's mapping it is unmapped, with the pages loading
    touched. Tensors from_pretrained already copied (dtype conversion, quantization) are left alone.
    """
    for name, param in model.named_parameters():
        if type(param) is not nn.Parameter or param.dtype != tensors.dtype(name):
            continue
        param.data = tensors.map(name) if name in keep_mapped else tensors.read(name)


_SAFETENSORS_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}
