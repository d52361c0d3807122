"""Settings: built-in defaults < ``config.toml`` < ``DOCCONV_*`` environment < command line.

The file is ``config.toml`` in the platform's user config directory (``docconv config path``),
or in ``$DOCCONV_CONFIG_DIR`` when that is set. Keys are the :class:`Settings` field names,
e.g.::

    model = "/models/DeepSeek-OCR"
    device = "cuda:1"
    mode = "gundam"
    batch_size = 4

Every key can also come from the environment as ``DOCCONV_<KEY>`` (``DOCCONV_BATCH_SIZE=4``).
``docconv config show`` prints the effective value of every key and where it came from.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import platformdirs
import typer

from deepseek_ocr.modes import DEFAULT_MAX_TILES, DEFAULT_MIN_TILES, MODES
from docconv.cli.exit_codes import ExitCode
from docconv.engines import ENGINES
from docconv.engines.base import DEFAULT_ENGINE, DEFAULT_GENERATION
from docconv.memory.memory import NO_BUDGET
from docconv.memory.schedule import CLOCKS, STEPS, TIME, Schedule, ScheduleError
from docconv.models.registry import DEFAULT_MODEL
from docconv.output import options as output_options
from docconv.run.modes import AUTO, DEFAULT_MAX_RATIO
from docconv.run.options import DEFAULT_BATCH_SIZE

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on Python 3.10
    import tomli as tomllib

APP_NAME = "docconv"
CONFIG_FILE = "config.toml"
CONFIG_DIR_ENV = "DOCCONV_CONFIG_DIR"
ENV_PREFIX = "DOCCONV_"

DEFAULT = "default"
FILE = "file"
CLI = "command line"

#: ``--dpi`` bounds, for the option and for the config file and environment alike.
DPI_RANGE = (36, 1200)
QUANTS = ("auto", "none", "8bit", "4bit", "int4")
ATTENTIONS = ("auto", "sdpa", "flash")
DTYPES = ("auto", "bfloat16", "float16", "float32")


class ConfigError(ValueError):
    """A bad key or value in the config file, the environment or the command line (exit 2)."""

    exit_code = ExitCode.USAGE


@dataclass(frozen=True)
class Settings:
    """Every configurable engine and pipeline option, with its default."""

    model: str = DEFAULT_MODEL
    engine: str = DEFAULT_ENGINE
    device: str = "auto"
    quant: str = "auto"
    attn: str = "auto"
    dtype: str = "auto"
    mode: str = AUTO
    max_ratio: float = DEFAULT_MAX_RATIO
    batch_size: int | None = DEFAULT_BATCH_SIZE  # None: the engine's default
    max_tokens: int = DEFAULT_GENERATION.max_new_tokens
    ngram: int = DEFAULT_GENERATION.ngram_size
    ngram_window: int = DEFAULT_GENERATION.ngram_window
    dpi: int | None = None  # None: derived from the mode's resolution
    max_tiles: int = DEFAULT_MAX_TILES
    format: str = output_options.FORMATS[0]
    page_separator: str = output_options.DEFAULT_PAGE_SEPARATOR
    tables_format: str = output_options.TABLE_FORMATS[0]
    keep_headers: bool = False
    #: ``docconv memory``: the forgetting schedule (None: the clock's default), its clock, and
    #: the vision-token budget (0: none) a new store starts with.
    memory_schedule: str | None = None
    memory_clock: str = STEPS
    memory_budget: int = NO_BUDGET
    #: key -> where its value came from: "default", "file", "env DOCCONV_X" or "command line".
    sources: dict[str, str] = field(default_factory=dict, compare=False, repr=False)


def _one_of(*choices: str) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if value in choices else f"expected one of {', '.join(choices)}"

    return check


def _device(value: Any) -> str | None:
    if isinstance(value, str) and re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", value):
        return None
    return "expected auto, cpu, mps, cuda or cuda:N"


def _at_least(low: float, high: float | None = None) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if value is None or (low <= value and (high is None or value <= high)):
            return None
        return f"expected a number from {low} to {high}" if high is not None else f"expected at least {low}"

    return check


def _positive(value: Any) -> str | None:
    return None if value > 0 else "expected a positive number"


def _non_empty(value: Any) -> str | None:
    return None if value.strip() else "expected a non-empty value"


def _schedule(value: Any) -> str | None:
    # The time clock's syntax accepts every schedule (plain ages are seconds there); the command
    # checks it again on the store's own clock.
    try:
        Schedule.parse(value, TIME)
    except ScheduleError as error:
        return str(error)
    return None


#: Range and choice checks per key (types are checked from the field annotations).
CHECKS: dict[str, Callable[[Any], str | None]] = {
    "model": _non_empty,
    "engine": _one_of(*ENGINES),
    "device": _device,
    "quant": _one_of(*QUANTS),
    "attn": _one_of(*ATTENTIONS),
    "dtype": _one_of(*DTYPES),
    "mode": _one_of(AUTO, *MODES),
    "max_ratio": _positive,
    "batch_size": _at_least(1),
    "max_tokens": _at_least(1),
    "ngram": _at_least(0),
    "ngram_window": _at_least(1),
    "dpi": _at_least(*DPI_RANGE),
    "max_tiles": _at_least(DEFAULT_MIN_TILES, DEFAULT_MAX_TILES),
    "format": _one_of(*output_options.FORMATS),
    "tables_format": _one_of(*output_options.TABLE_FORMATS),
    "memory_schedule": _schedule,
    "memory_clock": _one_of(*CLOCKS),
    "memory_budget": _at_least(0),
}

KEYS: tuple[str, ...] = tuple(f.name for f in fields(Settings) if f.name != "sources")
#: The built-in defaults, which ``--help`` shows.
DEFAULTS = Settings()
_TYPES: dict[str, type] = {key: type(getattr(DEFAULTS, key)) for key in KEYS} | {
    "dpi": int,
    "batch_size": int,
    "memory_schedule": str,
}
_NULLABLE = frozenset({"dpi", "batch_size", "memory_schedule"})


def config_dir() -> Path:
    """Where config.toml lives: $DOCCONV_CONFIG_DIR, else the platform's user config dir."""
    override = os.environ.get(CONFIG_DIR_ENV)
    return Path(override) if override else Path(platformdirs.user_config_dir(APP_NAME, appauthor=False))


