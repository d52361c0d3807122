"""``docconv memory add|show|context|recall|forget|clear STORE``: an optical memory that fades.

A thin layer over :class:`docconv.memory.OpticalMemory`. The store keeps its schedule, clock and
budget: a new store takes them from the settings (config file, ``DOCCONV_MEMORY_*``, options);
an existing one changes them only when ``--schedule``, ``--clock`` or ``--budget`` is given on
the command line or in the environment. Exit codes: :data:`docconv.cli.exit_codes.MEMORY`.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from docconv.cli import exit_codes
from docconv.cli.choices import Clock, value_of
from docconv.cli.engine_options import (
    AttnOption,
    DeviceOption,
    DtypeOption,
    EngineKindOption,
    MaxTilesOption,
    MaxTokensOption,
    ModelOption,
    OfflineOption,
    QuantOption,
    engine_options,
    engine_overrides,
)
from docconv.cli.exit_codes import ExitCode
from docconv.cli.listing import JsonOption, print_json, print_table
from docconv.cli.settings import DEFAULT, DEFAULTS, FILE, Settings, settings_or_exit
from docconv.engines import create_engine, text_token_counter
from docconv.engines.base import EngineError, EngineOptions
from docconv.fsutil import atomic_write_text
from docconv.memory.memory import DEFAULT_RATIO, NO_BUDGET, BudgetError, Entry, OpticalMemory
from docconv.memory.precision import CalibrationError, Expected, PrecisionCurve, read_calibration
from docconv.memory.schedule import DEFAULT_SCHEDULES, STEPS, ScheduleError
from docconv.memory.store import INDEX, StoreError

memory_app = typer.Typer(
    name="memory",
    help="An optical memory: entries kept as page images that fade by downsizing as they age.",
    epilog=exit_codes.describe(exit_codes.MEMORY),
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
)

StoreArg = Annotated[
    Path, typer.Argument(help="The memory store: a directory (add creates it).", show_default=False)
]
ScheduleOption = Annotated[
    str | None,
    typer.Option(
        "--schedule",
        metavar="LEVEL:AGE,...",
        help="Level from each age on, e.g. '"
        + DEFAULT_SCHEDULES[STEPS]
        + "' (time ages take s, m, h, d or w). "
        "Default: the store's own; a new store the clock's default.",
        show_default=False,
    ),
]
ClockOption = Annotated[
    Clock | None,
    typer.Option(
        "--clock",
        help="What ages an entry: steps (each add is one) or time (seconds since its add). Default: the store's own, "
        f"a new store {DEFAULTS.memory_clock}.",
        show_default=False,
    ),
]
BudgetOption = Annotated[
    int | None,
    typer.Option(
        "--budget",
        min=0,
        help="Most vision tokens the store holds; the oldest entries fade first (0: no limit). "
        "Default: the store's own; a new store none.",
        show_default=False,
    ),
]


def _fail(message: str, code: ExitCode = ExitCode.FAILED) -> NoReturn:
    typer.echo(f"docconv: error: {message}", err=True)
    raise typer.Exit(code)


def _store_settings(settings: Settings, store: Path) -> dict[str, Any]:
    """Schedule, clock and budget to give the store: all for a new one, else only explicit ones."""
    new = not (store / INDEX).exists()

    def given(key: str) -> Any:
        explicit = settings.sources.get(key) not in (DEFAULT, FILE)
        return getattr(settings, key) if new or explicit else None

    return {
        "schedule": given("memory_schedule"),
        "clock": given("memory_clock"),
        "budget": given("memory_budget"),
    }


@contextmanager
def _opened(
    store: Path, settings: Settings | None = None, create: bool = False, **options: Any
) -> Iterator[OpticalMemory]:
    """The memory at ``store``, with its errors as one line and the command's exit code."""
    chosen = _store_settings(settings, store) if settings is not None else {}
    try:
        with OpticalMemory(store, create=create, **chosen, **options) as memory:
            yield memory
    except StoreError as error:
        _fail(str(error))
    except ScheduleError as error:
        _fail(f"--schedule: {error}", ExitCode.USAGE)
    except BudgetError as error:
        _fail(f"{store}: {error}")


