"""``docconv compress``: text, Markdown or a PDF's text layer -> page images at a chosen
compression, with a manifest (docs/compress-manifest.md)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn
from rich.table import Table

from docconv.cli.choices import CompressMode
from docconv.cli.exit_codes import ExitCode
from docconv.cli.settings import DEFAULTS, env_var, settings_or_exit
from docconv.compress import (
    DEFAULT_MODE,
    DEFAULT_RATIO,
    RenderedPage,
    min_legible_font_size,
    render_text,
)
from docconv.compress.inputs import TextInput, output_names, read_input
from docconv.compress.manifest import PDF_NAME, manifest, write_rendered
from docconv.engines.base import EngineError, EngineOptions
from docconv.sources.inputs import InputError


def compress(
    inputs: Annotated[
        list[str],
        typer.Argument(
            help="Text (.txt), Markdown (any other text file) or PDF files (their text layer); - for stdin."
        ),
    ],
    output: Annotated[
        Path,
        typer.Option(
            "-o", "--output", help="Output directory; with several inputs, one subdirectory per input."
        ),
    ],
    mode: Annotated[
        CompressMode,  # type: ignore[valid-type]
        typer.Option("--mode", help="The resolution mode the pages are made for (their size in pixels)."),
    ] = CompressMode(DEFAULT_MODE),  # type: ignore[misc]  # noqa: B008
    ratio: Annotated[
        float,
        typer.Option("--ratio", help="Text tokens per vision token on each page (above 0)."),
    ] = DEFAULT_RATIO,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            help="Hub id or checkpoint directory whose tokenizer counts the text tokens "
            f"(a hub id is fetched like for conversion).  [env: {env_var('model')}; default: {DEFAULTS.model}]",
            show_default=False,
        ),
    ] = None,
    offline: Annotated[bool, typer.Option("--offline", help="Never download the model.")] = False,
    pdf: Annotated[
        bool, typer.Option("--pdf", help=f"Also write the pages as one PDF with a text layer ({PDF_NAME}).")
    ] = False,
    markdown: Annotated[
        bool | None,
        typer.Option(
            "--markdown/--plain",
            help="Render the text as Markdown or as plain text. Default: plain for .txt files and PDFs, "
            "Markdown otherwise.",
            show_default=False,
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON record per input on stdout instead of a table.")
    ] = False,
) -> None:
    """Render text onto page images that a DeepSeek-OCR mode reads at a chosen compression."""
    settings = settings_or_exit({"model": model})
    if not ratio > 0:
        _usage_error(f"--ratio {ratio}: must be above 0")
    if output.exists() and not output.is_dir():
        _usage_error(f"-o {output}: exists and is not a directory; give a directory")
    several = len(inputs) > 1
    texts, failed = _read_inputs(inputs, markdown)
    if not texts:
        raise typer.Exit(ExitCode.FAILED)
    count_tokens = _token_counter(EngineOptions(model=settings.model, offline=offline))
    reports = []
    with _progress() as progress:
        for item, name in zip(texts, output_names(texts), strict=True):
            task = progress.add_task(item.source, total=len(item.text))
            try:
                pages = render_text(
                    item.text,
                    mode=mode.value,
                    ratio=ratio,
                    count_tokens=count_tokens,
                    markdown=item.markdown,
                    on_page=lambda page, task=task: progress.update(task, completed=page.span[1]),
                )
                record = manifest(
                    pages,
                    mode=mode.value,
                    ratio_target=ratio,
                    model=settings.model,
                    source=item.source,
                    pdf=PDF_NAME if pdf else None,
                )
                path = write_rendered(output / name if several else output, pages, record)
            except OSError as error:
                _input_error(item.source, f"cannot write the output ({error.strerror}); check -o {output}")
                failed = True
                continue
            except ValueError as error:  # a page the layout cannot fit at any size
                _input_error(item.source, f"cannot lay the text out ({error}); try a lower --ratio")
                failed = True
                continue
            finally:
                progress.remove_task(task)
            _warn_illegible(item.source, pages)
            reports.append(_report(item, path, pages))
    _print_reports(reports, as_json)
    raise typer.Exit(ExitCode.FAILED if failed else ExitCode.OK)


def _progress() -> Progress:
    """Characters rendered per input, on stderr, only on a terminal; gone when done."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
        disable=not sys.stderr.isatty(),
    )


def _token_counter(options: EngineOptions):
    # The engine module loads torch; only a run that renders pays for it, never --help.
    from docconv.engines import text_token_counter

    try:
        return text_token_counter(options)
    except EngineError as error:
        typer.echo(f"docconv: error: cannot count text tokens: {error}", err=True)
        raise typer.Exit(ExitCode.UNAVAILABLE) from None


def _read_inputs(inputs: list[str], markdown: bool | None) -> tuple[list[TextInput], bool]:
    if inputs.count("-") > 1:
        _usage_error("stdin ('-') can be given only once")
    texts, failed = [], False
    for given in inputs:
        try:
            texts.append(read_input(given, markdown))
        except InputError as error:
            _input_error(given, str(error))
            failed = True
    return texts, failed


def _warn_illegible(source: str, pages: list[RenderedPage]) -> None:
    small = [number for number, page in enumerate(pages, start=1) if not page.legible]
    if small:
        smallest = min(page.font_size for page in pages)
        typer.echo(
            f"docconv: warning: {source}: page{'s' if len(small) > 1 else ''} {_ranges(small)} "
            f"use{'s' if len(small) == 1 else ''} fonts down to {smallest:.1f} px, below the "
            f"{min_legible_font_size():.1f} px any reader can resolve; lower --ratio or choose a larger --mode",
            err=True,
        )


def _ranges(numbers: list[int]) -> str:
    """1, 2, 3, 5 -> "1-3, 5"."""
    spans: list[list[int]] = []
    for number in numbers:
        if spans and number == spans[-1][1] + 1:
            spans[-1][1] = number
        else:
            spans.append([number, number])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def _report(item: TextInput, path: Path, pages: list[RenderedPage]) -> dict:
    text_tokens = sum(page.text_tokens for page in pages)
    vision_tokens = sum(page.vision_tokens for page in pages)
    return {
        "source": item.source,
        "manifest": str(path),
        "pages": len(pages),
        "text_tokens": text_tokens,
        "vision_tokens": vision_tokens,
        "ratio": round(text_tokens / vision_tokens, 4),
        "min_font_size": round(min(page.font_size for page in pages), 3),
        "illegible_pages": sum(not page.legible for page in pages),
    }


def _print_reports(reports: list[dict], as_json: bool) -> None:
    if as_json:
        for report in reports:
            sys.stdout.write(json.dumps(report, ensure_ascii=False) + "\n")
        return
    if not reports:
        return
    table = Table()
    for header in ("input", "manifest"):
        table.add_column(header, overflow="fold")  # whole paths, wrapped, never cut to an ellipsis
    for header in ("pages", "text tokens", "vision tokens", "ratio", "smallest font (px)"):
        table.add_column(header, justify="right")
    for report in reports:
        table.add_row(
            report["source"],
            report["manifest"],
            str(report["pages"]),
            str(report["text_tokens"]),
            str(report["vision_tokens"]),
            f"{report['ratio']:.2f}",
            f"{report['min_font_size']:.1f}",
        )
    Console().print(table)


def _input_error(source: str, message: str) -> None:
    typer.echo(f"docconv: error: {source}: {message}", err=True)


def _usage_error(message: str):
    typer.echo(f"docconv: error: {message}", err=True)
    raise typer.Exit(ExitCode.USAGE)
