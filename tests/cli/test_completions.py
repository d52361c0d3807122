"""Shell completion: the committed scripts match the CLI, complete real options, and install."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from typer.testing import CliRunner

from docconv.cli import app
from tests.conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
from generate_completions import COMPLETE_VAR, PROG_NAME, SHELLS, write_completions  # noqa: E402

COMPLETIONS = REPO / "completions"
DOCCONV = Path(sysconfig.get_path("scripts")) / "docconv"


def complete(words: str) -> list[str]:
    """Candidates the CLI offers for bash when the cursor is after ``words``."""
    parts = words.split(" ")
    env = {COMPLETE_VAR: "complete_bash", "COMP_WORDS": words, "COMP_CWORD": str(len(parts) - 1)}
    result = CliRunner().invoke(app, [], prog_name=PROG_NAME, env=env)
    assert result.exit_code == 0, result.output
    return result.output.split()


def test_committed_scripts_match_the_current_cli(tmp_path: Path) -> None:
    write_completions(tmp_path)
    for shell in SHELLS:
        name = f"{PROG_NAME}.{shell}"
        assert (COMPLETIONS / name).read_text() == (tmp_path / name).read_text(), (
            f"completions/{name} is stale: run python scripts/generate_completions.py"
        )


def test_subcommands_and_option_values_complete() -> None:
    assert {"path", "show"} <= set(complete("docconv config "))
    assert complete("docconv scan.pdf --mode ") == [
        "auto",
        "tiny",
        "small",
        "base",
        "large",
        "gundam",
        "gundam-master",
    ]
    assert "--quant" in complete("docconv scan.pdf --qu")


@pytest.mark.skipif(
    shutil.which("bash") is None or not DOCCONV.exists(), reason="needs bash and the docconv script"
)
def test_bash_script_completes_through_the_installed_command() -> None:
    script = (
        f"source {COMPLETIONS / 'docconv.bash'}; COMP_WORDS=(docconv config ''); COMP_CWORD=2; "
        "_docconv_completion docconv; printf '%s\\n' \"${COMPREPLY[@]}\""
    )
    env = {**os.environ, "PATH": f"{DOCCONV.parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert {"path", "show"} <= set(done.stdout.split())


@pytest.mark.parametrize("shell", ["zsh", "fish"])
def test_other_scripts_parse_in_their_shell(shell: str) -> None:
    if shutil.which(shell) is None:
        pytest.skip(f"{shell} is not installed")
    check = ["zsh", "-n"] if shell == "zsh" else ["fish", "--no-execute"]
    done = subprocess.run([*check, str(COMPLETIONS / f"docconv.{shell}")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_help_offers_completion_install() -> None:
    result = CliRunner().invoke(app, ["--help"], prog_name=PROG_NAME, env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "--install-completion" in result.output
    assert "--show-completion" in result.output


@pytest.mark.skipif(
    shutil.which("bash") is None or not DOCCONV.exists(), reason="needs bash and the docconv script"
)
def test_install_completion_writes_the_bash_script_into_home(tmp_path: Path) -> None:
    env = {**os.environ, "HOME": str(tmp_path), "SHELL": "/bin/bash"}
    # "; true" keeps bash as docconv's parent, which is how Typer detects the shell.
    done = subprocess.run(
        ["bash", "-c", f"{DOCCONV} --install-completion; true"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert "bash completion installed" in done.stdout, done.stdout + done.stderr
    installed = tmp_path / ".bash_completions" / "docconv.sh"
    assert installed.read_text().strip() == (COMPLETIONS / "docconv.bash").read_text().strip()
    assert f"source '{installed}'" in (tmp_path / ".bashrc").read_text()


def test_generator_script_runs_standalone(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "generate_completions.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["docconv.bash", "docconv.fish", "docconv.zsh"]
