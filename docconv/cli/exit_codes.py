"""docconv's exit codes, defined once: the commands return them and their help lists them.

Every command uses the same numbers for the same kind of outcome; what each one means for a
given command is in that command's table below, which its ``--help`` prints.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    FAILED = 1  # some of the work failed; the rest was done
    USAGE = 2  # a bad option, argument or setting
    UNAVAILABLE = 3  # what the work needs cannot be had: the engine, the model's weights
    INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)
    TERMINATED = 143  # SIGTERM (128 + SIGTERM), what shells and service managers expect


#: ``docconv [convert]``.
CONVERT: Mapping[ExitCode, str] = {
    ExitCode.OK: "all converted (or skipped because the output exists)",
    ExitCode.FAILED: "some inputs failed, the others were converted",
    ExitCode.USAGE: "usage error",
    ExitCode.UNAVAILABLE: "the engine could not start",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C)",
    ExitCode.TERMINATED: "terminated (SIGTERM)",
}

#: ``docconv models ...``.
MODELS: Mapping[ExitCode, str] = {
    ExitCode.OK: "success",
    ExitCode.FAILED: "a verify found missing or corrupted files (or the hub served a corrupted file)",
    ExitCode.USAGE: "unknown model id or unusable directory",
    ExitCode.UNAVAILABLE: "the model cannot be obtained (offline mode, hub unreachable, not enough disk space)",
}

#: ``docconv rerender``.
RERENDER: Mapping[ExitCode, str] = {
    ExitCode.OK: "rendered",
    ExitCode.FAILED: "a raw file or page image could not be used",
    ExitCode.USAGE: "usage error",
}

#: ``docconv eval``.
EVAL: Mapping[ExitCode, str] = {
    ExitCode.OK: "every page scored",
    ExitCode.FAILED: "some inputs or pages could not be scored, the others were",
    ExitCode.USAGE: "usage error (also --plot without matplotlib)",
    ExitCode.UNAVAILABLE: "the engine or its tokenizer could not start (or Chinese truth lacks jieba)",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C), scored pages kept for the next run",
    ExitCode.TERMINATED: "terminated (SIGTERM), scored pages kept for the next run",
}

#: ``docconv compress``.
COMPRESS: Mapping[ExitCode, str] = {
    ExitCode.OK: "all inputs rendered",
    ExitCode.FAILED: "some inputs could not be read, the others were rendered",
    ExitCode.USAGE: "usage error",
    ExitCode.UNAVAILABLE: "the model's tokenizer could not be had",
}

#: ``docconv memory ...``.
MEMORY: Mapping[ExitCode, str] = {
    ExitCode.OK: "done",
    ExitCode.FAILED: "the store cannot be used (not a memory store, damaged, busy), "
    "or an entry does not exist or cannot fit the budget",
    ExitCode.USAGE: "usage error",
    ExitCode.UNAVAILABLE: "the tokenizer or the engine could not start",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C)",
    ExitCode.TERMINATED: "terminated (SIGTERM)",
}


def describe(meanings: Mapping[ExitCode, str]) -> str:
    """One line for a command's help: ``Exit codes: 0 success; 1 ...``."""
    return "Exit codes: " + "; ".join(f"{int(code)} {meaning}" for code, meaning in meanings.items()) + "."
