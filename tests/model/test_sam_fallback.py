"""SAM's bfloat16 linears on a CPU where oneDNN refuses its fused linear (AVX2 without AVX-512, as
an AMD Zen 3): the probe catches the refusal and the portable torch path reads the page."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from deepseek_ocr.cpu import sam
from docconv.cli import app
from docconv.run import pipeline

from ..helpers import engine_args, make_image

#: What oneDNN says on a CPU without a bfloat16 inner-product kernel (seen on a Zen 3).
REFUSAL = (
    "could not create a primitive descriptor for the inner product forward propagation primitive. "
    "Run workload with environment variable ONEDNN_VERBOSE=all to get additional diagnostic information."
)
#: The engine options the end-to-end runs use: bfloat16 weights, and int4 (SAM stays bfloat16).
ENGINE_CHOICES = {"bfloat16": ["--dtype", "bfloat16", "--quant", "none"], "int4": ["--quant", "int4"]}

runner = CliRunner()
#: The probe itself: a test may replace ``sam.onednn_linear``, and teardown runs before that is undone.
PROBE = sam.onednn_linear


@pytest.fixture(autouse=True)
def fresh_probe(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test probes anew, and the tests after it probe the real op again; engines loaded here
    (some with the op refused) are not handed to later tests, which load their own and log it."""
    for name in [name for name in os.environ if name.startswith("DOCCONV_")]:
        monkeypatch.delenv(name)
    monkeypatch.setattr(pipeline, "_ENGINES", {})
    monkeypatch.delenv(sam.ONEDNN_LINEAR_SWITCH, raising=False)
    PROBE.cache_clear()
    yield
    PROBE.cache_clear()


class FusedOpSpy:
    """Stands in for ``torch.ops.mkldnn._linear_pointwise``: counts calls, refuses as oneDNN does
    (every call, or only inputs wider than the probe's) or passes them to the real op."""

    def __init__(self, refuse: str = "never") -> None:
        self.real = torch.ops.mkldnn._linear_pointwise
        self.refuse = refuse
        self.calls = 0

    def __call__(self, x: torch.Tensor, *args: object) -> torch.Tensor:
        self.calls += 1
        if self.refuse == "always" or (self.refuse == "wide" and x.shape[-1] > 32):
            raise RuntimeError(REFUSAL)
        return self.real(x, *args)


def install(monkeypatch: pytest.MonkeyPatch, refuse: str = "never") -> FusedOpSpy:
    if sam.onednn_linear() is None:
        pytest.skip(f"oneDNN's fused linear is not used on this machine: {sam.onednn_unavailable_reason}")
    sam.onednn_linear.cache_clear()
    spy = FusedOpSpy(refuse)
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", spy)
    return spy


def torch_linear(layer: torch.nn.Linear, x: torch.Tensor, gelu: bool) -> torch.Tensor:
    return torch.nn.functional.gelu(layer(x)) if gelu else layer(x)


def bfloat16_layer_and_input() -> tuple[torch.nn.Linear, torch.Tensor]:
    torch.manual_seed(0)
    return torch.nn.Linear(96, 384).to(torch.bfloat16), torch.randn(2, 14, 14, 96).to(torch.bfloat16)


def test_the_probe_accepts_the_op_where_onednn_runs_it(monkeypatch: pytest.MonkeyPatch) -> None:
    spy = install(monkeypatch)
    assert sam.onednn_linear() is spy
    assert sam.onednn_linear() is spy and spy.calls == 2  # probed once (both forms), then cached


def test_a_refusal_at_probe_time_is_caught_and_remembered(monkeypatch: pytest.MonkeyPatch) -> None:
    spy = install(monkeypatch, refuse="always")
    assert sam.onednn_linear() is None
    assert sam.onednn_unavailable_reason == (
        "refused on this CPU (could not create a primitive descriptor for the inner product forward "
        "propagation primitive)"
    )
    layer, x = bfloat16_layer_and_input()
    with torch.inference_mode():
        for gelu in (False, True):
            assert torch.equal(sam.linear(layer, x, gelu=gelu), torch_linear(layer, x, gelu))
    assert spy.calls == 1  # the probe's call, and no linear tried the op again


