"""Write completions/docconv.{bash,zsh,fish} from the current ``docconv`` CLI.

Usage: python scripts/generate_completions.py [OUTPUT_DIR]   (default: completions/)

The scripts are Typer's: each asks ``docconv`` itself for candidates at completion time
(``_DOCCONV_COMPLETE=complete_<shell>``), so new options complete without regenerating;
what is generated here is the shell glue, which tests/test_completions.py keeps identical
to what the CLI emits. Users can also run ``docconv --install-completion``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from typer.testing import CliRunner

PROG_NAME = "docconv"
COMPLETE_VAR = "_DOCCONV_COMPLETE"
SHELLS = ("bash", "zsh", "fish")
DEFAULT_DIR = Path(__file__).resolve().parent.parent / "completions"


def completion_script(shell: str) -> str:
    """The completion script the CLI emits for ``shell`` (Typer's ``source_<shell>`` request)."""
    from docconv.cli import app

    result = CliRunner().invoke(app, [], prog_name=PROG_NAME, env={COMPLETE_VAR: f"source_{shell}"})
    if result.exit_code != 0 or not result.output.strip():
        raise RuntimeError(f"docconv produced no {shell} completion script: {result.output.strip()}")
    return result.output.strip() + "\n"


def write_completions(directory: Path) -> list[Path]:
    """Write one script per shell into ``directory``; returns the files written."""
    from docconv.fsutil import atomic_write_text

    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for shell in SHELLS:
        path = directory / f"{PROG_NAME}.{shell}"
        atomic_write_text(path, completion_script(shell))
        written.append(path)
    return written


def main(argv: list[str]) -> int:
    directory = Path(argv[0]) if argv else DEFAULT_DIR
    for path in write_completions(directory):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