@memory_app.command("add", epilog=exit_codes.describe(exit_codes.MEMORY))
def add_command(
    store: StoreArg,
    source: Annotated[
        str, typer.Argument(metavar="FILE|-", help="Text or Markdown to remember; '-' reads stdin.")
    ],
    meta: Annotated[
        list[str] | None,
        typer.Option("--meta", metavar="KEY=VALUE", help="Attach a field to the entry (repeatable)."),
    ] = None,
    ratio: Annotated[
        float,
        typer.Option("--ratio", min=0.1, help="Text tokens per vision token on the first level's pages."),
    ] = DEFAULT_RATIO,
    plain: Annotated[
        bool, typer.Option("--plain", help="Lay the text out as plain text, not Markdown.")
    ] = False,
    keep_text: Annotated[
        bool,
        typer.Option("--keep-text", help="Also keep the source text (for evaluation); default: images only."),
    ] = False,
    schedule: ScheduleOption = None,
    clock: ClockOption = None,
    budget: BudgetOption = None,
    model: ModelOption = None,
    offline: OfflineOption = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the new entry as JSON.")] = False,
) -> None:
    """Render a text at the schedule's first level and add it as the newest entry; the others age."""
    settings = settings_or_exit(
        {
            "model": model,
            "memory_schedule": schedule,
            "memory_clock": value_of(clock),
            "memory_budget": budget,
        }
    )
    text = _read_source(source)
    fields = _parse_meta(meta or [])
    engine = EngineOptions(model=settings.model, offline=offline)
    try:  # before the store is touched: a model that cannot count tokens leaves no trace
        count_tokens = text_token_counter(engine)
    except EngineError as error:
        _fail(f"cannot count text tokens with {settings.model}: {error}", ExitCode.UNAVAILABLE)
    options = {"ratio": ratio, "keep_text": keep_text, "engine": engine, "count_tokens": count_tokens}
    with _opened(store, settings, create=True, **options) as memory:
        entry = memory.add(text, fields, markdown=not plain)
        total, held = memory.total_vision_tokens(), memory.budget
    if as_json:
        print_json(entry.to_dict())
    else:
        limit = f"/{held}" if held != NO_BUDGET else ""
        typer.echo(
            f"entry {entry.id}: {len(entry.pages)} page(s) at {entry.mode}, {entry.vision_tokens} vision tokens "
            f"for {entry.text_tokens} text tokens; the store holds {total}{limit}"
        )


