"""The ``docconv`` command: convert documents, plus the compress, config, doctor, eval, memory, models and
rerender subcommands.

``docconv FILE...`` converts (the ``convert`` subcommand is implied), so the everyday call
needs no subcommand. Each subcommand is a module of this package; this one assembles them and
is the entry point. Exit codes: :mod:`docconv.cli.exit_codes`.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Annotated

import typer
from typer.core import TyperGroup

from docconv import __version__
from docconv.cli import exit_codes
from docconv.cli.compress import compress
from docconv.cli.config import config_app
from docconv.cli.convert import convert
from docconv.cli.doctor import doctor_command
from docconv.cli.evaluate import evaluate
from docconv.cli.exit_codes import ExitCode
from docconv.cli.memory import memory_app
from docconv.cli.models import models_app
from docconv.cli.rerender import rerender
from docconv.cli.signals import Terminated, stop_on_sigterm

CONVERT = "convert"


class _ConvertByDefault(TyperGroup):
    """Treat ``docconv FILE ...`` as ``docconv convert FILE ...``."""

    _GROUP_OPTIONS = frozenset({"--help", "-h", "--version", "--install-completion", "--show-completion"})

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in self._GROUP_OPTIONS:
            args = [CONVERT, *args]
        return super().parse_args(ctx, args)


app = typer.Typer(
    name="docconv",
    cls=_ConvertByDefault,
    help="Convert PDFs, images and directory trees to Markdown with DeepSeek-OCR, locally.\n\n"
    "Run `docconv FILE...` (same as `docconv convert FILE...`).",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode=None,
)
app.command(CONVERT, no_args_is_help=True, epilog=exit_codes.describe(exit_codes.CONVERT))(convert)
app.command("doctor")(doctor_command)
app.command("rerender", epilog=exit_codes.describe(exit_codes.RERENDER))(rerender)
app.command("eval", no_args_is_help=True, epilog=exit_codes.describe(exit_codes.EVAL))(evaluate)
app.command("compress", no_args_is_help=True, epilog=exit_codes.describe(exit_codes.COMPRESS))(compress)
app.add_typer(config_app, name="config")
app.add_typer(models_app, name="models")
app.add_typer(memory_app, name="memory")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"docconv {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    """Convert PDFs, images and directory trees to Markdown with DeepSeek-OCR, locally."""


def main() -> None:
    """Entry point of the ``docconv`` script."""
    # bitsandbytes warns on import that an optional hub-fetched CPU kernel is missing; docconv
    # reports what matters itself (docconv doctor), one line per problem.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    stop_on_sigterm()
    try:
        app()
    except Terminated:
        sys.stderr.write("docconv: terminated\n")
        raise SystemExit(ExitCode.TERMINATED) from None
    except KeyboardInterrupt:
        sys.stderr.write("docconv: interrupted\n")
        raise SystemExit(ExitCode.INTERRUPTED) from None
    except BrokenPipeError:
        # `docconv x.pdf | head`: the reader left; that is not an error worth a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(ExitCode.OK) from None
