"""docconv's CPU kernel (``kernels/cpu_decode.c``, ``kernels/cpu_attention.c``): built once per
machine, called through ctypes.

It multiplies activations by the two kernel weight formats (int4, :mod:`.int4`, and
exponent-coded bfloat16, :mod:`.exponent_coding`) and runs whole decoding steps of one token
on them; it also runs SAM's attention (:mod:`.sam`): float32 on the variant's vectors, and
bfloat16 where the CPU has AMX. Weights
reach it as descriptors: eight int64 naming the format, the shape and the addresses of the
weight's tensors (see ``Weight`` in the C source and
:meth:`KernelLinear.descriptor <deepseek_ocr.cpu.linear.KernelLinear.descriptor>`).

The kernel is compiled by the machine's C compiler (``$CC``, else ``cc``; a command with
arguments such as ``ccache gcc`` works) into a per-user cache, keyed by the sources, the
compiler's version, the variant's flags and the CPU's feature flags, the first time it is needed
(about a second). It comes in variants (:data:`VARIANTS`), one per instruction-set level, each
compiled for its own target: the best this CPU runs is taken, and ``DEEPSEEK_OCR_CPU_VARIANT``
caps it at a lower one (to test every variant a machine can run, or to step around a fault). A
cached library that does not load (a truncated file, say) is built again. It is plain C with OpenMP rather than a torch C++ extension: without
torch's headers it builds in a second instead of a minute, and ctypes' call costs ~1.5 us.
Linking ``-fopenmp`` resolves to the ``libgomp.so.1`` torch has already loaded, so the kernel
shares torch's thread pool instead of starting a second one.

Where no compiler works, :func:`load` returns None: int4 then runs on PyTorch's own int4 kernel,
bfloat16 weights stay uncoded and SAM's attention runs on torch's SDPA.
"""

from __future__ import annotations

import _ctypes
import ctypes
import functools
import hashlib
import logging
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

import platformdirs
import torch

logger = logging.getLogger(__name__)

#: Compiled together into one library: the decoding products and steps, and SAM's attention.
SOURCES = tuple(Path(__file__).parent / "kernels" / name for name in ("cpu_decode.c", "cpu_attention.c"))
_HEADERS = tuple(Path(__file__).parent / "kernels" / name for name in ("amx.h", "vectors.h"))

#: Set to 0 to do without the kernel (int4 then runs on PyTorch's int4 kernel, bfloat16 on torch's).
ENV_SWITCH = "DEEPSEEK_OCR_CPU_KERNEL"
#: Set to 0 to keep AMX off, as on CPUs without it: batched coded products then run on AVX512-BF16
#: and SAM's bfloat16 attention on torch's SDPA.
AMX_SWITCH = "DEEPSEEK_OCR_CPU_AMX"

#: Caps the variant (one of :data:`VARIANTS`): the kernel then uses nothing above it.
VARIANT_SWITCH = "DEEPSEEK_OCR_CPU_VARIANT"

#: The kernel's variants, best first. amx: AVX-512 with AMX tiles (batched coded products, SAM's
#: attention); avx512: AVX-512 (VNNI int4 and AVX512-BF16 coded products where the CPU has
#: them); avx2: AVX2 + FMA + F16C; neon: AArch64's Advanced SIMD; portable: plain C.
VARIANTS = ("amx", "avx512", "avx2", "neon", "portable")

_FLAGS = ("-O3", "-fopenmp", "-fPIC", "-shared", "-fno-math-errno")

#: Each variant's target flags (x86-64 ones on x86-64, neon on AArch64); portable also compiles
#: the vector paths out on a CPU whose baseline has vectors.
_TARGET_FLAGS = {
    "amx": ("-march=native",),
    "avx512": ("-march=native", "-mno-amx-tile", "-mno-amx-int8", "-mno-amx-bf16"),
    "avx2": ("-march=x86-64-v3", "-mtune=native"),
    "neon": ("-mcpu=native",),
    "portable": ("-DKERNEL_PORTABLE",),
}

#: Environment that holds torch to a variant's instruction sets too (its own kernels, oneDNN's and MKL's),
#: for measuring or testing on one machine what a CPU of that kind gets; the variants above AVX2
#: need nothing.
TORCH_LIMITS = {
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
    "portable": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2"},
}

