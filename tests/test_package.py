"""The ``deepseek_ocr`` package's surface: lazy top level, torch-free model facts."""

from __future__ import annotations

import subprocess
import sys

import deepseek_ocr

TORCH_FREE = ("deepseek_ocr", "deepseek_ocr.modes", "deepseek_ocr.prompts", "deepseek_ocr.generation_settings")


def test_the_model_facts_import_without_torch() -> None:
    imports = "; ".join(f"import {module}" for module in TORCH_FREE)
    check = f"{imports}; import sys; print(sorted({{'torch', 'transformers'}} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_every_public_name_resolves_from_its_module() -> None:
    for name in deepseek_ocr.__all__:
        value = getattr(deepseek_ocr, name)
        assert value is not None
    assert "DeepseekOcrProcessor" in dir(deepseek_ocr)


def test_submodules_still_import_by_name() -> None:
    from deepseek_ocr import loading
    from deepseek_ocr.cpu import library

    assert loading.load_model is deepseek_ocr.load_model
    assert callable(library.describe)
