"""``docconv models ...``: list, download, locate, verify, remove and import model weights.

Exit codes (:data:`docconv.cli.exit_codes.MODELS`): a model that cannot be obtained is the code
a conversion uses when its engine cannot start.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich import filesize

from docconv.cli import exit_codes
from docconv.cli.exit_codes import ExitCode
from docconv.cli.listing import JsonOption, print_table
from docconv.models import hub, manage
from docconv.models.errors import CorruptDownloadError, ModelDirectoryError, ModelNotFoundError, WeightsError
from docconv.models.registry import DEFAULT_MODEL, REGISTRY
from docconv.models.store import cache_dir, get_record

ModelIdArg = Annotated[str, typer.Argument(help="Model id, e.g. deepseek-ai/DeepSeek-OCR.")]

models_app = typer.Typer(
    name="models",
    help="Manage model weights: download once, then work offline.",
    epilog=exit_codes.describe(exit_codes.MODELS),
    no_args_is_help=True,
    add_completion=False,
)


def exit_code_for(error: WeightsError) -> ExitCode:
    if isinstance(error, CorruptDownloadError):
        return ExitCode.FAILED
    if isinstance(error, (ModelNotFoundError, ModelDirectoryError)):
        return ExitCode.USAGE
    return ExitCode.UNAVAILABLE


def _fail(error: WeightsError) -> NoReturn:
    typer.echo(f"error: {error}", err=True)
    raise typer.Exit(exit_code_for(error))


def _human_size(size: int | None) -> str:
    return "-" if size is None else filesize.decimal(size)


#: Columns of ``models list`` (piped: the tab-separated fields, in this order).
LIST_COLUMNS = ("id", "revision", "size", "path", "verified", "licence", "note")


@models_app.command("list")
def list_command(as_json: JsonOption = False) -> None:
    """Show cached and imported models, and known models not downloaded yet.

    Piped, one model per line: id, revision, size, path, verified, licence and note, tab-separated.
    """
    try:
        listings = manage.list_models()
    except WeightsError as error:
        _fail(error)
    rows = [
        (row.id, row.revision, _human_size(row.size_bytes), row.path or "-", row.verified, row.licence, row.note)
        for row in listings
    ]
    print_table(
        LIST_COLUMNS,
        rows,
        title=f"docconv models ({cache_dir()})",
        as_json=as_json,
        json_data=[asdict(row) for row in listings],
    )


@models_app.command("download")
def download_command(
    model_id: ModelIdArg = DEFAULT_MODEL,
    revision: Annotated[str | None, typer.Option("--revision", "-r", help="Branch, tag or commit to pin.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Download a model (or re-fetch its missing/corrupted files), with progress on stderr."""
    try:
        record = hub.download_model(model_id, revision, progress=not quiet)
    except WeightsError as error:
        _fail(error)
    typer.echo(f"{record.id} @ {record.commit} ready in {record.path}", err=True)
    known = REGISTRY.get(model_id)
    if known is not None and not known.runnable:
        typer.echo(f"note: {model_id} ({known.family}) cannot be run by docconv's engine yet", err=True)


@models_app.command("path")
def path_command(model_id: ModelIdArg = DEFAULT_MODEL) -> None:
    """Print only the directory of a cached or imported model (for scripts)."""
    try:
        typer.echo(get_record(model_id).path)
    except WeightsError as error:
        _fail(error)


@models_app.command("verify")
def verify_command(model_id: ModelIdArg = DEFAULT_MODEL) -> None:
    """Re-hash every file against the hashes recorded at download; exit 1 on any mismatch."""
    try:
        report = manage.verify_model(model_id)
    except WeightsError as error:
        _fail(error)
    if report.ok:
        typer.echo(f"{model_id}: all {len(report.model.files)} files match")
        return
    for name in report.mismatched:
        typer.echo(f"{model_id}: {name} is missing or corrupted", err=True)
    typer.echo(f"run `docconv models download {model_id}` to fetch them again", err=True)
    raise typer.Exit(ExitCode.FAILED)


@models_app.command("rm")
def rm_command(model_id: Annotated[str, typer.Argument(help="Model id as shown by `models list`.")]) -> None:
    """Forget a model and delete the files docconv downloaded or copied for it."""
    try:
        record = manage.remove_model(model_id)
    except WeightsError as error:
        _fail(error)
    kept = record.source != "hub" and not record.copied
    typer.echo(f"removed {model_id}" + (f" (left {record.path} in place)" if kept else ""))


@models_app.command("import")
def import_command(
    directory: Annotated[Path, typer.Argument(help="A checkpoint directory copied by hand.")],
    as_id: Annotated[str | None, typer.Option("--as", help="Id to register it under (default: folder name).")] = None,
    copy: Annotated[bool, typer.Option("--copy", help="Copy it into the docconv cache, not just reference it.")] = False,
) -> None:
    """Register a hand-copied checkpoint so conversions find it offline."""
    try:
        record = manage.import_model(directory, as_id, copy=copy)
    except WeightsError as error:
        _fail(error)
    typer.echo(f"imported {record.id} from {record.path} ({len(record.files)} files hashed)")
