"""The engine options every command that reads pages shares (``convert``, ``eval``), defined once.

Each is an ``Annotated`` type a command's signature uses as is; ``None`` means "not given", so
:func:`docconv.cli.settings.settings_or_exit` can layer it over the config file and the
``DOCCONV_*`` environment. The ``[default: ...]`` in their help comes from the built-in settings,
which take it from where each value is defined.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from deepseek_ocr.modes import DEFAULT_MAX_TILES, DEFAULT_MIN_TILES
from docconv.cli.exit_codes import ExitCode
from docconv.cli.settings import DEFAULTS, Settings, env_var
from docconv.engines.base import EngineOptions

#: Help panel of these options.
ENGINE = "Engine"


def default_of(key: str, shown: str | None = None) -> str:
    """``  [default: X]`` for a settings key, X as the user would type it (``shown`` overrides)."""
    value = getattr(DEFAULTS, key)
    text = shown if shown is not None else f"{value:g}" if isinstance(value, float) else str(value)
    return f"  [default: {text}]"


ModelOption = Annotated[
    str | None,
    typer.Option(
        "--model",
        metavar="ID|PATH",
        help=f"Hub id or local checkpoint directory.  [env: {env_var('model')}; default: {DEFAULTS.model}]",
        rich_help_panel=ENGINE,
        show_default=False,
    ),
]
EngineKindOption = Annotated[
    str | None,
    typer.Option(
        "--engine",
        help="native (docconv's own engines: CPU, CUDA, MPS; the model's config picks DeepSeek-OCR or "
        "-OCR-2) or vllm (GPU; docconv[vllm] in its own environment, gundam mode only)." + default_of("engine"),
        rich_help_panel=ENGINE,
        show_default=False,
    ),
]
DeviceOption = Annotated[
    str | None,
    typer.Option(
        "--device",
        help="auto, cpu, cuda, cuda:N or mps." + default_of("device"),
        rich_help_panel=ENGINE,
        show_default=False,
    ),
]
QuantOption = Annotated[
    str | None,
    typer.Option(
        "--quant",
        help="auto, none, 8bit, 4bit (bitsandbytes) or int4 (CPU)." + default_of("quant"),
        rich_help_panel=ENGINE,
        show_default=False,
    ),
]
AttnOption = Annotated[
    str | None,
    typer.Option(
        "--attn", help="auto, sdpa or flash." + default_of("attn"), rich_help_panel=ENGINE, show_default=False
    ),
]
OfflineOption = Annotated[
    bool,
    typer.Option(
        "--offline",
        help=f"Never download weights: use cached ones or fail with exit code {int(ExitCode.UNAVAILABLE)}.",
        rich_help_panel=ENGINE,
    ),
]
DtypeOption = Annotated[
    str | None,
    typer.Option(
        "--dtype",
        help="auto, bfloat16, float16 or float32." + default_of("dtype"),
        rich_help_panel=ENGINE,
        show_default=False,
    ),
]
MaxTilesOption = Annotated[
    int | None,
    typer.Option(
        "--max-tiles",
        min=DEFAULT_MIN_TILES,
        max=DEFAULT_MAX_TILES,
        help="Most tiles per page in the gundam modes." + default_of("max_tiles"),
        rich_help_panel=ENGINE,
        show_default=False,
    ),
]
BatchSizeOption = Annotated[
    int | None,
    typer.Option(
        "--batch-size",
        min=1,
        help="Pages decoded together." + default_of("batch_size", "1 on CPU, on CUDA what free memory holds"),
        rich_help_panel=ENGINE,
        show_default=False,
    ),
]
MaxTokensOption = Annotated[
    int | None,
    typer.Option(
        "--max-tokens",
        min=1,
        help="Token limit per page." + default_of("max_tokens"),
        rich_help_panel=ENGINE,
        show_default=False,
    ),
]
NgramOption = Annotated[
    int | None,
    typer.Option(
        "--ngram",
        min=0,
        help="Repetition guard: n-gram size (0 = off)." + default_of("ngram"),
        rich_help_panel=ENGINE,
        show_default=False,
    ),
]
NgramWindowOption = Annotated[
    int | None,
    typer.Option(
        "--ngram-window",
        min=1,
        help="Repetition guard window in tokens." + default_of("ngram_window"),
        rich_help_panel=ENGINE,
        show_default=False,
    ),
]
QuietOption = Annotated[bool, typer.Option("-q", "--quiet", help="No progress display or summary.")]
VerboseOption = Annotated[
    int, typer.Option("-v", "--verbose", count=True, help="Log per page; -vv for debug.")
]


def engine_overrides(
    model: str | None,
    engine: str | None,
    device: str | None,
    quant: str | None,
    attn: str | None,
    dtype: str | None,
    max_tiles: int | None,
    batch_size: int | None,
    max_tokens: int | None,
    ngram: int | None,
    ngram_window: int | None,
) -> dict[str, Any]:
    """The engine options as settings keys, for :func:`~docconv.cli.settings.settings_or_exit`."""
    return {
        "model": model,
        "engine": engine,
        "device": device,
        "quant": quant,
        "attn": attn,
        "dtype": dtype,
        "max_tiles": max_tiles,
        "batch_size": batch_size,
        "max_tokens": max_tokens,
        "ngram": ngram,
        "ngram_window": ngram_window,
    }


def engine_options(settings: Settings, offline: bool) -> EngineOptions:
    """How to build the engine, from the effective settings."""
    return EngineOptions(
        model=settings.model,
        device=settings.device,
        quant=settings.quant,
        attn=settings.attn,
        dtype=settings.dtype,
        offline=offline,
        max_tiles=settings.max_tiles,
        kind=settings.engine,
    )
