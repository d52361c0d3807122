"""``docconv memory``: the commands end to end (in-process), with the tiny checkpoint's tokenizer and weights."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from docconv.cli import app
from docconv.cli.exit_codes import ExitCode
from docconv.memory.schedule import page_vision_tokens
from docconv.memory.store import INDEX

from ..helpers import engine_args

runner = CliRunner()
ROUND = "User: where do we meet?\n\nAssistant: In Lisbon, on the 14th, at the venue by the river."


@pytest.fixture(autouse=True)
def isolated_settings(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """The user's own config file and DOCCONV_* variables must not change what these tests see."""
    for name in [name for name in os.environ if name.startswith("DOCCONV_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("DOCCONV_CONFIG_DIR", str(tmp_path_factory.mktemp("config")))


def invoke(*args: object, input: str | bytes | None = None):
    return runner.invoke(app, ["memory", *(str(a) for a in args)], input=input, catch_exceptions=False)


def snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file()
    }


@pytest.fixture
def model(tiny_model_dir: Path) -> list[str]:
    return ["--model", str(tiny_model_dir)]


@pytest.fixture
def store(tmp_path: Path, model: list[str]) -> Path:
    """A store with three entries on the schedule large:0,base:1,tiny:2 (the oldest at tiny)."""
    root = tmp_path / "store"
    note = tmp_path / "round.md"
    note.write_text(ROUND)
    schedule = ["--schedule", "large:0,base:1,tiny:2"]
    for number in range(3):
        result = invoke("add", root, note, "--meta", f"round={number}", *schedule, *model)
        assert result.exit_code == 0, result.stderr
    return root


def test_add_show_and_the_json_scripts_rely_on(store: Path, model: list[str]) -> None:
    result = invoke("add", store, "-", "--json", "--keep-text", "--meta", "who=stdin", *model, input=ROUND)
    assert result.exit_code == 0, result.stderr
    added = json.loads(result.stdout)
    assert (added["id"], added["mode"], added["age"], added["meta"]) == (4, "large", 0, {"who": "stdin"})

    shown = invoke("show", store, "--json")
    assert shown.exit_code == 0, shown.stderr
    data = json.loads(shown.stdout)
    assert {"entries", "total_vision_tokens", "budget"} <= set(data)
    entries = data["entries"]
    assert [e["id"] for e in entries] == [1, 2, 3, 4]
    for entry in entries:
        assert {"id", "age", "level", "mode", "vision_tokens", "image"} <= set(entry)
        assert Path(entry["image"]).is_file()
    assert [(e["age"], e["mode"]) for e in entries] == [(3, "tiny"), (2, "tiny"), (1, "base"), (0, "large")]
    assert data["total_vision_tokens"] == sum(
        page_vision_tokens(m) for m in ("tiny", "tiny", "base", "large")
    )
    assert data["budget"] == 0
    assert entries[0]["expected_precision"] <= entries[-1]["expected_precision"]


def test_show_piped_is_one_line_per_entry_with_totals_on_stderr(store: Path) -> None:
    result = invoke("show", store)
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split("\t")[:4] for line in lines] == [
        ["1", "2", "3", "tiny"],
        ["2", "1", "1", "base"],
        ["3", "0", "0", "large"],
    ]
    assert all(re.fullmatch(r"(>=|<=|~)\d+\.\d%", line.split("\t")[7]) for line in lines), lines
    assert "3 entries" in result.stderr and "0 forgotten" in result.stderr


def test_a_budget_given_later_applies_to_the_store(store: Path, model: list[str], tmp_path: Path) -> None:
    note = tmp_path / "round.md"
    budget = page_vision_tokens("large") + page_vision_tokens("base")
    result = invoke("add", store, note, "--budget", budget, *model)
    assert result.exit_code == 0, result.stderr
    data = json.loads(invoke("show", store, "--json").stdout)
    assert data["budget"] == budget and data["total_vision_tokens"] <= budget
    assert [e["mode"] for e in data["entries"]] == ["base", "large"]


def test_calibration_from_an_eval_report_changes_the_expected_precision(store: Path, tmp_path: Path) -> None:
    report = {
        "version": 1,
        "buckets": [
            {"label": "600-700", "modes": {"tiny": {"pages": 2, "precision": 0.9, "compression": 0.1}}},
            {"label": "700-800", "modes": {"tiny": {"pages": 2, "precision": 0.5, "compression": 2.0}}},
        ],
    }
    calibration = tmp_path / "eval.json"
    calibration.write_text(json.dumps(report))
    data = json.loads(invoke("show", store, "--json", "--calibration", calibration).stdout)
    assert data["precision_source"] == str(calibration)
    for entry in data["entries"]:
        assert 0.1 < entry["ratio"] < 2.0  # between the report's two cells: interpolated
        expected = 0.9 + (entry["ratio"] - 0.1) / 1.9 * (0.5 - 0.9)
        assert entry["expected_precision"] == pytest.approx(expected, abs=2e-3)
    calibration.write_text('{"version": 99}')
    bad = invoke("show", store, "--calibration", calibration)
    assert bad.exit_code == ExitCode.USAGE and "docconv eval" in bad.stderr


