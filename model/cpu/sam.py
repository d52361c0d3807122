"""SAM's CPU variants: oneDNN's fused linear for its bfloat16 linears, and its attention in docconv's kernel.

- :class:`CpuSamAttention`: the attention in docconv's kernel (head_dim 64, SAM-B's), adding the
  relative-position bias in cache instead of materialising it for torch's SDPA: float32 on the
  kernel variant's vectors (AVX2, AVX-512, NEON), bfloat16 on AMX tiles where the CPU has them;
  and a bfloat16 model's qkv and output projections through oneDNN's fused linear (bias fused).
- :class:`CpuSamMlp`: lin1 with its GELU fused, and lin2, through oneDNN's fused linear.

Each falls back to its modeling class's torch path where its conditions do not hold; the
loader attaches them (:mod:`.dispatch`).
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..sam import SamAttention, SamMlp, get_rel_pos, in_windows
from . import CpuVariant, library

logger = logging.getLogger(__name__)

#: The head size the kernel's attention is written for (SAM-B's: 768 / 12).
KERNEL_HEAD_DIM = 64

#: Set to 0 to keep SAM's bfloat16 linears off oneDNN's fused linear: they then run on torch's
#: linear (and GELU), as they do where this CPU or torch build refuses the fused op.
ONEDNN_LINEAR_SWITCH = "DEEPSEEK_OCR_ONEDNN_LINEAR"

#: oneDNN's fused linear: (input, weight, bias, post-op, post-op scalars, post-op algorithm).
FusedLinear = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, str, list, str], torch.Tensor]

#: Why :func:`onednn_linear` returned None, for the engine's ``-v`` line.
onednn_unavailable_reason: str | None = None


@functools.cache
def onednn_linear() -> FusedLinear | None:
    """oneDNN's fused linear where it runs bfloat16 on this CPU, else None; decided once, when a
    bfloat16 model is loaded (:meth:`CpuSamAttention.applies`) or at its first use.

    The op is private and CPU-dependent: without a bfloat16 inner-product kernel for the CPU
    (AVX2 without AVX-512, as an AMD Zen 3) oneDNN refuses it with "could not create a
    primitive descriptor for the inner product forward propagation primitive", so it is tried
    on a tiny input, in both forms :func:`linear` uses, before SAM relies on it.
    """
    global onednn_unavailable_reason
    if os.environ.get(ONEDNN_LINEAR_SWITCH, "1") == "0":
        onednn_unavailable_reason = f"switched off ({ONEDNN_LINEAR_SWITCH}=0)"
        return None
    try:
        fused = torch.ops.mkldnn._linear_pointwise if torch.backends.mkldnn.is_available() else None
    except (AttributeError, RuntimeError):  # a build without oneDNN's fused linear
        fused = None
    if fused is None:
        onednn_unavailable_reason = "not in this torch build"
        return None
    x, weight, bias = (torch.ones(shape, dtype=torch.bfloat16) for shape in ((2, 32), (16, 32), (16,)))
    try:
        with torch.inference_mode():
            fused(x, weight, bias, "none", [], "")
            fused(x, weight, bias, "gelu", [], "none")
    except RuntimeError as error:
        # The first sentence: oneDNN appends advice on its verbose mode, not about this CPU.
        detail = (
            str(error).strip().split(". ")[0].splitlines()[0] if str(error).strip() else type(error).__name__
        )
        onednn_unavailable_reason = f"refused on this CPU ({detail})"
        logger.info(
            "oneDNN's fused linear %s; SAM's bfloat16 linears run on torch", onednn_unavailable_reason
        )
        return None
    return fused


def linear(layer: nn.Linear, x: torch.Tensor, gelu: bool = False) -> torch.Tensor:
    """``layer(x)``, or ``F.gelu(layer(x))`` with ``gelu``; a contiguous bfloat16 input on the CPU goes
    through oneDNN's linear with the bias (and the GELU) fused.

    torch's CPU addmm first writes the broadcast bias into the output and then accumulates the
    product onto it; oneDNN adds the bias to the float32 sums, rounding the same way (the
    outputs are bit-identical, a test checks) in ~17% less time on SAM's shapes (4096 x 768 ->
    3072: 26.9 ms against 34.6). Non-contiguous inputs take another torch path with other
    rounding, so they keep ``layer(x)``. The fused GELU (erf, as ``F.gelu``) is applied to the
    float32 sums before the one rounding to bfloat16, where torch rounds the linear's output and
    then the GELU's: one rounding fewer (closer to float32, a test checks), and no pass over a
    25 MB intermediate per 1024 px MLP (a SAM pass 2.54 s against 2.76 s, alternated).

    Where oneDNN refuses the op (:func:`onednn_linear`), every input takes torch's path.
    """
    if (
        x.device.type == "cpu"
        and x.dtype == layer.weight.dtype == torch.bfloat16
        and layer.bias is not None
        and x.is_contiguous()
        and (fused := onednn_linear()) is not None
    ):
        try:
            return fused(x, layer.weight, layer.bias, "gelu" if gelu else "none", [], "none" if gelu else "")
        except RuntimeError as error:
            # The probe passed, but oneDNN also picks its kernel by shape and might refuse this one:
            # torch's path below computes the same linear (rounding the GELU's input once more).
            logger.debug(
                "oneDNN's fused linear refused a %s input (%s); torch's linear instead", tuple(x.shape), error
            )
    return F.gelu(layer(x)) if gelu else layer(x)


def _bfloat16_on_cpu(layer: nn.Linear) -> bool:
    return layer.weight.device.type == "cpu" and layer.weight.dtype == torch.bfloat16


class CpuSamAttention(CpuVariant, SamAttention):
    """SAM's attention in docconv's kernel and, in bfloat16, its linears on oneDNN, each where it runs."""

    @classmethod
    def applies(cls, module: nn.Module) -> str | None:
        weight = module.qkv.weight
        if weight.device.type != "cpu" or weight.dtype not in (torch.bfloat16, torch.float32):
            return None
        kernel = library.load()
        in_kernel = kernel is not None and module.head_dim == KERNEL_HEAD_DIM
        if weight.dtype == torch.float32:
            on = kernel.float32_isa if in_kernel else None
            return f"SAM attention in float32 on {on}" if on else None
        uses = [
            "attention on AMX" if in_kernel and kernel.amx_attention else "",
            "linears on oneDNN" if onednn_linear() is not None else "",
        ]
        return "SAM " + " and ".join(filter(None, uses)) if any(uses) else None

    def forward(self, x: torch.Tensor, window: int = 0) -> torch.Tensor:
        qkv = linear(self.qkv, x)  # (b, h, w, 3 * width): (3, heads, head_dim) per position
        out = self._attend_float32(qkv, window)
        if out is None:
            out = in_windows(qkv, window, self.qkv.bias, self.attend)
        return linear(self.proj, out)

    def _attend_float32(self, qkv: torch.Tensor, window: int) -> torch.Tensor | None:
        """(b, h, w, width) from the kernel's float32 attention, which takes the windows and the
        relative-position terms on itself, reading ``qkv`` in place; None where it does not run."""
        if qkv.dtype != torch.float32 or qkv.device.type != "cpu" or qkv.requires_grad:
            return None
        kernel = library.load()
        if kernel is None or kernel.float32_isa is None:
            return None
        b, h, w, width = qkv.shape[0], qkv.shape[1], qkv.shape[2], qkv.shape[3] // 3
        size_h, size_w = (window, window) if window else (h, w)
        rel_h = get_rel_pos(size_h, size_h, self.rel_pos_h).contiguous()  # (size_h, size_h, head_dim)
        rel_w = get_rel_pos(size_w, size_w, self.rel_pos_w).contiguous()
        out = qkv.new_empty(b, h, w, width)
        done = kernel.sam_attention_float32(qkv.contiguous(), self.num_heads, window, rel_h, rel_w, self.qkv.bias, out)
        return out if done else None

    def attend(self, qkv: torch.Tensor) -> torch.Tensor:
        rel_h, rel_w = self.relative_terms(qkv)
        out = self._attend_on_amx(qkv, rel_h, rel_w)
        return out if out is not None else self._attend(qkv, rel_h, rel_w)

    def _attend_on_amx(self, qkv: torch.Tensor, rel_h: torch.Tensor, rel_w: torch.Tensor) -> torch.Tensor | None:
        """(b, h, w, width) from the CPU kernel's attention (bfloat16 on AMX), or None where it does not run."""
        if not (qkv.dtype == torch.bfloat16 and qkv.device.type == "cpu" and not qkv.requires_grad):
            return None
        kernel = library.load()
        if kernel is None or not kernel.amx_attention:
            return None
        b, h, w, width = qkv.shape[0], qkv.shape[1], qkv.shape[2], qkv.shape[3] // 3
        out = qkv.new_empty(b, h, w, width)
        done = kernel.sam_attention(qkv.contiguous(), self.num_heads, rel_h.contiguous(), rel_w.contiguous(), out)
        return out if done else None


