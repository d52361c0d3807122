"""``docconv doctor`` on this (CPU-only) machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from deepseek_ocr.cpu import library
from docconv.cli.doctor import report_rows
from docconv.cli.settings import KEYS, env_var, load_settings


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Empty config and weight cache; no DOCCONV_<KEY> settings from the caller."""
    monkeypatch.setenv("DOCCONV_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("DOCCONV_CACHE", str(tmp_path / "cache"))
    for key in KEYS:
        monkeypatch.delenv(env_var(key), raising=False)
    return tmp_path


def rows() -> dict[str, str]:
    return dict(report_rows(load_settings()))


def test_report_names_versions_accelerators_and_the_cache(isolated: Path) -> None:
    report = rows()
    assert torch.__version__.startswith(report["torch"].split("+")[0])
    assert report["cuda"].startswith("yes" if torch.cuda.is_available() else "no")
    assert report["weights cache"] == str(isolated / "cache")
    assert report["cached models"].startswith("none")
    assert "bitsandbytes" in report and "flash-attn" in report
    # gcc is on this machine kind, so the kernel builds; which paths depends on the CPU and the variant.
    flags, kernel, variant = Path("/proc/cpuinfo").read_text(), report["cpu kernel"], library.chosen_variant()
    assert kernel.startswith(f"built, variant {variant} (")
    avx512 = variant in ("amx", "avx512")
    assert ("int4 on AVX-512 VNNI" in kernel) == ("avx512_vnni" in flags and avx512)
    assert ("bfloat16 exponent-coded on AVX512-BF16" in kernel) == ("avx512_bf16" in flags and avx512)
    assert ("exponent-coded" in kernel) == (variant != "portable")
    assert report["config file"].endswith("(not created; defaults apply)")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU decision")
def test_cpu_machine_would_run_on_cpu_and_says_which_dtype(isolated: Path) -> None:
    report = rows()
    assert report["would use"].startswith("device cpu, dtype ")
    dtype = (
        "bfloat16"
        if torch.backends.cpu.get_cpu_capability() in ("AVX512", "AVX512_BF16", "AMX")
        else "float32"
    )
    assert f"dtype {dtype}" in report["would use"]
    assert "quant none" in report["would use"]
    assert "model not on disk" in report["because"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_impossible_device_is_reported_not_raised(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCCONV_DEVICE", "cuda:0")
    assert rows()["would use"].startswith("cannot start: device 'cuda:0' requested but CUDA is not available")


def test_cached_model_is_listed_and_its_config_read(
    isolated: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from docconv.models.manage import import_model

    import_model(tiny_model_dir, as_id="test/tiny-ocr")
    monkeypatch.setenv("DOCCONV_MODEL", "test/tiny-ocr")
    report = rows()
    assert "test/tiny-ocr" in report["cached models"]
    assert report["model"] == "test/tiny-ocr"
    assert "model not on disk" not in report["because"]


def doctor_process(*args: str) -> subprocess.CompletedProcess[str]:
    """``docconv doctor`` with stdout piped, at the default width."""
    env = {key: value for key, value in os.environ.items() if key not in ("COLUMNS", "LINES")}
    return subprocess.run(
        [sys.executable, "-m", "docconv", "doctor", *args], capture_output=True, text=True, env=env, timeout=120
    )


def test_doctor_piped_prints_one_check_per_line(isolated: Path) -> None:
    done = doctor_process()
    assert done.returncode == 0, done.stderr
    lines = [line.split("\t") for line in done.stdout.splitlines()]
    assert all(len(fields) == 2 for fields in lines), done.stdout
    report = dict(lines)
    assert [check for check, _ in lines] == list(rows())
    assert report["weights cache"] == str(isolated / "cache")
    assert report["would use"].startswith("device cpu" if not torch.cuda.is_available() else "device cuda")


def test_doctor_json_is_one_object_with_stable_keys(isolated: Path) -> None:
    done = doctor_process("--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert {"docconv", "torch", "cuda", "flash_attn", "cpu_kernel", "weights_cache", "would_use"} <= set(report)
    assert report["weights_cache"] == str(isolated / "cache")
    assert report["config_file"].endswith("(not created; defaults apply)")


def test_doctor_with_a_broken_config_is_one_line_and_exit_2(isolated: Path) -> None:
    (isolated / "config").mkdir()
    (isolated / "config" / "config.toml").write_text('attn = "fast"\n')
    env = {**os.environ, "COLUMNS": "200"}
    done = subprocess.run(
        [sys.executable, "-m", "docconv", "doctor"], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 2
    assert done.stderr.strip().endswith("config.toml: attn: expected one of auto, sdpa, flash, got 'fast'")
    assert "Traceback" not in done.stderr
