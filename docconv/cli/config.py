"""``docconv config``: where the configuration file is, and which settings are in effect."""

from __future__ import annotations

import typer

from docconv.cli.listing import JsonOption, print_table
from docconv.cli.settings import KEYS, config_path, settings_or_exit

config_app = typer.Typer(
    name="config",
    help="Show where the configuration file is and which settings are in effect.",
    no_args_is_help=True,
    rich_markup_mode=None,
)


@config_app.command("path")
def show_path() -> None:
    """Print the path of the configuration file (it may not exist yet)."""
    typer.echo(str(config_path()))


@config_app.command("show")
def show_settings(as_json: JsonOption = False) -> None:
    """Print every setting, its effective value and where it came from.

    Piped, one setting per line: key, value (as Python writes it) and source, tab-separated.
    """
    settings = settings_or_exit()
    print_table(
        ("key", "value", "source"),
        [(key, repr(getattr(settings, key)), settings.sources[key]) for key in KEYS],
        title=f"docconv settings (file: {config_path()})",
        as_json=as_json,
        json_data={key: {"value": getattr(settings, key), "source": settings.sources[key]} for key in KEYS},
    )
