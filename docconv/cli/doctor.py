"""``docconv doctor``: what this machine offers and what a conversion run would use.

Every probe is defensive: a missing optional package, a driver error or a function another
module does not (yet) provide shows up as a row saying so, never as a traceback, because
doctor is what users run when something is broken.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import platform
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from docconv import __version__
from docconv.cli.listing import JsonOption, json_key, print_table
from docconv.cli.settings import Settings, config_path, settings_or_exit
from docconv.models.registry import DEEPSEEK_OCR2_FAMILY

UNKNOWN = "unknown"
Row = tuple[str, str]


def doctor(as_json: bool = False) -> None:
    """Print the environment report on stdout (exit 2 on a broken config).

    A table on a terminal; piped, a ``check<TAB>result`` line per check; with ``as_json`` one
    JSON object, each check's label as a key (:func:`~docconv.cli.listing.json_key`: ``would_use``).
    """
    settings = settings_or_exit()
    rows = list(report_rows(settings))
    print_table(
        ("check", "result"),
        rows,
        title="docconv doctor",
        show_header=False,
        as_json=as_json,
        json_data={json_key(check): result for check, result in rows},
    )


def report_rows(settings: Settings) -> Iterator[Row]:
    """The report as (check, result) rows, in display order."""
    yield "docconv", __version__
    yield "python", f"{platform.python_version()} ({sys.executable})"
    yield "platform", platform.platform()
    yield "torch", _version("torch")
    yield "transformers", _version("transformers")
    yield from _accelerator_rows()
    yield "flash-attn", _importable("flash_attn")
    yield "bitsandbytes", _importable("bitsandbytes")
    yield "cpu kernel", _cpu_kernel()
    yield "config file", _existing(config_path())
    yield from _cache_rows()
    yield from _plan_rows(settings)


def _cpu_kernel() -> str:
    try:
        from deepseek_ocr.cpu import library
    except Exception as error:  # noqa: BLE001 - a broken install raises anything; doctor reports it
        return f"not importable ({type(error).__name__}: {error})"
    return library.describe()


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _importable(module: str) -> str:
    try:
        importlib.import_module(module)
    except Exception as error:  # noqa: BLE001 - a broken install raises anything; doctor reports it
        return f"not importable ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})"
    return f"yes, {_version(module.replace('_', '-'))}"


def _existing(path: Path) -> str:
    return f"{path}" if path.is_file() else f"{path} (not created; defaults apply)"


def _accelerator_rows() -> Iterator[Row]:
    try:
        import torch
    except ImportError:
        yield "accelerators", "torch is not importable; docconv cannot run"
        return
    cuda = torch.cuda.is_available()
    yield "cuda", f"yes (CUDA {torch.version.cuda}, {torch.cuda.device_count()} device(s))" if cuda else "no"
    if cuda:
        yield from _gpu_rows(torch)
    yield "mps", "yes" if torch.backends.mps.is_available() else "no"
    yield "cpu capability", str(torch.backends.cpu.get_cpu_capability())
    yield "bfloat16", _bfloat16_support(torch, cuda)


def _gpu_rows(torch: Any) -> Iterator[Row]:
    for index in range(torch.cuda.device_count()):
        name = torch.cuda.get_device_name(index)
        try:
            free, total = torch.cuda.mem_get_info(index)
            memory = f"{free / 2**30:.1f} GiB free of {total / 2**30:.1f} GiB"
        except RuntimeError as error:
            memory = f"memory unknown ({error})"
        yield f"gpu cuda:{index}", f"{name}, {memory}"


def _bfloat16_support(torch: Any, cuda: bool) -> str:
    if cuda:
        return "supported on cuda" if torch.cuda.is_bf16_supported() else "not supported on this GPU"
    capability = str(torch.backends.cpu.get_cpu_capability())
    fast = capability in ("AVX512", "AVX512_BF16", "AMX")
    return "supported on cpu" + ("" if fast else f" but slow ({capability}: no native bf16 arithmetic)")


def _cache_rows() -> Iterator[Row]:
    store = _optional_module("docconv.models.store")
    yield "weights cache", _call(store, "cache_dir", str)
    yield "hugging face cache", _call(store, "huggingface_cache_dir", str)
    yield "cached models", _call(_optional_module("docconv.models.manage"), "list_models", _describe_cached)


def _describe_cached(listings: list[Any]) -> str:
    cached = [row for row in listings if getattr(row, "path", None)]
    if not cached:
        return "none (docconv models download)"
    return "; ".join(f"{row.id} ({_size(row.size_bytes)}, {row.path})" for row in cached)


def _size(size: int | None) -> str:
    return "size unknown" if size is None else f"{size / 1e9:.2f} GB"


def _optional_module(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except Exception:  # noqa: BLE001 - reported as "unknown" by the rows that need it
        return None


def _call(module: Any, function: str, describe: Callable[[Any], str]) -> str:
    target = getattr(module, function, None)
    if target is None:
        return UNKNOWN
    try:
        return describe(target())
    except Exception as error:  # noqa: BLE001 - e.g. a damaged cache index; show it, go on
        return f"{UNKNOWN} ({error})"


def _plan_rows(settings: Settings) -> Iterator[Row]:
    """What ``docconv`` with the current settings would run on."""
    engine = _optional_module("docconv.engines.deepseek")
    plan_runtime = getattr(engine, "plan_runtime", None)
    yield "model", settings.model
    family = _model_family(settings.model)
    if family is not None:
        yield "model family", f"{family} (from the checkpoint's config)"
    if plan_runtime is None:
        yield "would use", UNKNOWN
        return
    quant = settings.quant
    if family == DEEPSEEK_OCR2_FAMILY:
        config, note = _ocr2_decoder_config(settings.model)
    else:
        config, note = _model_config(engine, settings.model)
    try:
        plan = plan_runtime(settings.device, settings.dtype, quant, settings.attn, config)
    except Exception as error:  # noqa: BLE001 - e.g. --device cuda without CUDA: the user must see why
        yield "would use", f"cannot start: {error}"
        return
    if family == DEEPSEEK_OCR2_FAMILY and plan.device != "cpu" and quant == "auto":
        # Off the CPU, transformers runs OCR-2 whole and quant auto is full precision.
        plan = plan_runtime(settings.device, settings.dtype, "none", settings.attn, config)
    dtype = getattr(plan, "dtype_name", str(plan.dtype).removeprefix("torch."))
    yield "would use", f"device {plan.device}, dtype {dtype}, quant {plan.quant}, attention {plan.attn}"
    yield "because", "; ".join(part for part in (plan.reason, note) if part)


def _model_family(model: str) -> str | None:
    """The family of the model on disk (from its config.json), or None when it is not on disk."""
    directory = _local_model_dir(model)
    checkpoint = _optional_module("docconv.models.checkpoint")
    if directory is None or checkpoint is None:
        return None
    try:
        return checkpoint.model_family(directory)
    except Exception:  # noqa: BLE001 - an unreadable config gets its own row from _model_config
        return None


def _model_config(engine: Any, model: str) -> tuple[Any, str]:
    """The model's config when it is on disk (quant auto compares its size with free memory)."""
    directory = _local_model_dir(model)
    load_config = getattr(engine, "load_config", None)
    if directory is None or load_config is None:
        return None, "model not on disk: quant auto is re-checked against its size when it loads"
    try:
        return load_config(directory), ""
    except Exception as error:  # noqa: BLE001 - a broken checkpoint is worth a row, not a crash
        return None, f"model config unreadable: {error}"


