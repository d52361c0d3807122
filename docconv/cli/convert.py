"""``docconv convert`` (also plain ``docconv FILE...``): options -> :class:`ConvertOptions` -> a run.

The option defaults shown in ``--help`` are the built-in settings (:data:`DEFAULTS`), which take
them from where they are defined: the model's generation defaults and tile limit, the mode
choice's ratio limit, the weight registry's default model.
"""

from __future__ import annotations

import os
import sys
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

from docconv.cli.choices import Format, Mode, TablesFormat, Task, value_of
from docconv.cli.engine_options import (
    AttnOption,
    BatchSizeOption,
    DeviceOption,
    DtypeOption,
    EngineKindOption,
    MaxTilesOption,
    MaxTokensOption,
    ModelOption,
    NgramOption,
    NgramWindowOption,
    OfflineOption,
    QuantOption,
    QuietOption,
    VerboseOption,
    default_of,
    engine_options,
    engine_overrides,
)
from docconv.cli.exit_codes import ExitCode
from docconv.cli.settings import DEFAULTS, DPI_RANGE, settings_or_exit
from docconv.cli.signals import Terminated
from docconv.engines import SERVED_MODES
from docconv.engines.base import EngineError
from docconv.output import options as output_options
from docconv.run.modes import AUTO
from docconv.run.options import ConvertOptions
from docconv.run.pipeline import Pipeline
from docconv.run.progress import Reporter
from docconv.sources.inputs import STDIN, read_list, resolve_inputs
from docconv.sources.selection import parse_pages

if TYPE_CHECKING:
    from docconv.run.ray_executor import RayOptions


def usage_error(message: str) -> NoReturn:
    typer.echo(f"docconv: error: {message}", err=True)
    raise typer.Exit(ExitCode.USAGE)


INPUTS = "Inputs"
OUTPUT = "Output"
READING = "Reading"
SCALE = "Scale out (Ray)"