def test_the_switch_keeps_the_op_off_without_probing(monkeypatch: pytest.MonkeyPatch) -> None:
    spy = install(monkeypatch)
    monkeypatch.setenv(sam.ONEDNN_LINEAR_SWITCH, "0")
    layer, x = bfloat16_layer_and_input()
    with torch.inference_mode():
        assert torch.equal(sam.linear(layer, x, gelu=True), torch_linear(layer, x, True))
    assert spy.calls == 0
    assert sam.onednn_unavailable_reason == "switched off (DEEPSEEK_OCR_ONEDNN_LINEAR=0)"


def test_a_shape_refused_after_the_probe_passed_takes_torchs_path(monkeypatch: pytest.MonkeyPatch) -> None:
    spy = install(monkeypatch, refuse="wide")  # the probe's 32-wide inputs pass, SAM's 96-wide do not
    assert sam.onednn_linear() is spy
    layer, x = bfloat16_layer_and_input()
    with torch.inference_mode():
        for gelu in (False, True):
            assert torch.equal(sam.linear(layer, x, gelu=gelu), torch_linear(layer, x, gelu))
    assert spy.calls == 2 + 2  # the probe, then each linear tried it once


def read_page(tmp_path: Path, model_dir: Path, engine: str, *extra: str) -> tuple[str, str]:
    """A page read end to end by the CLI: (the page's raw model text, stderr)."""
    image = tmp_path / "page.png"
    if not image.exists():
        make_image(image)
    out = tmp_path / f"page-{len(list(tmp_path.glob('*.json')))}.json"
    result = runner.invoke(
        app,
        [str(image), "-o", str(out), "--mode", "tiny", *ENGINE_CHOICES[engine], *extra]
        + engine_args(model_dir, max_tokens=16),
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.stderr
    assert "Traceback" not in result.stderr
    (page,) = json.loads(out.read_text())["pages"]
    assert page["text_tokens"] > 0
    return page["raw"], result.stderr


@pytest.mark.parametrize("engine", list(ENGINE_CHOICES))
@pytest.mark.parametrize("how", ["probe reports refused", "op raises at probe time", "switch"])
def test_a_page_reads_where_onednn_refuses_bfloat16(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, engine: str, how: str
) -> None:
    spy = install(monkeypatch)
    fast, _ = read_page(tmp_path, tiny_model_dir, engine)
    assert spy.calls > 2  # the fast path ran beyond the probe
    sam.onednn_linear.cache_clear()
    spy.calls = 0
    if how == "probe reports refused":
        monkeypatch.setattr(sam, "onednn_linear", lambda: None)
        monkeypatch.setattr(sam, "onednn_unavailable_reason", "refused on this CPU (as a test says)")
    elif how == "op raises at probe time":
        spy.refuse = "always"
    else:
        monkeypatch.setenv(sam.ONEDNN_LINEAR_SWITCH, "0")
    # A fresh engine, so that -v shows the line its loading logs.
    monkeypatch.setattr(pipeline, "_ENGINES", {})
    portable, stderr = read_page(tmp_path, tiny_model_dir, engine, "-v")
    assert spy.calls == (1 if how == "op raises at probe time" else 0)
    assert "SAM's bfloat16 linears on torch" in stderr
    # torch rounds the GELU's input once more than the fused op; on this page the tiny
    # checkpoint's greedy tokens do not move for it.
    assert portable == fast


@pytest.mark.parametrize("engine", list(ENGINE_CHOICES))
def test_the_cli_reads_a_page_with_onednn_held_to_avx2(
    tmp_path: Path, tiny_model_dir: Path, engine: str
) -> None:
    """The real refusal: oneDNN held to AVX2 (no bfloat16 inner product, as on a Zen 3) used to
    end ``docconv --dtype bfloat16`` and ``--quant int4`` in a 400-line traceback."""
    image = make_image(tmp_path / "page.png")
    environment = {key: value for key, value in os.environ.items() if not key.startswith("DOCCONV_")}
    environment.update(ONEDNN_MAX_CPU_ISA="AVX2", DOCCONV_CONFIG_DIR=str(tmp_path / "config"))
    result = subprocess.run(
        [sys.executable, "-m", "docconv", str(image), "--mode", "tiny", "--format", "json", "-v"]
        + ENGINE_CHOICES[engine]
        + engine_args(tiny_model_dir, max_tokens=16),
        capture_output=True,
        text=True,
        env=environment,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert json.loads(result.stdout)["pages"][0]["text_tokens"] > 0
    if platform.machine() in ("x86_64", "AMD64"):
        assert "SAM's bfloat16 linears on torch: oneDNN's fused linear refused on this CPU" in result.stderr
