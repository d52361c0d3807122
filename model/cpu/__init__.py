"""CPU fast paths: docconv's C kernel, the weight formats it reads, and the module variants that use them.

The modeling files (``decoder.py``, ``sam.py``, ``clip.py``) are plain torch and the one
specification of what the model computes. This sub-package computes the same things faster on
a CPU, and the modeling files never call it: the loader attaches it, through one dispatch point
(:func:`.dispatch.attach_fast_paths`).

- :mod:`.library`: the C kernel (``kernels/``), built once per machine and called through ctypes.
- :mod:`.linear`, :mod:`.exponent_coding`, :mod:`.int4`: linears whose weights are in the
  kernel's formats (lossless exponent-coded bfloat16, int4), and the converters to them.
- :mod:`.decoder`, :mod:`.sam`: the CPU variants of the decoder's and SAM's modules.
- :mod:`.dispatch`: which variant each modeling class has, and the function that attaches them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn


class CpuVariant:
    """Mixed in before a modeling class to make its CPU variant.

    A variant adds no parameters or buffers (the checkpoint and ``state_dict`` stay the
    modeling class's) and overrides ``forward``, falling back to the modeling class's wherever
    its conditions do not hold, so either class computes the same outputs for a module.
    """

    @classmethod
    def applies(cls, module: nn.Module) -> str | None:
        """What this variant does for ``module`` (given its weights' formats, dtype and device and
        this machine's kernel), or None where it would only ever fall back."""
        raise NotImplementedError

    def prepare(self) -> None:
        """Set up what ``forward`` reads, once the module has this class; nothing by default."""