def convert(
    inputs: Annotated[
        list[str] | None,
        typer.Argument(
            help="Files or directories to convert; '-' reads one document from stdin.", show_default=False
        ),
    ] = None,
    output: Annotated[
        str | None,
        typer.Option(
            "-o",
            "--output",
            help="Output file (one input) or directory (mirrors the input tree). "
            "Default: stdout for one input.",
            rich_help_panel=OUTPUT,
        ),
    ] = None,
    from_list: Annotated[
        str | None,
        typer.Option(
            "--from-list",
            metavar="FILE|-",
            help="Read input paths from FILE ('-' = stdin), one per line.",
            rich_help_panel=INPUTS,
        ),
    ] = None,
    null: Annotated[
        bool,
        typer.Option(
            "-0", "--null", help="--from-list paths are NUL-separated (find -print0).", rich_help_panel=INPUTS
        ),
    ] = False,
    glob: Annotated[
        str | None,
        typer.Option(
            "--glob",
            metavar="PATTERN",
            help="Only convert directory members matching PATTERN, e.g. '*.pdf'.",
            rich_help_panel=INPUTS,
        ),
    ] = None,
    pages: Annotated[
        str | None,
        typer.Option(
            "--pages", help="Pages to convert, 1-based: 1-3,7,-1 (-1 = last page).", rich_help_panel=INPUTS
        ),
    ] = None,
    password: Annotated[
        str | None,
        typer.Option("--password", help="Password of encrypted PDFs.", rich_help_panel=INPUTS),
    ] = None,
    dpi: Annotated[
        int | None,
        typer.Option(
            "--dpi",
            min=DPI_RANGE[0],
            max=DPI_RANGE[1],
            help="Render PDF pages at this DPI instead of the one derived from the mode.",
            rich_help_panel=INPUTS,
        ),
    ] = None,
    mode: Annotated[
        Mode | None,
        typer.Option(
            "--mode",
            help="Resolution mode; auto picks per page. DeepSeek-OCR-2 reads base and gundam only."
            + default_of("mode"),
            rich_help_panel=READING,
            show_default=False,
        ),
    ] = None,
    max_ratio: Annotated[
        float | None,
        typer.Option(
            "--max-ratio",
            min=0.5,
            help="auto: highest text/vision token ratio accepted." + default_of("max_ratio"),
            rich_help_panel=READING,
            show_default=False,
        ),
    ] = None,
    task: Annotated[
        Task,
        typer.Option(
            "--task", help="markdown (layout), text (free OCR), figure, describe.", rich_help_panel=READING
        ),
    ] = Task.markdown,  # type: ignore[attr-defined]
    prompt: Annotated[
        str | None,
        typer.Option(
            "--prompt", help="Raw prompt sent to the model (overrides --task).", rich_help_panel=READING
        ),
    ] = None,
    handwriting: Annotated[
        bool,
        typer.Option("--handwriting", help="Keep the writer's line breaks.", rich_help_panel=READING),
    ] = False,
    tables: Annotated[
        bool,
        typer.Option("--tables", help="Also write every table as CSV (needs -o).", rich_help_panel=OUTPUT),
    ] = False,
    tables_format: Annotated[
        TablesFormat | None,
        typer.Option(
            "--tables-format",
            help="Tables in Markdown: auto (HTML only when cells span), md or html."
            + default_of("tables_format"),
            rich_help_panel=OUTPUT,
            show_default=False,
        ),
    ] = None,
    output_format: Annotated[
        Format | None,
        typer.Option(
            "--format",
            help="md, json (whole document), jsonl (a line per page), html. "
            "Default: from the -o suffix, else md.",
            rich_help_panel=OUTPUT,
            show_default=False,
        ),
    ] = None,
    page_separator: Annotated[
        str | None,
        typer.Option(
            "--page-separator",
            help="Markdown between pages; {page} is the page number.",
            rich_help_panel=OUTPUT,
            show_default=False,
        ),
    ] = None,
    keep_headers: Annotated[
        bool | None,
        typer.Option(
            "--keep-headers/--drop-headers",
            help="Keep page headers, footers and page numbers."
            + default_of("keep_headers", "keep" if DEFAULTS.keep_headers else "drop"),
            rich_help_panel=OUTPUT,
            show_default=False,
        ),
    ] = None,
    keep_raw: Annotated[
        bool,
        typer.Option(
            "--keep-raw",
            help="Also save the raw model output (for `docconv rerender`).",
            rich_help_panel=OUTPUT,
        ),
    ] = False,
    overwrite: Annotated[
        bool,
        typer.Option("--overwrite", help="Redo outputs that already exist.", rich_help_panel=OUTPUT),
    ] = False,
    model: ModelOption = None,
    engine: EngineKindOption = None,
    device: DeviceOption = None,
    quant: QuantOption = None,
    attn: AttnOption = None,
    offline: OfflineOption = False,
    dtype: DtypeOption = None,
    max_tiles: MaxTilesOption = None,
    batch_size: BatchSizeOption = None,
    max_tokens: MaxTokensOption = None,
    ngram: NgramOption = None,
    ngram_window: NgramWindowOption = None,
    ray: Annotated[
        str | None,
        typer.Option(
            "--ray",
            metavar="ADDRESS",
            help="Run on Ray Data: 'local' starts Ray here; 'auto' or ray://host:port joins a cluster "
            "(needs docconv[ray]; inputs must be readable on every node; -o may be an fsspec URL).",
            rich_help_panel=SCALE,
        ),
    ] = None,
    ray_workers: Annotated[
        int,
        typer.Option("--ray-workers", min=1, help="OCR actors, one engine each.", rich_help_panel=SCALE),
    ] = 1,
    ray_gpus_per_worker: Annotated[
        float,
        typer.Option(
            "--ray-gpus-per-worker", min=0.0, help="GPUs each OCR actor reserves.", rich_help_panel=SCALE
        ),
    ] = 0.0,
    quiet: QuietOption = False,
    verbose: VerboseOption = 0,
) -> None:
    """Convert documents (PDF, PNG, JPEG, WebP, TIFF, BMP, GIF) to Markdown, JSON, JSONL or HTML."""
    settings = settings_or_exit(
        {
            **engine_overrides(
                model, engine, device, quant, attn, dtype, max_tiles, batch_size, max_tokens, ngram, ngram_window
            ),
            "mode": value_of(mode),
            "max_ratio": max_ratio,
            "dpi": dpi,
            "page_separator": page_separator,
            "tables_format": value_of(tables_format),
            "keep_headers": keep_headers,
        }
    )
    paths = _input_paths(inputs or [], from_list, null)
    ray_options = _ray_options(ray, ray_workers, ray_gpus_per_worker, output)
    # -o stays a string until here: Path("out/") would forget the slash that asks for a directory.
    wants_dir = output is not None and output.endswith(("/", os.sep))
    output_path = Path(output) if output is not None else None
    if ray_options is not None and ray_options.output_url is not None:
        output_path, wants_dir = _staging(ray_options.output_url), True
    fmt = _format(output_format, output_path, settings.format)
    several = len(paths) > 1 or any(Path(p).is_dir() for p in paths if p != STDIN)
    if output is None and several and fmt != "jsonl":
        usage_error("several inputs need -o DIR (or --format jsonl to stream to stdout)")
    if tables and output is None:
        usage_error("--tables writes CSV files next to the output; give -o")
    _check_mode_served(settings.engine, settings.mode)
    try:
        selection = parse_pages(pages) if pages else None
    except ValueError as error:
        usage_error(str(error))
    render = output_options.RenderOptions(
        format=fmt,
        tables_format=settings.tables_format,
        keep_headers=settings.keep_headers,
        page_separator=settings.page_separator,
        task="raw" if prompt is not None else "handwriting" if handwriting else task.value,
        tables_csv=tables,
    )
    options = ConvertOptions(
        engine=engine_options(settings, offline),
        render=render,
        output=output_path,
        output_is_dir=_output_is_dir(output_path, wants_dir, several, fmt),
        mode=settings.mode,
        max_ratio=settings.max_ratio,
        dpi=settings.dpi,
        pages=selection,
        password=password,
        task=task.value,
        prompt=prompt,
        handwriting=handwriting,
        tables=tables,
        batch_size=settings.batch_size,
        max_tokens=settings.max_tokens,
        ngram=settings.ngram,
        ngram_window=settings.ngram_window,
        overwrite=overwrite,
        keep_raw=keep_raw,
    )
    raise typer.Exit(_run(paths, glob, options, quiet, verbose, ray_options))