def test_context_on_stdout_and_as_a_snapshot_directory(store: Path, tmp_path: Path) -> None:
    result = invoke("context", store)
    assert result.exit_code == 0, result.stderr
    manifest = json.loads(result.stdout)
    images = [part["path"] for part in manifest["content"] if part["type"] == "image"]
    assert images == [e["image"] for e in manifest["entries"]] and all(Path(p).is_file() for p in images)
    out = tmp_path / "ctx"
    assert invoke("context", store, "-o", out).exit_code == 0
    copied = json.loads((out / "manifest.json").read_text())
    names = [part["path"] for part in copied["content"] if part["type"] == "image"]
    assert names == [Path(p).name for p in images] and all((out / name).is_file() for name in names)


def test_recall_reads_entries_with_the_tiny_checkpoint(store: Path, tiny_model_dir: Path) -> None:
    result = invoke("recall", store, "1", "3", "--json", *engine_args(tiny_model_dir))
    assert result.exit_code == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["id"], r["mode"]) for r in records] == [(1, "tiny"), (3, "large")]
    assert all(isinstance(r["text"], str) for r in records)
    missing = invoke("recall", store, "9", *engine_args(tiny_model_dir))
    assert missing.exit_code == ExitCode.FAILED and "no entry 9" in missing.stderr


def test_forget_and_clear(store: Path) -> None:
    assert invoke("forget", store, "2").exit_code == 0
    assert [e["id"] for e in json.loads(invoke("show", store, "--json").stdout)["entries"]] == [1, 3]
    again = invoke("forget", store, "2", "3")
    assert again.exit_code == ExitCode.FAILED and "no entries 2" in again.stderr
    assert [e["id"] for e in json.loads(invoke("show", store, "--json").stdout)["entries"]] == [1]
    cleared = invoke("clear", store)
    assert cleared.exit_code == 0 and "forgot 1 entries" in cleared.stderr
    assert list((store / "images").iterdir()) == []


@pytest.mark.parametrize("command", ["show", "context", "forget", "clear", "recall"])
def test_a_foreign_or_damaged_directory_is_one_error_line_and_left_alone(
    tmp_path: Path, command: str
) -> None:
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "cat.jpg").write_bytes(b"\xff\xd8 not much of a cat")
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / INDEX).write_bytes(b"\x00" * 4096)
    extra = ["1"] if command == "forget" else []
    for root, message in ((foreign, "not a docconv memory store"), (damaged, "damaged")):
        before = snapshot(root)
        result = invoke(command, root, *extra)
        assert result.exit_code == ExitCode.FAILED, result.stdout
        assert result.stderr.count("\n") == 1 and message in result.stderr and str(root) in result.stderr
        assert snapshot(root) == before


def test_add_errors_are_one_line_with_their_exit_code(tmp_path: Path, model: list[str]) -> None:
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "cat.jpg").write_bytes(b"x")
    note = tmp_path / "note.md"
    note.write_text(ROUND)
    cases = [
        (("add", foreign, note), ExitCode.FAILED, "not a docconv memory store"),
        (("add", tmp_path / "s", tmp_path / "missing.md"), ExitCode.USAGE, "cannot read"),
        (("add", tmp_path / "s", note, "--schedule", "base:0,large:3"), ExitCode.USAGE, "must get smaller"),
        (("add", tmp_path / "s", note, "--meta", "novalue"), ExitCode.USAGE, "KEY=VALUE"),
        (("add", tmp_path / "s", note, "--budget", "10"), ExitCode.FAILED, "budget"),
        (("show", tmp_path / "nowhere"), ExitCode.FAILED, "no memory store here"),
    ]
    for args, code, message in cases:
        result = invoke(*args, *model) if args[0] == "add" else invoke(*args)
        assert result.exit_code == code, (args, result.stderr)
        assert message in result.stderr and result.stderr.count("\n") == 1, (args, result.stderr)
    assert snapshot(foreign) == {"cat.jpg": hashlib.sha256(b"x").hexdigest()}
    # A budget the new entry cannot fit refuses the add and leaves the store's own budget.
    store = tmp_path / "kept"
    assert invoke("add", store, note, "--budget", 900, *model).exit_code == 0
    assert invoke("add", store, note, "--budget", 10, *model).exit_code == ExitCode.FAILED
    data = json.loads(invoke("show", store, "--json").stdout)
    assert data["budget"] == 900 and [e["id"] for e in data["entries"]] == [1]
    unavailable = invoke("add", tmp_path / "t", note, "--model", tmp_path / "no-model", "--offline")
    assert unavailable.exit_code == ExitCode.UNAVAILABLE, unavailable.stderr


def test_the_config_file_gives_a_new_store_its_schedule(tmp_path: Path, model: list[str]) -> None:
    (Path(os.environ["DOCCONV_CONFIG_DIR"]) / "config.toml").write_text(
        'memory_schedule = "large:0,small:1"\nmemory_budget = 5000\n'
    )
    note = tmp_path / "note.md"
    note.write_text(ROUND)
    for _ in range(2):
        assert invoke("add", tmp_path / "store", note, *model).exit_code == 0
    data = json.loads(invoke("show", tmp_path / "store", "--json").stdout)
    assert [e["mode"] for e in data["entries"]] == ["small", "large"] and data["budget"] == 5000
    # The store keeps its own settings: a config file changed later does not re-age it.
    (Path(os.environ["DOCCONV_CONFIG_DIR"]) / "config.toml").write_text('memory_schedule = "tiny:0"\n')
    assert invoke("add", tmp_path / "store", note, *model).exit_code == 0
    data = json.loads(invoke("show", tmp_path / "store", "--json").stdout)
    assert [e["mode"] for e in data["entries"]] == ["small", "small", "large"]
