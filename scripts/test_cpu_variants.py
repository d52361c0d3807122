"""Run the CPU-kernel-dependent tests once for every kernel variant below the best this CPU runs.

The suite itself runs on the best variant (AMX, AVX-512, AVX2, ... as the CPU allows). Each
lower one is then forced with ``DEEPSEEK_OCR_CPU_VARIANT``, and torch is held to the matching
instruction sets too (``ATEN_CPU_CAPABILITY``, ``ONEDNN_MAX_CPU_ISA``, ``MKL_ENABLE_INSTRUCTIONS``), so that one machine
tests what an AVX2-only laptop or a CPU without AVX gets, bfloat16 refusals by oneDNN included.

    python scripts/test_cpu_variants.py [extra pytest arguments]

Exits with the first non-zero pytest status.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

#: The tests whose paths depend on the kernel variant or on torch's CPU capabilities.
TESTS = [
    "tests/model/test_int4.py",
    "tests/model/test_exponent_coding.py",
    "tests/model/test_kernel_steps.py",
    "tests/model/test_sam_attention.py",
    "tests/model/test_quantization.py",
    "tests/model/test_model.py",
    "tests/model/test_loading.py",
    "tests/model/test_parity.py",
    "tests/model/test_dispatch.py",
]

def main(arguments: list[str]) -> int:
    from deepseek_ocr.cpu import library

    variants = library.supported_variants()[1:]
    print(f"kernel variants below this CPU's best: {', '.join(variants) or 'none'}", flush=True)
    for variant in variants:
        environment = {**os.environ, library.VARIANT_SWITCH: variant, **library.TORCH_LIMITS.get(variant, {})}
        print(f"\n=== variant {variant} ===", flush=True)
        status = subprocess.run([sys.executable, "-m", "pytest", "-q", *TESTS, *arguments], cwd=REPO, env=environment)
        if status.returncode:
            return status.returncode
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
