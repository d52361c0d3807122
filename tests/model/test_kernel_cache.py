"""The compiled kernel's cache: keyed by sources, compiler (and its version), flags and CPU; a
cached file that does not load is built again; $CC may be a command with arguments."""

from __future__ import annotations

import ctypes
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from deepseek_ocr.cpu import library

pytestmark = pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")


@pytest.fixture
def cache(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("DEEPSEEK_OCR_KERNEL_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "kernels"


def fake_compiler(directory: Path, version: str) -> Path:
    """A compiler wrapper that reports its own version and compiles with cc."""
    script = directory / "fakecc"
    script.write_text(f'#!/bin/sh\nif [ "$1" = --version ]; then echo "fakecc {version}"; exit 0; fi\nexec cc "$@"\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def test_a_corrupt_cached_library_is_built_again(cache):
    built = library.build("portable")
    assert built.parent == cache
    built.write_bytes(b"not a shared object")  # a truncated write, a full disk
    opened = library._open(built)
    assert library.CpuKernel(opened).variant == "portable"
    assert built.read_bytes()[:4] == b"\x7fELF"


def test_a_file_that_loads_but_is_not_the_kernel_is_built_again(cache, tmp_path):
    built = library.build("portable")
    stranger = tmp_path / "stranger.c"
    stranger.write_text("int something_else(void) { return 1; }\n")
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(built), str(stranger)], check=True)
    assert library.CpuKernel(library._open(built)).variant == "portable"


def test_a_compiler_with_arguments_builds(cache, monkeypatch):
    monkeypatch.setenv("CC", "env cc")  # as CC="ccache gcc" is written
    assert library._compiler() == ["env", "cc"]
    assert library.CpuKernel(ctypes.CDLL(str(library.build("portable")))).variant == "portable"


def test_a_missing_compiler_is_named(monkeypatch):
    monkeypatch.setenv("CC", "no-such-compiler --flag")
    with pytest.raises(OSError, match="no C compiler \\(no-such-compiler --flag\\)"):
        library._compiler()


def test_a_new_compiler_version_builds_a_new_library(cache, tmp_path, monkeypatch):
    built = []
    for version in ("1.0", "2.0"):  # the same $CC, upgraded in place
        monkeypatch.setenv("CC", str(fake_compiler(tmp_path, version)))
        library._compiler_version.cache_clear()
        built.append(library.build("portable"))
    library._compiler_version.cache_clear()
    assert built[0] != built[1] and all(path.is_file() for path in built)
