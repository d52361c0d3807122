"""The kernel's C sources on every CPU kind: each x86-64 variant this CPU runs, and AArch64
(cross-compiled, run under qemu-user), checked by a standalone C program against plain loops.

The Python suite exercises the variant it loads (``DEEPSEEK_OCR_CPU_VARIANT`` picks it; CI runs
the kernel tests once per variant); this covers what Python cannot load here.
"""

from __future__ import annotations

import platform
import shutil
import subprocess
from pathlib import Path

import pytest

from deepseek_ocr.cpu import library

CHECK = Path(__file__).parent / "kernels" / "products_check.c"
CROSS_COMPILER = "aarch64-linux-gnu-gcc"
AARCH64_SYSROOT = Path("/usr/aarch64-linux-gnu")
AARCH64_VARIANTS = {"neon": ("-march=armv8-a",), "portable": ("-march=armv8-a", "-DKERNEL_PORTABLE")}
EM_AARCH64 = 183  # the ELF header's e_machine for AArch64
VARIANT_NUMBERS = {"amx": 4, "avx512": 3, "avx2": 2, "neon": 1, "portable": 0}


def build(compiler: str, flags: tuple[str, ...], out: Path) -> None:
    sources = [*map(str, library.SOURCES), str(CHECK)]
    subprocess.run([compiler, "-O2", "-fopenmp", *flags, "-o", str(out), *sources, "-lm"], check=True, timeout=300)


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86-64 variants")
@pytest.mark.parametrize("variant", ["amx", "avx512", "avx2", "portable"])
def test_each_x86_variant_this_cpu_runs_computes_the_products(tmp_path, variant):
    if variant not in library.supported_variants():
        pytest.skip(f"this CPU cannot run the {variant} variant")
    program = tmp_path / "check"
    build("cc", library._TARGET_FLAGS[variant], program)
    result = subprocess.run([str(program)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"variant {VARIANT_NUMBERS[variant]}: ok"


@pytest.mark.parametrize("variant", AARCH64_VARIANTS)
def test_the_sources_build_for_aarch64_and_compute_the_products_there(tmp_path, variant):
    """x86 intrinsics stay behind their guards; under qemu-user the AArch64 build's products hold."""
    if shutil.which(CROSS_COMPILER) is None:
        pytest.skip(f"no {CROSS_COMPILER} (Debian: gcc-aarch64-linux-gnu libc6-dev-arm64-cross)")
    program = tmp_path / "check"
    build(CROSS_COMPILER, AARCH64_VARIANTS[variant], program)
    header = program.read_bytes()[:20]
    assert header[:4] == b"\x7fELF" and int.from_bytes(header[18:20], "little") == EM_AARCH64
    if shutil.which("qemu-aarch64") is None:
        pytest.skip("built for AArch64; qemu-user is not installed to run it")
    result = subprocess.run(
        ["qemu-aarch64", "-L", str(AARCH64_SYSROOT), str(program)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"variant {VARIANT_NUMBERS[variant]}: ok"