def _input_paths(inputs: list[str], from_list: str | None, null: bool) -> list[str]:
    paths = list(inputs)
    if from_list is not None:
        if from_list == STDIN and STDIN in paths:
            usage_error("stdin cannot be both an input ('-') and the --from-list source")
        try:
            if from_list == STDIN:
                paths += read_list(sys.stdin.buffer, null)
            else:
                with open(from_list, "rb") as handle:
                    paths += read_list(handle, null)
        except OSError as error:
            usage_error(f"{from_list}: cannot read the path list ({error.strerror}); check --from-list")
    elif null:
        usage_error("-0 only applies to --from-list")
    if not paths:
        usage_error("no inputs; give files, directories, '-' or --from-list")
    return paths


def _format(requested: Enum | None, output: Path | None, default: str) -> str:
    if requested is not None:
        return requested.value
    suffix = output.suffix.lower() if output else ""
    by_suffix = {ext: name for name, ext in output_options.EXTENSIONS.items()}
    return by_suffix.get(suffix, default)


def _output_is_dir(output: Path | None, wants_dir: bool, several: bool, fmt: str) -> bool:
    if output is None:
        return False
    if wants_dir or output.is_dir():
        return True
    if several:
        if output.exists() or output.suffix.lower() in output_options.EXTENSIONS.values():
            usage_error(f"-o {output}: several inputs need an output directory, not a file")
        return True
    if output.suffix.lower() != output_options.EXTENSIONS[fmt]:
        usage_error(
            f"-o {output}: a file output for --format {fmt} must end in {output_options.EXTENSIONS[fmt]} "
            "(or end -o with / for a directory)"
        )
    return False


def _check_mode_served(engine: str, mode: str) -> None:
    served = SERVED_MODES[engine]
    if mode != AUTO and mode not in served:
        usage_error(
            f"--engine {engine} reads only the {', '.join(served)} mode, not {mode}; "
            f"use --mode auto or --mode {served[0]}"
        )


def _ray_options(
    address: str | None, workers: int, gpus_per_worker: float, output: str | None
) -> RayOptions | None:
    """``--ray`` and its companions; exit 2 when Ray is missing or the run cannot go to Ray."""
    if address is None:
        if output is not None and "://" in output:
            usage_error(f"-o {output}: writing to a URL needs --ray (local, or a cluster's address)")
        if workers != 1 or gpus_per_worker:
            usage_error("--ray-workers and --ray-gpus-per-worker apply to --ray runs; add --ray ADDRESS")
        return None
    from docconv.run.ray_executor import RayOptions, RayUnavailable, import_ray, is_url

    try:
        import_ray()
    except RayUnavailable as error:
        usage_error(str(error))
    if output is None:
        usage_error("--ray writes its outputs to files; give -o")
    return RayOptions(address, workers, gpus_per_worker, output if is_url(output) else None)


def _staging(url: str) -> Path:
    from docconv.run.ray_executor import staging_directory

    return staging_directory(url)


def _run(
    paths: list[str],
    glob: str | None,
    options: ConvertOptions,
    quiet: bool,
    verbose: int,
    ray_options: RayOptions | None = None,
) -> int:
    reporter = Reporter(quiet=quiet)
    reporter.configure_logging(verbose)
    resolved = resolve_inputs(paths, glob=glob)
    for failure in resolved.failures:
        reporter.error(failure.source, failure.message)
    try:
        with reporter:
            if ray_options is None:
                summary = Pipeline(options, reporter).run(resolved.documents)
            else:
                from docconv.run.ray_executor import RayExecutor

                summary = RayExecutor(options, ray_options, reporter).run(resolved.documents)
    except EngineError as error:
        typer.echo(f"docconv: error: the engine could not start: {error}", err=True)
        return ExitCode.UNAVAILABLE
    except KeyboardInterrupt as stop:
        how = "terminated" if isinstance(stop, Terminated) else "interrupted"
        typer.echo(f"docconv: {how}; finished pages are kept, run the same command again to resume", err=True)
        return ExitCode.TERMINATED if isinstance(stop, Terminated) else ExitCode.INTERRUPTED
    summary.failures[:0] = [(f.source, f.message) for f in resolved.failures]
    reporter.summary(summary)
    return ExitCode.FAILED if summary.failures else ExitCode.OK
