"""``docconv rerender``: saved raw model output -> any output format, without the model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from docconv.cli.choices import Format, RenderTask, TablesFormat
from docconv.cli.exit_codes import ExitCode
from docconv.output import options as output_options
from docconv.output.rerender import RerenderError, rerender_files


def rerender(
    raw_files: Annotated[
        list[Path],
        typer.Argument(
            help="Raw model output: --keep-raw files (.raw.json), "
            "official _det.mmd / .raw.txt, or web-UI JSON."
        ),
    ],
    output: Annotated[
        Path | None,
        typer.Option("-o", "--output", help="Output file (one input) or directory. Default: stdout."),
    ] = None,
    output_format: Annotated[Format, typer.Option("--format", help="md, json, jsonl or html.")] = Format.md,  # type: ignore[attr-defined]
    tables: Annotated[bool, typer.Option("--tables", help="Also write every table as CSV.")] = False,
    tables_format: Annotated[
        TablesFormat,
        typer.Option(
            "--tables-format", help="Tables in Markdown output: auto (HTML only when cells span), md or html."
        ),
    ] = TablesFormat.auto,  # type: ignore[attr-defined]
    keep_headers: Annotated[
        bool, typer.Option("--keep-headers", help="Keep page headers and footers.")
    ] = False,
    page_separator: Annotated[
        str | None,
        typer.Option(
            "--page-separator", help="Markdown between pages; {page} is the page number.", show_default=False
        ),
    ] = None,
    task: Annotated[
        RenderTask, typer.Option("--task", help="How the raw text is laid out.")
    ] = RenderTask.markdown,  # type: ignore[attr-defined]
    image: Annotated[
        Path | None, typer.Option("--image", help="Page image to crop figures from (one page).")
    ] = None,
    source: Annotated[
        Path | None, typer.Option("--source", help="Source document to crop figures from.")
    ] = None,
) -> None:
    """Re-run post-processing and the writers on saved raw model output, without the model."""
    options = output_options.RenderOptions(
        format=output_format.value,
        tables_format=tables_format.value,
        keep_headers=keep_headers,
        page_separator=page_separator if page_separator is not None else output_options.DEFAULT_PAGE_SEPARATOR,
        task=task.value,
        tables_csv=tables,
    )
    try:
        rerender_files(raw_files, output, options, image=image, source_document=source)
    except RerenderError as error:
        typer.echo(f"docconv: error: {error}", err=True)
        raise typer.Exit(ExitCode.FAILED) from None


