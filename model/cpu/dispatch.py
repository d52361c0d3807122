"""The one place that chooses a loaded model's CPU fast paths.

:data:`CPU_VARIANTS` maps each modeling class that has a CPU variant to it, as transformers'
``ALL_ATTENTION_FUNCTIONS`` maps an attention implementation's name to its function. A variant
(:class:`~deepseek_ocr.cpu.CpuVariant`) subclasses its modeling class, adds no parameters and
overrides ``forward``, falling back to the modeling class's wherever its conditions do not hold.
:func:`attach_fast_paths` asks each variant whether it applies to a module, given the module's
weights (kernel format, dtype, device) and this machine (whether the kernel built, its variant,
AMX, whether oneDNN runs bfloat16), and gives the module that class where it does. The loader
calls it once the weights are in place (:func:`~deepseek_ocr.loading.load_model`).
"""

from __future__ import annotations

from torch import nn

from ..decoder import DecoderAttention, DecoderLayer, MoeMlp, SwiGluMlp
from ..sam import SamAttention, SamMlp
from . import CpuVariant
from .decoder import CpuDecoderAttention, CpuDecoderLayer, CpuMoeMlp, CpuSwiGluMlp, GemvLinear
from .sam import CpuSamAttention, CpuSamMlp

#: Modeling class -> its CPU variant.
CPU_VARIANTS: dict[type[nn.Module], type[CpuVariant]] = {
    nn.Linear: GemvLinear,
    DecoderAttention: CpuDecoderAttention,
    SwiGluMlp: CpuSwiGluMlp,
    MoeMlp: CpuMoeMlp,
    DecoderLayer: CpuDecoderLayer,
    SamAttention: CpuSamAttention,
    SamMlp: CpuSamMlp,
}

#: A module's class (modeling class or variant) -> its modeling class: attaching again (after
#: ``.to()``, say) decides afresh for a module that already has its variant.
_MODELING_CLASS = {**{base: base for base in CPU_VARIANTS}, **{variant: base for base, variant in CPU_VARIANTS.items()}}


def attach_fast_paths(model: nn.Module) -> list[str]:
    """Give each module of ``model`` the CPU variant that applies to it; returns what was
    attached, one line per kind with how many modules have it (empty where nothing applies,
    as on a GPU)."""
    one_row = _decoding_linears(model)
    attached: dict[str, int] = {}
    for module in model.modules():
        base = _MODELING_CLASS.get(type(module))
        # A module whose forward an accelerate hook has replaced on the instance would never
        # call its class's: it keeps its modeling class.
        if base is None or "forward" in vars(module):
            continue
        variant = CPU_VARIANTS[base]
        # Only the linears a decoding step feeds one row each gain from GEMV; the vision
        # tower's keep torch's product (and its rounding) whatever their input.
        what = variant.applies(module) if base is not nn.Linear or id(module) in one_row else None
        module.__class__ = variant if what is not None else base
        if what is not None:
            module.prepare()
            attached[what] = attached.get(what, 0) + 1
    return [f"{what} ({count} modules)" if count > 1 else what for what, count in attached.items()]


def _decoding_linears(model: nn.Module) -> set[int]:
    """ids of the linears of the decoder layers and of the output head."""
    layers = [module for module in model.modules() if isinstance(module, DecoderLayer)]
    found = {id(module) for layer in layers for module in layer.modules()}
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None:
        found.add(id(head))
    return found
