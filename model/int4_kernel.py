"""The int4 product's C kernel (``kernels/int4_linear.c``): built once per machine, called through ctypes.

The kernel is compiled with ``-march=native`` by the machine's C compiler (``$CC``, else ``cc``)
into a per-user cache, keyed by the source and the CPU's feature flags, the first time an int4
model is used (about a second). It is plain C with OpenMP rather than a torch C++ extension:
without torch's headers it builds in a second instead of a minute, and ctypes' call costs
~1.5 us. Linking ``-fopenmp`` resolves to the ``libgomp.so.1`` torch has already loaded, so
the kernel shares torch's thread pool instead of starting a second one.

Where no compiler works, :func:`load` returns None; without a compiler or without AVX-512 VNNI,
:mod:`.quantization` repacks the weights for PyTorch's own int4 kernel (about half as fast).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import platformdirs
import torch

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).parent / "kernels" / "int4_linear.c"

#: Set to 0 to skip the kernel (int4 then runs on PyTorch's own int4 kernel).
ENV_SWITCH = "DEEPSEEK_OCR_INT4_KERNEL"

_FLAGS = ("-O3", "-march=native", "-fopenmp", "-fPIC", "-shared", "-fno-math-errno")


class Int4Kernel:
    """Typed entry points of the compiled library."""

    def __init__(self, library: ctypes.CDLL):
        self.library = library
        #: False where the CPU lacks AVX-512 VNNI: only the portable loops, and no fused decoding steps.
        self.vnni = bool(library.int4_has_vnni())
        pointer, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
        self._linear = library.int4_linear
        self._linear.restype = i32
        self._linear.argtypes = [pointer, i32, i64, i64, pointer, pointer, i64, i64, pointer, i32, i32, i32]
        self._linear_many = library.int4_linear_many
        self._linear_many.restype = i32
        self._linear_many.argtypes = [pointer, i32, i64, i32, i32, i32]
        self._moe_step = library.int4_moe_step
        self._moe_step.restype = i32
        self._moe_step.argtypes = [pointer, i32, i64, pointer, ctypes.c_float, pointer, i64, i64, i32, ctypes.c_float,
                                   pointer, i64, pointer, i64, pointer, i32]  # fmt: skip
        self._qkv_rotary = library.int4_qkv_rotary
        self._qkv_rotary.restype = i32
        self._qkv_rotary.argtypes = [pointer, i32, i64, pointer, ctypes.c_float, pointer, i64, i64,
                                     pointer, pointer, pointer, pointer, pointer, i32]  # fmt: skip
        self._attend_project = library.int4_attend_project
        self._attend_project.restype = i32
        self._attend_project.argtypes = [pointer, pointer, pointer, i32, i64, i64, i64, i64, i64, i64, i64,
                                         ctypes.c_float, pointer, pointer, i64, pointer, i32]  # fmt: skip
        self._dequantize = library.int4_dequantize
        self._dequantize.restype = None
        self._dequantize.argtypes = [pointer, pointer, i64, i64, i64, pointer, i32]

    def linear(
        self, rows: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, group_size: int, portable: bool = False
    ) -> torch.Tensor:
        """(M, K) float32 or bfloat16 rows -> (M, N) of the same dtype. ``portable`` skips the SIMD path."""
        m, k = rows.shape
        n = packed.shape[0]
        out = torch.empty(m, n, dtype=rows.dtype)
        is_bf16 = int(rows.dtype == torch.bfloat16)
        status = self._linear(
            rows.data_ptr(), is_bf16, m, k, packed.data_ptr(), scales.data_ptr(), n, group_size,
            out.data_ptr(), is_bf16, torch.get_num_threads(), int(portable),
        )  # fmt: skip
        if status:
            raise ValueError(f"int4 kernel refused a ({m}, {k}) x ({n}, {k}) product with groups of {group_size}")
        return out

    def linear_many(
        self, products: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], group_size: int
    ) -> list[torch.Tensor]:
        """[(x (1, K), packed (N, K/2), scales)] -> [(N,)], all in one parallel region; x all of one dtype."""
        dtype = products[0][0].dtype
        sizes = [packed.shape[0] for _, packed, _ in products]
        out = torch.empty(sum(sizes), dtype=dtype)
        address, step = out.data_ptr(), out.element_size()
        table: list[int] = []
        for (x, packed, scales), size in zip(products, sizes, strict=True):
            table += [x.data_ptr(), x.shape[-1], packed.data_ptr(), scales.data_ptr(), size, address]
            address += size * step
        table_tensor = torch.tensor(table, dtype=torch.int64)
        is_bf16 = int(dtype == torch.bfloat16)
        status = self._linear_many(
            table_tensor.data_ptr(), len(products), group_size, is_bf16, is_bf16, torch.get_num_threads()
        )
        if status:
            raise ValueError(f"int4 kernel refused {len(products)} products with groups of {group_size}")
        return list(out.split(sizes))

    def moe_step(
        self, x: torch.Tensor, norm: tuple[torch.Tensor, float], router: torch.Tensor, top_k: int, normalize: bool,
        scaling: float, stacks: list[torch.Tensor], shared: list[torch.Tensor] | None,
    ) -> torch.Tensor | None:  # fmt: skip
        """A MoE layer's step for one row x (H,): norm, router, chosen and shared experts -> (H,) float32.

        ``norm``: (weight, eps); ``router``: float32 (experts, H); ``stacks``: the routed experts'
        gate, up and down packed weights and scales, each stacked (experts, ...); ``shared``: the
        shared experts' six tensors or None. None off the VNNI path.
        """
        experts, intermediate = stacks[0].shape[:2]
        addresses = torch.tensor([t.data_ptr() for t in stacks + (shared or [])], dtype=torch.int64)
        shared_addresses = addresses.data_ptr() + len(stacks) * addresses.element_size() if shared else None
        out = torch.empty(x.shape[-1], dtype=torch.float32)
        status = self._moe_step(
            x.data_ptr(), int(x.dtype == torch.bfloat16), x.shape[-1], norm[0].data_ptr(), norm[1], router.data_ptr(),
            experts, top_k, int(normalize), scaling, addresses.data_ptr(), intermediate,
            shared_addresses, shared[0].shape[0] if shared else 0,
            out.data_ptr(), torch.get_num_threads(),
        )  # fmt: skip
        return None if status else out

    def qkv_rotary(
        self, x: torch.Tensor, norm: tuple[torch.Tensor, float] | None, weights: list[torch.Tensor], head_dim: int,
        cos: torch.Tensor, sin: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:  # fmt: skip
        """One row x (H,) -> q, k, v (width,) in x's dtype, rotary applied to q and k; None off the VNNI path.

        ``norm``: (weight, eps) of an RMSNorm applied to x first; ``weights``: packed weights and
        scales of q, k and v (six tensors); cos, sin: (head_dim,) in x's dtype.
        """
        width = weights[0].shape[0]
        q, k, v = (torch.empty(width, dtype=x.dtype) for _ in range(3))
        table = torch.tensor([tensor.data_ptr() for tensor in weights], dtype=torch.int64)
        norm_weight, eps = (norm[0].data_ptr(), norm[1]) if norm is not None else (None, 0.0)
        status = self._qkv_rotary(
            x.data_ptr(), int(x.dtype == torch.bfloat16), x.shape[-1], norm_weight, eps, table.data_ptr(), width,
            head_dim, cos.data_ptr(), sin.data_ptr(), q.data_ptr(), k.data_ptr(), v.data_ptr(), torch.get_num_threads(),
        )  # fmt: skip
        return None if status else (q, k, v)

    def attend_project(
        self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scaling: float,
        packed: torch.Tensor, scales: torch.Tensor,
    ) -> torch.Tensor | None:  # fmt: skip
        """softmax(q K^T scaling) V per head, then the output projection, for one query row.

        q (heads, head_dim); keys, values (heads, length, head_dim) with contiguous rows, all
        of q's dtype -> (N,) in q's dtype. None off the VNNI path.
        """
        heads, length, head_dim = keys.shape
        out = torch.empty(packed.shape[0], dtype=q.dtype)
        status = self._attend_project(
            q.data_ptr(), keys.data_ptr(), values.data_ptr(), int(q.dtype == torch.bfloat16), heads, head_dim, length,
            keys.stride(0), keys.stride(1), values.stride(0), values.stride(1), scaling,
            packed.data_ptr(), scales.data_ptr(), packed.shape[0], out.data_ptr(), torch.get_num_threads(),
        )  # fmt: skip
        return None if status else out

    def dequantize(self, packed: torch.Tensor, scales: torch.Tensor, group_size: int) -> torch.Tensor:
        """The (N, K) bfloat16 weight."""
        n, k = packed.shape[0], packed.shape[1] * 2
        weight = torch.empty(n, k, dtype=torch.bfloat16)
        self._dequantize(packed.data_ptr(), scales.data_ptr(), n, k, group_size, weight.data_ptr(), torch.get_num_threads())
        return weight


#: Why :func:`load` returned None, for ``docconv doctor``.
unavailable_reason: str | None = None


@functools.cache
def load() -> Int4Kernel | None:
    """The kernel for this machine, built on first use; None where it cannot be built or is switched off."""
    global unavailable_reason
    if os.environ.get(ENV_SWITCH, "1") == "0":
        unavailable_reason = f"switched off ({ENV_SWITCH}=0)"
        return None
    try:
        return Int4Kernel(ctypes.CDLL(str(_build())))
    except (OSError, subprocess.CalledProcessError) as error:
        detail = (getattr(error, "stderr", "") or str(error)).strip()[:300]
        unavailable_reason = f"could not be built ({detail})"
        logger.warning("int4 kernel %s; int4 uses PyTorch's slower int4 kernel", unavailable_reason)
        return None


def describe() -> str:
    """One line on the kernel for this machine (builds it if needed)."""
    kernel = load()
    if kernel is None:
        return f"not available: {unavailable_reason}; --quant int4 uses PyTorch's int4 kernel (about half as fast)"
    path = "AVX-512 VNNI" if kernel.vnni else "no AVX-512 VNNI: --quant int4 uses PyTorch's int4 kernel (about half as fast)"
    return f"built, {path} ({kernel.library._name})"


def _build() -> Path:
    compiler = os.environ.get("CC") or "cc"
    if shutil.which(compiler) is None:
        raise OSError(f"no C compiler ({compiler}) on PATH")
    source = SOURCE.read_bytes()
    key = hashlib.sha256(source + " ".join(_FLAGS).encode() + _cpu_signature().encode() + compiler.encode())
    library = _cache_dir() / f"int4_linear-{key.hexdigest()[:16]}.so"
    if library.exists():
        return library
    library.parent.mkdir(parents=True, exist_ok=True)
    # Compile beside the target and rename into place, so concurrent first runs never see half a file.
    with tempfile.TemporaryDirectory(dir=library.parent) as scratch:
        built = Path(scratch) / library.name
        subprocess.run(
            [compiler, *_FLAGS, "-o", str(built), str(SOURCE), "-lm"], check=True, capture_output=True, text=True
        )
        os.replace(built, library)
    return library


def _cache_dir() -> Path:
    return Path(os.environ.get("DEEPSEEK_OCR_KERNEL_CACHE") or platformdirs.user_cache_dir("deepseek_ocr")) / "kernels"


def _cpu_signature() -> str:
    """What -march=native depends on: the CPU's model and feature flags (a build is not portable)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.machine() + platform.processor()
    wanted = ("model name", "flags", "Features", "CPU part")
    return platform.machine() + "".join(sorted({line for line in lines if line.startswith(wanted)}))