@memory_app.command("show", epilog=exit_codes.describe(exit_codes.MEMORY))
def show_command(
    store: StoreArg,
    calibration: Annotated[
        Path | None,
        typer.Option(
            "--calibration",
            metavar="EVAL.json",
            help="Expected precision from this `docconv eval --format json` report instead of the paper's curve.",
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """One line per entry, oldest first: age, level, mode, vision tokens, compression, expected precision.

    Piped, one entry per line, tab-separated, in the table's column order. The totals go to stderr.
    """
    try:
        curve = read_calibration(calibration) if calibration is not None else PrecisionCurve.paper()
    except CalibrationError as error:
        _fail(str(error), ExitCode.USAGE)
    with _opened(store) as memory:
        entries, held, forgotten = memory.entries(), memory.budget, memory.forgotten_count()
        clock_name = memory.schedule.clock
    total = sum(entry.vision_tokens for entry in entries)
    expected = [curve.at(entry.ratio) for entry in entries]
    print_table(
        ("id", "age", "level", "mode", "pages", "vision tokens", "ratio", "expected precision"),
        [_show_row(entry, guess, clock_name) for entry, guess in zip(entries, expected, strict=True)],
        title=f"docconv memory {store} (precision: {curve.source})",
        as_json=as_json,
        json_data={
            "entries": [_show_record(entry, guess) for entry, guess in zip(entries, expected, strict=True)],
            "total_vision_tokens": total,
            "budget": held,
            "forgotten": forgotten,
            "clock": clock_name,
            "precision_source": curve.source,
        },
    )
    if not as_json:
        limit = f" of a budget of {held}" if held != NO_BUDGET else " (no budget)"
        typer.echo(f"{len(entries)} entries, {total} vision tokens{limit}; {forgotten} forgotten", err=True)


def _show_record(entry: Entry, expected: Expected) -> dict[str, Any]:
    return entry.to_dict() | {
        "expected_precision": round(expected.precision, 4),
        "precision_beyond_curve": expected.beyond,
    }


def _show_row(entry: Entry, expected: Expected, clock: str) -> tuple[str, ...]:
    age = f"{entry.age:g}" if clock == STEPS else f"{entry.age:.0f}s"
    return (
        str(entry.id),
        age,
        str(entry.level),
        entry.mode,
        str(len(entry.pages)),
        str(entry.vision_tokens),
        f"{entry.ratio:.1f}x",
        str(expected),
    )


@memory_app.command("context", epilog=exit_codes.describe(exit_codes.MEMORY))
def context_command(
    store: StoreArg,
    output: Annotated[
        Path | None,
        typer.Option(
            "-o",
            "--output",
            help="Copy the images into this directory with a manifest.json naming them relatively "
            "(a snapshot later adds cannot change). Default: the manifest on stdout, naming the store's files.",
        ),
    ] = None,
) -> None:
    """The held images, oldest first, and a JSON manifest ready for a vision-language model's prompt."""
    with _opened(store) as memory:
        context = memory.context()
        manifest = context.manifest
        if output is not None:
            manifest = _snapshot(context.images, manifest, output)
    if output is None:
        print_json(manifest)
    else:
        typer.echo(f"{len(context.images)} images and manifest.json written to {output}", err=True)


def _snapshot(images: tuple[Path, ...], manifest: dict[str, Any], output: Path) -> dict[str, Any]:
    """Copy the images into ``output`` and write a manifest naming them relative to it."""
    output.mkdir(parents=True, exist_ok=True)
    for image in images:
        shutil.copyfile(image, output / image.name)
    name = {str(image): image.name for image in images}
    entries = [
        entry | {"image": name[entry["image"]], "images": [name[path] for path in entry["images"]]}
        for entry in manifest["entries"]
    ]
    content = [
        part | {"path": name[part["path"]]} if part["type"] == "image" else part
        for part in manifest["content"]
    ]
    copied = manifest | {"entries": entries, "content": content}
    atomic_write_text(output / "manifest.json", json.dumps(copied, ensure_ascii=False, indent=2) + "\n")
    return copied


@memory_app.command("recall", epilog=exit_codes.describe(exit_codes.MEMORY))
def recall_command(
    store: StoreArg,
    entries: Annotated[
        list[int] | None, typer.Argument(metavar="[ENTRY]...", help="Entry ids; default: all.")
    ] = None,
    model: ModelOption = None,
    engine: EngineKindOption = None,
    device: DeviceOption = None,
    quant: QuantOption = None,
    attn: AttnOption = None,
    dtype: DtypeOption = None,
    max_tiles: MaxTilesOption = None,
    max_tokens: MaxTokensOption = None,
    offline: OfflineOption = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON record per entry and line.")] = False,
) -> None:
    """Read entries back from their current images with the engine: what the memory still holds."""
    settings = settings_or_exit(
        engine_overrides(model, engine, device, quant, attn, dtype, max_tiles, None, max_tokens, None, None)
    )
    with _opened(store) as memory:
        try:
            wanted = [memory.entry(i) for i in entries] if entries else memory.entries()
        except KeyError as error:
            _fail(str(error.args[0]))
        if not wanted:
            return
        try:
            reader = create_engine(engine_options(settings, offline))
        except EngineError as error:
            _fail(f"the engine could not start: {error}", ExitCode.UNAVAILABLE)
        for entry in wanted:
            recollection = memory.recall(entry, reader, max_new_tokens=settings.max_tokens)
            if as_json:
                record = {"id": entry.id, "age": entry.age, "mode": entry.mode, "text": recollection.text}
                sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")
            else:
                sys.stdout.write(
                    f"--- entry {entry.id} ({entry.mode}, age {entry.age:g})\n{recollection.text}\n"
                )
            sys.stdout.flush()


@memory_app.command("forget", epilog=exit_codes.describe(exit_codes.MEMORY))
def forget_command(
    store: StoreArg,
    entries: Annotated[list[int], typer.Argument(metavar="ENTRY...", help="Entry ids to forget now.")],
) -> None:
    """Drop entries and their images now, whatever their age."""
    missing = []
    with _opened(store) as memory:
        for entry_id in entries:
            try:
                memory.forget(entry_id)
            except KeyError:
                missing.append(entry_id)
    if missing:
        _fail(
            f"{store}: no entries {', '.join(map(str, missing))} (forgotten already?); the others are forgotten"
        )


@memory_app.command("clear", epilog=exit_codes.describe(exit_codes.MEMORY))
def clear_command(store: StoreArg) -> None:
    """Forget every entry; the store and its settings stay."""
    with _opened(store) as memory:
        count = memory.clear()
    typer.echo(f"forgot {count} entries", err=True)


def _read_source(source: str) -> str:
    try:
        data = sys.stdin.buffer.read() if source == "-" else Path(source).read_bytes()
    except OSError as error:
        _fail(
            f"{source}: cannot read ({error.strerror}); give a text or Markdown file, or '-' for stdin",
            ExitCode.USAGE,
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        _fail(f"{source}: not UTF-8 text; give a text or Markdown file", ExitCode.USAGE)
    if not text.strip():
        _fail(f"{source}: empty; there is nothing to remember", ExitCode.USAGE)
    return text


def _parse_meta(pairs: list[str]) -> dict[str, str]:
    fields = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            _fail(f"--meta {pair!r}: write KEY=VALUE", ExitCode.USAGE)
        fields[key] = value
    return fields