def config_path() -> Path:
    """The config file docconv reads (it need not exist)."""
    return config_dir() / CONFIG_FILE


def env_var(key: str) -> str:
    """The environment variable for a settings key: model -> DOCCONV_MODEL."""
    return ENV_PREFIX + key.upper()


def load_settings(
    cli_overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Effective settings: CLI > env > file > defaults. A None CLI value means "not given".

    Raises :class:`ConfigError` (one line naming the file or variable and the key) on bad input.
    """
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    sources = dict.fromkeys(KEYS, DEFAULT)
    layers = (
        (_file_values(config_path()), FILE),
        (_env_values(environ), None),
        (_cli_values(cli_overrides or {}), CLI),
    )
    for layer, source in layers:
        values.update(layer)
        sources.update({key: source or f"env {env_var(key)}" for key in layer})
    return replace(DEFAULTS, **values, sources=sources)


def settings_or_exit(cli_overrides: Mapping[str, Any] | None = None) -> Settings:
    """:func:`load_settings` for commands: a bad setting is one error line on stderr and exit 2."""
    try:
        return load_settings(cli_overrides)
    except ConfigError as error:
        typer.echo(f"docconv: error: {error}", err=True)
        raise typer.Exit(ExitCode.USAGE) from None


def _file_values(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        return {}
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the config file: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML ({error}); fix or delete the file") from None
    for key, value in data.items():
        _check(key, value, where=f"{path}: {key}")
    return data


def _env_values(environ: Mapping[str, str]) -> dict[str, Any]:
    values = {}
    for key in KEYS:
        raw = environ.get(env_var(key))
        if raw is not None:
            where = f"environment variable {env_var(key)}"
            values[key] = _check(key, _parse_env(key, raw, where), where)
    return values


def _cli_values(overrides: Mapping[str, Any]) -> dict[str, Any]:
    given = {key: value for key, value in overrides.items() if value is not None}
    for key, value in given.items():
        _check(key, value, where=f"command line option for {key}")
    return given


def _parse_env(key: str, raw: str, where: str) -> Any:
    kind = _TYPES[key]
    text = raw.strip()
    if key in _NULLABLE and text.lower() in ("", "auto", "none"):
        return None
    try:
        if kind is bool:
            return _parse_bool(text)
        if kind in (int, float):
            return kind(text)
    except ValueError:
        raise ConfigError(f"{where}: expected {_type_name(kind)}, got {raw!r}") from None
    return raw


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(text)


def _check(key: str, value: Any, where: str) -> Any:
    if key not in _TYPES:
        raise ConfigError(f"{where}: unknown key (known keys: {', '.join(KEYS)})")
    if not _has_type(value, _TYPES[key], key in _NULLABLE):
        raise ConfigError(f"{where}: expected {_type_name(_TYPES[key])}, got {value!r}")
    problem = CHECKS[key](value) if key in CHECKS else None
    if problem:
        raise ConfigError(f"{where}: {problem}, got {value!r}")
    return value


def _has_type(value: Any, kind: type, nullable: bool) -> bool:
    if value is None:
        return nullable
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def _type_name(kind: type) -> str:
    return {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}[kind]