class CpuSamMlp(CpuVariant, SamMlp):
    """SAM's MLP with lin1's bias and GELU fused: on oneDNN's fused linear in bfloat16, in
    docconv's kernel after torch's bias-free product in float32 (one pass over lin1's output
    instead of addmm's bias write and F.gelu's pass)."""

    @classmethod
    def applies(cls, module: nn.Module) -> str | None:
        if _bfloat16_on_cpu(module.lin1) and onednn_linear() is not None:
            return "SAM MLP on oneDNN, GELU fused"
        if _float32_gelu_in_kernel(module.lin1):
            return f"SAM MLP's bias and GELU fused in float32 on {library.load().float32_isa}"
        return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32 and _float32_gelu_in_kernel(self.lin1) and not x.requires_grad:
            hidden = torch.matmul(x, self.lin1.weight.t())  # no bias: the kernel adds it with the GELU
            return self.lin2(library.load().bias_gelu_(hidden, self.lin1.bias))
        return linear(self.lin2, linear(self.lin1, x, gelu=True))


def _float32_gelu_in_kernel(layer: nn.Linear) -> bool:
    """Whether a float32 linear's bias and GELU can run in the kernel: on vectors (not the portable variant)."""
    if layer.weight.device.type != "cpu" or layer.weight.dtype != torch.float32 or layer.bias is None:
        return False
    kernel = library.load()
    return kernel is not None and kernel.float32_isa is not None
