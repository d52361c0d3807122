"""``docconv eval``: how well the model reads text back from page images, in the paper's Table 2 layout.

Ground truth comes from ``docconv compress`` manifests, PDF text layers or images with a sidecar
``.txt``/``.md``; every page is read in each of ``--modes`` (or taken from ``--predictions``) and
scored with the Fox benchmark's precision and normalized edit distance (docs/evaluation.md).
The engine and matplotlib are imported only when a run needs them, so ``--help`` loads no
torch.
"""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from deepseek_ocr.modes import MODES
from docconv.cli import listing
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
    engine_options,
    engine_overrides,
)
from docconv.cli.exit_codes import ExitCode
from docconv.cli.settings import Settings, settings_or_exit
from docconv.cli.signals import Terminated
from docconv.engines.base import EngineError
from docconv.evaluation import metrics
from docconv.evaluation.progress import EvalProgress
from docconv.evaluation.report import (
    DEFAULT_BUCKETS,
    FORMAT_OF_SUFFIX,
    FORMATS,
    PlotUnavailable,
    Report,
    build_report,
    parse_buckets,
    render,
    require_plotting,
    table_columns,
    table_rows,
    write_plot,
)
from docconv.evaluation.run import (
    DEFAULT_MODES,
    EvalOptions,
    evaluate_predictions,
    evaluate_with_engine,
    modes_in_order,
    open_journal,
)
from docconv.evaluation.truth import TruthProblem, load_truth
from docconv.fsutil import atomic_write_text
from docconv.run.progress import Reporter

ReportFormat = Enum("ReportFormat", {name: name for name in FORMATS}, type=str)  # type: ignore[misc]

TRUTH = "Ground truth and outputs"
REPORT = "Report"


def usage_error(message: str) -> NoReturn:
    typer.echo(f"docconv: error: {message}", err=True)
    raise typer.Exit(ExitCode.USAGE)


