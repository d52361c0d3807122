"""docconv's CPU kernel (``kernels/cpu_decode.c``, ``kernels/cpu_attention.c``): built once per
machine, called through ctypes.

It multiplies activations by the two kernel weight formats (int4, :mod:`.quantization`, and
exponent-coded bfloat16, :mod:`.exponent_coding`) and runs whole decoding steps of one token
on them; where the CPU has AMX it also runs SAM's bfloat16 attention (:mod:`.sam`). Weights
reach it as descriptors: eight int64 naming the format, the shape and the addresses of the
weight's tensors (see ``Weight`` in the C source and
:meth:`KernelLinear.descriptor <deepseek_ocr.kernel_linear.KernelLinear.descriptor>`).

The kernel is compiled with ``-march=native`` by the machine's C compiler (``$CC``, else ``cc``)
into a per-user cache, keyed by the sources and the CPU's feature flags, the first time it is
needed (about a second). It is plain C with OpenMP rather than a torch C++ extension: without
torch's headers it builds in a second instead of a minute, and ctypes' call costs ~1.5 us.
Linking ``-fopenmp`` resolves to the ``libgomp.so.1`` torch has already loaded, so the kernel
shares torch's thread pool instead of starting a second one.

Where no compiler works, :func:`load` returns None: int4 then runs on PyTorch's own int4 kernel,
bfloat16 weights stay uncoded and SAM's attention runs on torch's SDPA.
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

#: Compiled together into one library: the decoding products and steps, and SAM's attention.
SOURCES = tuple(Path(__file__).parent / "kernels" / name for name in ("cpu_decode.c", "cpu_attention.c"))
_HEADERS = (Path(__file__).parent / "kernels" / "amx.h",)

#: Set to 0 to do without the kernel (int4 then runs on PyTorch's int4 kernel, bfloat16 on torch's).
ENV_SWITCH = "DEEPSEEK_OCR_CPU_KERNEL"
#: Set to 0 to keep AMX off, as on CPUs without it: batched coded products then run on AVX512-BF16
#: and SAM's bfloat16 attention on torch's SDPA.
AMX_SWITCH = "DEEPSEEK_OCR_CPU_AMX"

_FLAGS = ("-O3", "-march=native", "-fopenmp", "-fPIC", "-shared", "-fno-math-errno")

#: Weight formats, as the C source numbers them.
FORMAT_INT4, FORMAT_BF16C = 1, 2

_POINTER, _I64, _I32, _F32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_float


class CpuKernel:
    """Typed entry points of the compiled library. Weights are descriptor tensors (8 int64)."""

    def __init__(self, library: ctypes.CDLL):
        self.library = library
        self._bind("kernel_use_amx", None, [_I32])
        self._bind("sam_attention", _I32, [_POINTER, _I64, _I64, _I64, _I64, _POINTER, _POINTER, _I64, _I64, _F32,
                                           _POINTER, _I32])  # fmt: skip
        features = library.kernel_features()
        #: int4's VNNI path; without it int4 runs the portable loops (PyTorch's int4 kernel is faster then).
        self.int4_vnni = bool(features & 1)
        #: The exponent-coded bfloat16 product (AVX512-BF16); without it bfloat16 stays uncoded.
        self.coded_bf16 = bool(features & 2)
        self.use_amx(os.environ.get(AMX_SWITCH, "1") != "0")
        self._bind("kernel_linear", _I32, [_POINTER, _I32, _I64, _POINTER, _POINTER, _I32, _I32, _I32])
        self._bind("kernel_linear_many", _I32, [_POINTER, _I32, _I32, _I32, _I32])
        self._bind("kernel_attention_step", _I32, [_POINTER, _I32, _I64, _I64, _POINTER, _F32, _POINTER, _I64,
                                                   _POINTER, _POINTER, _F32, _POINTER, _POINTER, _I64, _I64, _I32])  # fmt: skip
        self._bind("kernel_mlp_step", _I32, [_POINTER, _I32, _I64, _I64, _POINTER, _F32, _POINTER, _I64, _I64, _I32,
                                             _F32, _POINTER, _POINTER, _I32])  # fmt: skip
        self._bind("int4_dequantize", None, [_POINTER, _POINTER, _I64, _I64, _I64, _POINTER, _I32])
        self._bind("bf16c_decode", None, [_POINTER, _POINTER, _I32])
        self._bind("bf16c_plan", _I64, [_POINTER, _I64, _I64, _POINTER, _POINTER, _I32])
        self._bind("bf16c_encode", None, [_POINTER, _I64, _I64, _POINTER, _POINTER, _POINTER, _POINTER, _I32])

    def use_amx(self, on: bool) -> None:
        """Whether AMX tiles may be used: for coded products of several rows (batched decoding),
        instead of AVX512-BF16, and for SAM's bfloat16 attention, instead of torch's.
        ``amx_bf16`` and ``amx_attention`` then say whether they are (the CPU and the OS must allow it)."""
        self._kernel_use_amx(int(on))
        self.amx_bf16 = bool(self.library.kernel_features() & 4)
        self.amx_attention = on and bool(self.library.sam_attention_available())

    def _bind(self, name: str, restype, argtypes: list) -> None:
        function = getattr(self.library, name)
        function.restype, function.argtypes = restype, argtypes
        setattr(self, "_" + name, function)

    def linear(self, rows: torch.Tensor, weight: torch.Tensor, out_features: int, portable: bool = False) -> torch.Tensor:
        """(M, K) float32 or bfloat16 rows -> (M, N) of the same dtype. ``portable``: int4's plain C loops."""
        out = torch.empty(rows.shape[0], out_features, dtype=rows.dtype)
        is_bf16 = int(rows.dtype == torch.bfloat16)
        status = self._kernel_linear(
            rows.data_ptr(), is_bf16, rows.shape[0], weight.data_ptr(), out.data_ptr(), is_bf16,
            torch.get_num_threads(), int(portable),
        )  # fmt: skip
        if status:
            raise ValueError(f"CPU kernel refused a {tuple(rows.shape)} product with weight {weight.tolist()[:4]}")
        return out

    def linear_many(self, products: list[tuple[torch.Tensor, torch.Tensor, int]]) -> list[torch.Tensor] | None:
        """[(x (1, K), weight, N)] -> [(N,)], all in one parallel region; x all of one dtype. None if refused."""
        dtype = products[0][0].dtype
        sizes = [size for _, _, size in products]
        out = torch.empty(sum(sizes), dtype=dtype)
        address, step = out.data_ptr(), out.element_size()
        table: list[int] = []
        for (x, weight, _), size in zip(products, sizes, strict=True):
            table += [x.data_ptr(), weight.data_ptr(), address]
            address += size * step
        table_tensor = torch.tensor(table, dtype=torch.int64)
        is_bf16 = int(dtype == torch.bfloat16)
        status = self._kernel_linear_many(table_tensor.data_ptr(), len(products), is_bf16, is_bf16, torch.get_num_threads())
        return None if status else list(out.split(sizes))

    def attention_step(
        self, hidden: torch.Tensor, norm: tuple[torch.Tensor, float] | None, weights: torch.Tensor, head_dim: int,
        cos: torch.Tensor, sin: torch.Tensor, scaling: float, keys: torch.Tensor, values: torch.Tensor, length: int,
    ) -> bool:  # fmt: skip
        """A decoder layer's attention half for up to 16 sequences of one token each, in place on
        ``hidden`` (M, H) contiguous; False if refused.

        ``norm``: (weight, eps) of the input RMSNorm or None; ``weights``: the q, k, v and o
        descriptors (4, 8); cos, sin: (M, head_dim) contiguous in hidden's dtype; keys, values:
        the cache's contiguous (M, heads, capacity, head_dim) buffers in hidden's dtype holding
        ``length`` positions, with room for the one this token appends.
        """
        norm_weight, eps = (norm[0].data_ptr(), norm[1]) if norm is not None else (None, 0.0)
        status = self._kernel_attention_step(
            hidden.data_ptr(), int(hidden.dtype == torch.bfloat16), hidden.numel() // hidden.shape[-1],
            hidden.shape[-1], norm_weight, eps,
            weights.data_ptr(), head_dim, cos.data_ptr(), sin.data_ptr(), scaling, keys.data_ptr(), values.data_ptr(),
            keys.shape[-2], length, torch.get_num_threads(),
        )  # fmt: skip
        return status == 0

    def mlp_step(
        self, hidden: torch.Tensor, norm: tuple[torch.Tensor, float], router: tuple[torch.Tensor, int, bool, float] | None,
        routed: torch.Tensor | None, shared: torch.Tensor | None,
    ) -> bool:  # fmt: skip
        """A decoder layer's MLP half for up to 16 tokens (one per sequence), in place on
        ``hidden`` (M, H) contiguous; False if refused.

        ``norm``: (weight, eps) of the post-attention RMSNorm; ``router``: (float32 (experts, H)
        weight, top_k, renormalise, scaling) or None for a dense layer; ``routed``: every expert's
        gate, up and down descriptors (experts, 3, 8); ``shared``: the shared experts' (or the
        dense MLP's) (3, 8) or None.
        """
        weight, top_k, normalize, scaling = router if router is not None else (None, 0, False, 1.0)
        status = self._kernel_mlp_step(
            hidden.data_ptr(), int(hidden.dtype == torch.bfloat16), hidden.numel() // hidden.shape[-1], hidden.shape[-1],
            norm[0].data_ptr(), norm[1],
            weight.data_ptr() if weight is not None else None, weight.shape[0] if weight is not None else 0, top_k,
            int(normalize), scaling, routed.data_ptr() if routed is not None else None,
            shared.data_ptr() if shared is not None else None, torch.get_num_threads(),
        )  # fmt: skip
        return status == 0

    def sam_attention(
        self, qkv: torch.Tensor, heads: int, rel_h: torch.Tensor, rel_w: torch.Tensor, out: torch.Tensor
    ) -> bool:
        """SAM's attention with decomposed relative positions over (b, h, w) maps, bfloat16; False if refused.

        ``qkv``: the qkv projection's contiguous (b, h, w, 3 * width) output; ``rel_h``, ``rel_w``:
        contiguous (b, heads, h, w, h) and (b, heads, h, w, w) bias terms; ``out``: (b, h, w,
        width), written. Scores are scaled by head_dim ** -0.5.
        """
        if any(t.dtype != torch.bfloat16 or not t.is_contiguous() for t in (qkv, rel_h, rel_w, out)):
            return False
        b, h, w, width = out.shape
        head_dim = width // heads
        status = self._sam_attention(
            qkv.data_ptr(), b, h * w, heads, head_dim, rel_h.data_ptr(), rel_w.data_ptr(), h, w, head_dim**-0.5,
            out.data_ptr(), torch.get_num_threads(),
        )  # fmt: skip
        return status == 0

    def int4_dequantize(self, packed: torch.Tensor, scales: torch.Tensor, group_size: int) -> torch.Tensor:
        """The (N, K) bfloat16 weight of an int4 one."""
        n, k = packed.shape[0], packed.shape[1] * 2
        weight = torch.empty(n, k, dtype=torch.bfloat16)
        self._int4_dequantize(packed.data_ptr(), scales.data_ptr(), n, k, group_size, weight.data_ptr(), torch.get_num_threads())
        return weight

    def bf16c_decode(self, weight: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
        """The (N, K) bfloat16 weight an exponent-coded one codes, bit for bit."""
        decoded = torch.empty(shape, dtype=torch.bfloat16)
        self._bf16c_decode(weight.data_ptr(), decoded.data_ptr(), torch.get_num_threads())
        return decoded

    def bf16c_encode(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(N, K) bfloat16 -> codes, tables, exception_rows, exceptions (the layout in the C source)."""
        weight = weight.contiguous()
        n, k = weight.shape
        tables = torch.empty(n, 16, dtype=torch.uint8)
        exception_rows = torch.empty(n + 1, dtype=torch.int32)
        threads = torch.get_num_threads()
        count = self._bf16c_plan(weight.data_ptr(), n, k, tables.data_ptr(), exception_rows.data_ptr(), threads)
        if count < 0:
            raise ValueError(f"cannot exponent-code a weight of {k} input features (at most 65,535)")
        codes = torch.empty(n, 96 * ((k + 63) // 64), dtype=torch.uint8)
        exceptions = torch.empty(max(count, 1), 2, dtype=torch.int16)[:count]
        self._bf16c_encode(
            weight.data_ptr(), n, k, tables.data_ptr(), exception_rows.data_ptr(), codes.data_ptr(),
            exceptions.data_ptr(), threads,
        )  # fmt: skip
        return codes, tables, exception_rows, exceptions


#: Why :func:`load` returned None, for ``docconv doctor``.
unavailable_reason: str | None = None


@functools.cache
def load() -> CpuKernel | None:
    """The kernel for this machine, built on first use; None where it cannot be built or is switched off."""
    global unavailable_reason
    if os.environ.get(ENV_SWITCH, "1") == "0":
        unavailable_reason = f"switched off ({ENV_SWITCH}=0)"
        return None
    try:
        return CpuKernel(ctypes.CDLL(str(_build())))
    except (OSError, subprocess.CalledProcessError) as error:
        detail = (getattr(error, "stderr", "") or str(error)).strip()[:300]
        unavailable_reason = f"could not be built ({detail})"
        logger.warning("CPU kernel %s; int4 uses PyTorch's slower int4 kernel, bfloat16 stays uncoded", unavailable_reason)
        return None


def describe() -> str:
    """One line on the kernel for this machine (builds it if needed)."""
    kernel = load()
    if kernel is None:
        return (
            f"not available: {unavailable_reason}; --quant int4 uses PyTorch's int4 kernel (about half as fast), "
            "bfloat16 runs uncoded on torch"
        )
    int4 = "int4 on AVX-512 VNNI" if kernel.int4_vnni else "no AVX-512 VNNI: int4 on PyTorch's int4 kernel (about half as fast)"
    bf16 = (
        "bfloat16 exponent-coded on AVX512-BF16" + (", batches on AMX" if kernel.amx_bf16 else "")
        if kernel.coded_bf16
        else "no AVX512-BF16: bfloat16 uncoded on torch"
    )
    attention = "; SAM attention on AMX" if kernel.amx_attention else ""
    return f"built; {int4}; {bf16}{attention} ({kernel.library._name})"


def _build() -> Path:
    compiler = os.environ.get("CC") or "cc"
    if shutil.which(compiler) is None:
        raise OSError(f"no C compiler ({compiler}) on PATH")
    source = b"".join(path.read_bytes() for path in (*SOURCES, *_HEADERS))
    key = hashlib.sha256(source + " ".join(_FLAGS).encode() + _cpu_signature().encode() + compiler.encode())
    library = _cache_dir() / f"{SOURCES[0].stem}-{key.hexdigest()[:16]}.so"
    if library.exists():
        return library
    library.parent.mkdir(parents=True, exist_ok=True)
    # Compile beside the target and rename into place, so concurrent first runs never see half a file.
    with tempfile.TemporaryDirectory(dir=library.parent) as scratch:
        built = Path(scratch) / library.name
        subprocess.run(
            [compiler, *_FLAGS, "-o", str(built), *map(str, SOURCES), "-lm"], check=True, capture_output=True, text=True
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