def _ocr2_decoder_config(model: str) -> tuple[Any, str]:
    """OCR-2's decoder config when the checkpoint is on disk: on the CPU that decoder runs in
    deepseek_ocr, and quant auto weighs its size against free memory as for v1."""
    note = "DeepSeek-OCR-2 through transformers; on the CPU its decoder runs in deepseek_ocr (int4, coded bfloat16)"
    directory = _local_model_dir(model)
    ocr2 = _optional_module("deepseek_ocr.ocr2")
    if directory is None or ocr2 is None:
        return None, note
    try:
        raw = json.loads((directory / "config.json").read_text(encoding="utf-8"))
        return ocr2.decoder_config(raw), note
    except Exception as error:  # noqa: BLE001 - a broken checkpoint is worth a row, not a crash
        return None, f"{note}; model config unreadable: {error}"


def _local_model_dir(model: str) -> Path | None:
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    store = _optional_module("docconv.models.store")
    try:
        record = store.get_record(model)
    except Exception:  # noqa: BLE001 - not cached, or no weights module: nothing to read
        return None
    return record.directory if record.directory.is_dir() else None


def doctor_command(as_json: JsonOption = False) -> None:
    """Check torch, the GPU, flash-attn, bitsandbytes and the model cache; show what a run would use.

    Piped, one check per line: the check and its result, tab-separated.
    """
    doctor(as_json=as_json)