def evaluate(
    inputs: Annotated[
        list[str],
        typer.Argument(
            help="Ground truth: compress manifests (or directories of them), PDFs with a text layer, "
            "images with a sidecar .txt/.md.",
            metavar="INPUT...",
            show_default=False,
        ),
    ],
    modes: Annotated[
        str | None,
        typer.Option(
            "--modes",
            metavar="MODE,...",
            help=f"Modes to read every page in, from {', '.join(MODES)}.  [default: {','.join(DEFAULT_MODES)}; "
            "with --predictions: the modes found]",
            rich_help_panel=TRUTH,
            show_default=False,
        ),
    ] = None,
    predictions: Annotated[
        Path | None,
        typer.Option(
            "--predictions",
            metavar="DIR",
            help="Score the outputs of an earlier run (--keep-raw .raw.json, --format jsonl or json) "
            "instead of reading the pages; loads no model.",
            rich_help_panel=TRUTH,
        ),
    ] = None,
    buckets: Annotated[
        str,
        typer.Option(
            "--buckets",
            metavar="LOW-HIGH[/WIDTH]|EDGES",
            help="Rows: ground-truth text-token buckets, e.g. 600-1300 (of 100), 0-2000/250 or 600,800,1000.",
            rich_help_panel=REPORT,
        ),
    ] = DEFAULT_BUCKETS,
    output_format: Annotated[
        ReportFormat | None,
        typer.Option(
            "--format",
            help="table (for a person), json, csv or md. Default: from the -o suffix, else table.",
            rich_help_panel=REPORT,
            show_default=False,
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Same as --format json.", rich_help_panel=REPORT)
    ] = False,
    output: Annotated[
        Path | None,
        typer.Option(
            "-o",
            "--output",
            metavar="FILE",
            help="Write the report here. Default: stdout.",
            rich_help_panel=REPORT,
        ),
    ] = None,
    plot: Annotated[
        Path | None,
        typer.Option(
            "--plot",
            metavar="FILE.png",
            help="Also draw precision against compression per mode (needs matplotlib: docconv[eval]).",
            rich_help_panel=REPORT,
        ),
    ] = None,
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
    quiet: QuietOption = False,
    verbose: VerboseOption = 0,
) -> None:
    """Measure optical compression: read pages back in each mode and report precision per text-token bucket."""
    settings = settings_or_exit(
        engine_overrides(
            model, engine, device, quant, attn, dtype, max_tiles, batch_size, max_tokens, ngram, ngram_window
        )
    )
    chosen_modes = _parse_modes(modes) if modes is not None else None
    if predictions is not None and not predictions.is_dir():
        usage_error(
            f"--predictions {predictions}: not a directory; give the -o directory of an earlier conversion"
        )
    fmt = _format(output_format, as_json, output)
    raise typer.Exit(
        _run(inputs, settings, offline, chosen_modes, predictions, buckets, fmt, output, plot, quiet, verbose)
    )


def _parse_modes(text: str) -> tuple[str, ...]:
    chosen = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    unknown = [mode for mode in chosen if mode not in MODES]
    if unknown or not chosen:
        usage_error(
            f"--modes {text!r}: unknown mode {', '.join(unknown) or '(none)'}; use {', '.join(MODES)}"
        )
    return chosen


def _format(requested: Enum | None, as_json: bool, output: Path | None) -> str:
    if as_json:
        if requested is not None and requested.value != "json":
            usage_error(f"--json and --format {requested.value} disagree; give one of them")
        return "json"
    if requested is not None:
        return requested.value
    return FORMAT_OF_SUFFIX.get(output.suffix.lower() if output else "", FORMATS[0])


def _run(
    inputs: list[str],
    settings: Settings,
    offline: bool,
    modes: tuple[str, ...] | None,
    predictions: Path | None,
    bucket_spec: str,
    fmt: str,
    output: Path | None,
    plot: Path | None,
    quiet: bool,
    verbose: int,
) -> int:
    try:
        buckets = parse_buckets(bucket_spec)
        if plot is not None:
            require_plotting()
    except (ValueError, PlotUnavailable) as error:
        usage_error(str(error))
    Reporter(quiet=quiet).configure_logging(verbose)
    progress = EvalProgress(quiet=quiet)
    truth = load_truth(inputs)
    _report_problems(progress, truth.problems)
    if not truth.pages:
        progress.error("docconv eval", "no page with ground truth to score; see the errors above")
        return ExitCode.FAILED
    try:
        metrics.check_segmenter_for(page.text for page in truth.pages)
    except metrics.MissingSegmenter as error:
        progress.error("docconv eval", str(error))
        return ExitCode.UNAVAILABLE
    options = EvalOptions(
        engine=engine_options(settings, offline),
        modes=modes or DEFAULT_MODES,
        batch_size=settings.batch_size,
        max_tokens=settings.max_tokens,
        ngram=settings.ngram,
        ngram_window=settings.ngram_window,
    )
    journal = None
    try:
        if predictions is not None:
            evaluation = evaluate_predictions(truth.pages, predictions, options, modes)
        else:
            journal = open_journal(output, inputs, options)
            with journal, progress:
                evaluation = evaluate_with_engine(truth.pages, options, journal, progress)
    except EngineError as error:
        what = (
            "the tokenizer could not be loaded" if predictions is not None else "the engine could not start"
        )
        typer.echo(f"docconv: error: {what}: {error}", err=True)
        return ExitCode.UNAVAILABLE
    except KeyboardInterrupt as stop:
        how = "terminated" if isinstance(stop, Terminated) else "interrupted"
        typer.echo(f"docconv: {how}; scored pages are kept, run the same command again to resume", err=True)
        return ExitCode.TERMINATED if isinstance(stop, Terminated) else ExitCode.INTERRUPTED
    _report_problems(progress, evaluation.problems)
    report_modes = (
        list(options.modes)
        if predictions is None
        else modes_in_order((r.mode for r in evaluation.results), modes)
    )
    report = build_report(evaluation.results, buckets, report_modes, settings.model)
    _write_report(report, fmt, output)
    if plot is not None:
        write_plot(report, plot)
    if journal is not None:
        journal.remove()  # the report holds every result now
    failed = any(problem.fatal for problem in truth.problems + evaluation.problems)
    return ExitCode.FAILED if failed or not evaluation.results else ExitCode.OK


def _report_problems(progress: EvalProgress, problems: list[TruthProblem]) -> None:
    for problem in problems:
        (progress.error if problem.fatal else progress.warning)(problem.source, problem.message)


def _write_report(report: Report, fmt: str, output: Path | None) -> None:
    """To ``-o FILE``; else to stdout: the table as the other table commands print theirs (Rich
    on a terminal, tab-separated records in a pipe, the summary line then on stderr)."""
    if output is not None:
        atomic_write_text(output, render(report, fmt))
    elif fmt != "table":
        sys.stdout.write(render(report, fmt))
    else:
        listing.print_table(table_columns(report), table_rows(report), title=f"docconv eval: {report.model}")
        summary = sys.stdout if sys.stdout.isatty() else sys.stderr
        summary.write(report.summary_line() + "\n")
        if report.outside_buckets:
            summary.write(f"{report.outside_buckets} pages outside the buckets (in 'all' only)\n")
