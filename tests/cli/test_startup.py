"""What the command costs before it does anything, and what its help promises."""

from __future__ import annotations

import re
import subprocess
import sys

from typer.testing import CliRunner

from docconv.cli import app
from docconv.cli.exit_codes import CONVERT, ExitCode
from docconv.cli.settings import DEFAULTS
from docconv.engines.base import DEFAULT_GENERATION

from ..conftest import REPO

HEAVY = ("torch", "transformers")


def modules_loaded_by(code: str) -> list[str]:
    check = f"{code}; import sys; print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=True)
    return done.stdout.split()


def test_importing_the_cli_loads_no_torch() -> None:
    assert modules_loaded_by("import docconv.cli") == []


def help_without_output(*args: str) -> str:
    """Python that runs ``docconv ARGS --help`` in-process, its help text thrown away."""
    return (
        "import contextlib, io, sys\n"
        f"sys.argv = ['docconv', *{args!r}, '--help']\n"
        "from docconv.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "    main()"
    )


def test_help_loads_no_torch() -> None:
    assert modules_loaded_by(f"exec({help_without_output()!r})") == []
    assert modules_loaded_by(f"exec({help_without_output('convert')!r})") == []
    assert modules_loaded_by(f"exec({help_without_output('eval')!r})") == []


def test_eval_help_shows_the_shared_engine_defaults_and_its_exit_codes() -> None:
    text = " ".join(CliRunner().invoke(app, ["eval", "--help"], terminal_width=400).stdout.split())
    assert f"Token limit per page. [default: {DEFAULT_GENERATION.max_new_tokens}]" in text
    assert "Exit codes: 0 every page scored" in text and "143 terminated (SIGTERM)" in text


def test_convert_help_shows_the_defaults_where_they_are_defined() -> None:
    text = " ".join(CliRunner().invoke(app, ["convert", "--help"], terminal_width=400).stdout.split())
    assert f"Token limit per page. [default: {DEFAULT_GENERATION.max_new_tokens}]" in text
    assert f"n-gram size (0 = off). [default: {DEFAULT_GENERATION.ngram_size}]" in text
    assert f"[default: {DEFAULTS.max_tiles}]" in text and f"default: {DEFAULTS.model}]" in text
    assert "Exit codes: 0 all converted" in text and "143 terminated (SIGTERM)" in text


def test_the_readme_lists_the_exit_codes_a_conversion_returns() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    table = readme.split("## Exit codes", 1)[1].split("\n\n", 2)[1]
    assert [int(code) for code in re.findall(r"^\| (\d+) \|", table, re.MULTILINE)] == list(CONVERT)
    assert list(CONVERT) == list(ExitCode)