#: What each x86-64 variant needs in /proc/cpuinfo's flags.
_X86_NEEDS = {
    "amx": {"avx512f", "avx512bw", "avx512_bf16", "amx_tile", "amx_bf16"},
    "avx512": {"avx512f", "avx512bw", "avx512vl"},
    "avx2": {"avx2", "fma", "f16c", "bmi2", "movbe"},
}

#: The vector instruction set each variant's products use where AVX-512's are not there.
_VECTOR_ISA = {"amx": "AVX2", "avx512": "AVX2", "avx2": "AVX2", "neon": "NEON"}

#: The vectors the float32 vision routines run on, per variant (they take the widest the build has).
_FLOAT32_ISA = {"amx": "AVX-512", "avx512": "AVX-512", "avx2": "AVX2", "neon": "NEON"}

#: kernel_variant()'s numbers.
_VARIANT_NUMBERS = {4: "amx", 3: "avx512", 2: "avx2", 1: "neon", 0: "portable"}

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
        self._bind("bias_gelu_f32", None, [_POINTER, _POINTER, _I64, _I64, _I32])
        self._bind("sam_attention_f32", _I32, [_POINTER, _I64, _I64, _I64, _I64, _I64, _I64, _POINTER, _POINTER,
                                               _POINTER, _F32, _POINTER, _I32])  # fmt: skip
        features = library.kernel_features()
        #: The instruction sets the library was built for (one of :data:`VARIANTS`).
        self.variant = _VARIANT_NUMBERS[library.kernel_variant()]
        #: int4 on vectors (AVX-512 VNNI or AVX2); without it int4 runs the portable loops
        #: (PyTorch's int4 kernel is faster then).
        self.int4_fast = bool(features & 1)
        #: Exponent-coded bfloat16 on vectors (AVX512-BF16 or AVX2); without it bfloat16 stays uncoded.
        self.coded_bf16 = bool(features & 2)
        #: A bfloat16 model's coded products on AVX512-BF16's dot product (else widened to float32).
        self.bf16_dot = bool(features & 8)
        #: The instruction set of the vector products: what ``docconv doctor`` names.
        self.int4_isa = "AVX-512 VNNI" if features & 16 else _VECTOR_ISA.get(self.variant, "")
        #: The vectors of the kernel's float32 vision routines (SAM's attention, its MLP's bias and
        #: GELU): every variant's but portable's, whose plain loops torch's vectorised ones outrun; else None.
        self.float32_isa = _FLOAT32_ISA.get(self.variant)
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

    def linear(
        self, rows: torch.Tensor, weight: torch.Tensor, out_features: int, portable: bool = False,
        out_dtype: torch.dtype | None = None,
    ) -> torch.Tensor:  # fmt: skip
        """(M, K) float32 or bfloat16 rows -> (M, N) in ``out_dtype`` (default: the rows' dtype).
        ``portable``: the plain C loops, whatever the CPU has."""
        out = torch.empty(rows.shape[0], out_features, dtype=out_dtype or rows.dtype)
        status = self._kernel_linear(
            rows.data_ptr(), int(rows.dtype == torch.bfloat16), rows.shape[0], weight.data_ptr(), out.data_ptr(),
            int(out.dtype == torch.bfloat16), torch.get_num_threads(), int(portable),
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
        """SAM's bfloat16 attention with decomposed relative positions over (b, h, w) maps, on AMX
        (where :attr:`amx_attention`); False if refused.

        ``qkv``: the qkv projection's contiguous (b, h, w, 3 * width) output; ``rel_h``, ``rel_w``:
        contiguous (b, heads, h, w, h) and (b, heads, h, w, w) bias terms; ``out``: (b, h, w,
        width), written. Scores are scaled by head_dim ** -0.5.
        """
        if not self.amx_attention or any(t.dtype != torch.bfloat16 or not t.is_contiguous() for t in (qkv, rel_h, rel_w, out)):
            return False
        b, h, w, width = out.shape
        head_dim = width // heads
        status = self._sam_attention(
            qkv.data_ptr(), b, h * w, heads, head_dim, rel_h.data_ptr(), rel_w.data_ptr(), h, w, head_dim**-0.5,
            out.data_ptr(), torch.get_num_threads(),
        )  # fmt: skip
        return status == 0

    def sam_attention_float32(
        self, qkv: torch.Tensor, heads: int, window: int, rel_h: torch.Tensor, rel_w: torch.Tensor,
        bias: torch.Tensor | None, out: torch.Tensor,
    ) -> bool:  # fmt: skip
        """SAM's float32 attention over (b, h, w) maps, on the variant's vectors (where
        :attr:`float32_isa`), relative-position terms and windows included; False if refused.

        ``qkv``: the qkv projection's contiguous (b, h, w, 3 * width) output; ``window``: 0 for
        attention over the whole map, else within window x window squares of the map padded to
        whole windows, a padded position's projections being ``bias`` (3 * width,; None: zeros);
        ``rel_h``, ``rel_w``: get_rel_pos's (size, size, head_dim) tables for the window's (or the
        map's) height and width; ``out``: (b, h, w, width), written. Scores are scaled by
        head_dim ** -0.5.
        """
        tensors = (qkv, rel_h, rel_w, out) if bias is None else (qkv, rel_h, rel_w, out, bias)
        if self.float32_isa is None or any(t.dtype != torch.float32 or not t.is_contiguous() for t in tensors):
            return False
        b, h, w, width = out.shape
        head_dim = width // heads
        status = self._sam_attention_f32(
            qkv.data_ptr(), b, h, w, heads, head_dim, window, rel_h.data_ptr(), rel_w.data_ptr(),
            bias.data_ptr() if bias is not None else None, head_dim**-0.5, out.data_ptr(), torch.get_num_threads(),
        )  # fmt: skip
        return status == 0

    def bias_gelu_(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """``x = F.gelu(x + bias)`` in place (the exact, erf GELU, to float32's precision) on a
        contiguous float32 (..., C) ``x`` and (C,) ``bias``, in one pass."""
        if x.dtype != torch.float32 or bias.dtype != torch.float32 or not (x.is_contiguous() and bias.is_contiguous()):
            raise ValueError("bias_gelu_ takes contiguous float32 tensors")
        if bias.shape != (x.shape[-1],):
            raise ValueError(f"bias of shape {tuple(bias.shape)} for rows of {x.shape[-1]}")
        self._bias_gelu_f32(x.data_ptr(), bias.data_ptr(), x.numel() // x.shape[-1], x.shape[-1], torch.get_num_threads())
        return x

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
        return CpuKernel(_open(build(chosen_variant())))
    except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired) as error:
        detail = (getattr(error, "stderr", "") or str(error)).strip()[:300]
        unavailable_reason = f"could not be built ({detail})"
        logger.warning("CPU kernel %s; int4 uses PyTorch's slower int4 kernel, bfloat16 stays uncoded", unavailable_reason)
        return None


def describe() -> str:
    """One line on the kernel for this machine (builds it if needed)."""
    kernel = load()
    if kernel is None:
        return (
            f"not available: {unavailable_reason}; int4 uses PyTorch's int4 kernel (about half as fast), "
            "bfloat16 runs uncoded on torch"
        )
    best = supported_variants()[0]
    why = f"capped by {VARIANT_SWITCH}; this CPU runs {best}" if kernel.variant != best else "the best this CPU runs"
    int4 = f"int4 on {kernel.int4_isa}" if kernel.int4_fast else "int4 on PyTorch's int4 kernel (no vector int4 path)"
    if not kernel.coded_bf16:
        bf16 = "bfloat16 uncoded on torch"
    elif kernel.bf16_dot:
        bf16 = "bfloat16 exponent-coded on AVX512-BF16" + (", batches on AMX" if kernel.amx_bf16 else "")
    else:
        bf16 = f"bfloat16 exponent-coded, widened to float32 on {_VECTOR_ISA[kernel.variant]}"
    sam = ["bfloat16 on AMX" if kernel.amx_attention else "", f"float32 on {kernel.float32_isa}" if kernel.float32_isa else ""]  # fmt: skip
    attention = f"; SAM attention {' and '.join(filter(None, sam))}" if any(sam) else ""
    return f"built, variant {kernel.variant} ({why}); {int4}; {bf16}{attention} ({kernel.library._name})"


def supported_variants() -> tuple[str, ...]:
    """The variants this CPU runs, best first (portable always)."""
    machine = platform.machine().lower()
    if machine in ("aarch64", "arm64"):
        return ("neon", "portable")
    if machine not in ("x86_64", "amd64"):
        return ("portable",)
    flags = _cpu_flags()
    return (*(variant for variant, needs in _X86_NEEDS.items() if needs <= flags), "portable")


def chosen_variant() -> str:
    """The best supported variant, or the one :data:`VARIANT_SWITCH` caps it at."""
    supported = supported_variants()
    requested = os.environ.get(VARIANT_SWITCH, "").strip().lower()
    if not requested:
        return supported[0]
    if requested not in VARIANTS:
        logger.warning("%s=%s is not one of %s; using %s", VARIANT_SWITCH, requested, ", ".join(VARIANTS), supported[0])
        return supported[0]
    below = VARIANTS[VARIANTS.index(requested) :]
    return next(variant for variant in below if variant in supported)


def build(variant: str) -> Path:
    """The library of ``variant`` for this machine, compiled if not cached (for tests and benchmarks:
    a variant above what the CPU runs builds but must not be called)."""
    compiler = _compiler()
    flags = (*_FLAGS, *_TARGET_FLAGS[variant])
    source = b"".join(path.read_bytes() for path in (*SOURCES, *_HEADERS))
    signature = [" ".join(compiler), _compiler_version(tuple(compiler)), " ".join(flags), _cpu_signature()]
    key = hashlib.sha256(source + "\n".join(signature).encode())
    library = _cache_dir() / f"{SOURCES[0].stem}-{variant}-{key.hexdigest()[:16]}.so"
    if library.exists():
        return library
    library.parent.mkdir(parents=True, exist_ok=True)
    # Compile beside the target and rename into place, so concurrent first runs never see half a file.
    with tempfile.TemporaryDirectory(dir=library.parent) as scratch:
        built = Path(scratch) / library.name
        subprocess.run(
            [*compiler, *flags, "-o", str(built), *map(str, SOURCES), "-lm"],
            check=True, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        os.replace(built, library)
    return library


def _open(library: Path) -> ctypes.CDLL:
    """Load a built library; one that does not load or lacks the kernel's entry points (a cached
    file truncated by a full disk, say) is removed and built again, once."""
    try:
        opened = ctypes.CDLL(str(library))
    except OSError as error:
        return _rebuild(library, error)
    if not hasattr(opened, "kernel_variant"):
        # The loader hands back a handle it still holds for the same path, so let go of this one
        # before the rebuilt file is opened under that path.
        _ctypes.dlclose(opened._handle)
        return _rebuild(library, "it is not the kernel")
    return opened


def _rebuild(library: Path, error: object) -> ctypes.CDLL:
    logger.warning("cached CPU kernel %s does not load (%s); building it again", library, error)
    library.unlink(missing_ok=True)
    variant = library.name.removeprefix(f"{SOURCES[0].stem}-").rsplit("-", 1)[0]
    return ctypes.CDLL(str(build(variant)))


def _compiler() -> list[str]:
    """$CC (a command, possibly with arguments: ``ccache gcc``), else ``cc``."""
    compiler = shlex.split(os.environ.get("CC") or "cc")
    if not compiler or shutil.which(compiler[0]) is None:
        raise OSError(f"no C compiler ({' '.join(compiler) or 'CC is empty'}) on PATH")
    return compiler


@functools.cache
def _compiler_version(compiler: tuple[str, ...]) -> str:
    """The compiler's own account of its version: a new compiler builds a new library."""
    result = subprocess.run([*compiler, "--version"], capture_output=True, text=True, timeout=60)
    return result.stdout.strip()


def _cache_dir() -> Path:
    return Path(os.environ.get("DEEPSEEK_OCR_KERNEL_CACHE") or platformdirs.user_cache_dir("deepseek_ocr")) / "kernels"


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.partition(":")[2].split())
    except OSError:
        pass
    return set()


def _cpu_signature() -> str:
    """What -march=native depends on: the CPU's model and feature flags (a build is not portable)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.machine() + platform.processor()
    wanted = ("model name", "flags", "Features", "CPU part")
    return platform.machine() + "".join(sorted({line for line in lines if line.startswith(wanted)}))
