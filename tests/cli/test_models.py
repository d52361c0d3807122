"""`docconv models ...` in-process (CliRunner) and as real processes, against a fake hub on 127.0.0.1."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from docconv.cli.models import LIST_COLUMNS, models_app
from docconv.models import manage, registry, store
from docconv.models.hub import partial_dir

from ..fake_hub import HF_DOWNLOAD_CHUNK, FakeHub, FakeRepo, checkpoint_bigger_than_a_chunk

TINY_ID = "docconv-test/tiny-ocr"
MODELS_ENTRY = "from docconv.cli.models import models_app; models_app()"
#: What a conversion does before loading the engine: turn --model into a checkpoint directory.
RESOLVE_ENTRY = "import sys; from docconv.models.resolve import resolve_model; print(resolve_model(sys.argv[1]))"


@pytest.fixture
def cache_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Temporary caches for this process and for the subprocesses it starts."""
    values = {
        "DOCCONV_CACHE": str(tmp_path / "docconv-cache"),
        "HF_HOME": str(tmp_path / "hf-home"),
        "HF_HUB_CACHE": str(tmp_path / "hf-home" / "hub"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "COLUMNS": "400",  # rich tables would otherwise fold long paths at 80 columns
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return values


@pytest.fixture
def hub(cache_env: dict[str, str], tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    with FakeHub() as server:
        server.add_repo(FakeRepo.from_directory(TINY_ID, tiny_model_dir))
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        yield server


def invoke(*args: str):
    return CliRunner().invoke(models_app, list(args))


def run_process(*args: str, entry: str = MODELS_ENTRY) -> subprocess.Popen[str]:
    """``docconv models ARGS`` (or another entry) as a separate process, in the test's environment."""
    return subprocess.Popen(
        [sys.executable, "-c", entry, *args],
        env=dict(os.environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=60)
    return process.returncode, out, err


def test_download_shows_progress_on_stderr_and_path_prints_only_the_directory(hub: FakeHub) -> None:
    result = invoke("download", TINY_ID)

    assert result.exit_code == 0, result.stderr
    assert "model.safetensors" in result.stderr
    assert "2.3 MB" in result.stderr  # the byte counter of the weights bar
    assert result.stdout == ""

    path = invoke("path", TINY_ID)
    assert path.exit_code == 0
    assert path.stdout == store.load_records()[TINY_ID].path + "\n"
    assert (Path(path.stdout.strip()) / "config.json").is_file()


def test_list_shows_revision_size_path_and_verified(hub: FakeHub) -> None:
    invoke("download", TINY_ID, "--quiet")
    record = store.load_records()[TINY_ID]

    listing = invoke("list")

    assert listing.exit_code == 0
    rows = {line.split("\t")[0]: line.split("\t") for line in listing.stdout.splitlines()}
    assert all(len(row) == len(LIST_COLUMNS) for row in rows.values())
    assert rows[TINY_ID] == [TINY_ID, record.commit[:12], "2.3 MB", record.path, "yes", "-", "hub"]
    assert rows[registry.DEFAULT_MODEL] == [
        registry.DEFAULT_MODEL, "main", "6.7 GB", "-", "not downloaded", "MIT", "known"
    ]


def test_list_json_is_a_list_of_records_with_raw_values(hub: FakeHub) -> None:
    invoke("download", TINY_ID, "--quiet")
    record = store.load_records()[TINY_ID]

    listing = invoke("list", "--json")

    assert listing.exit_code == 0
    models = {model["id"]: model for model in json.loads(listing.stdout)}
    keys = ["id", "revision", "size_bytes", "path", "verified", "licence", "note"]
    assert all(list(model) == keys for model in models.values())
    assert models[TINY_ID]["path"] == record.path and models[TINY_ID]["verified"] == "yes"
    assert models[TINY_ID]["size_bytes"] == sum(file.size for file in record.files.values())
    assert models[registry.DEFAULT_MODEL]["path"] is None
    assert models[registry.DEFAULT_MODEL]["size_bytes"] == 6_672_212_480


def test_piped_list_keeps_long_ids_on_one_line_for_grep(cache_env: dict[str, str], tiny_model_dir: Path) -> None:
    """`docconv models list | grep ID` in a real shell pipe, at the default width (no COLUMNS)."""
    long_id = "local/a-site-model-id-far-longer-than-an-80-column-table-column"
    manage.import_model(tiny_model_dir, as_id=long_id)
    env = {key: value for key, value in os.environ.items() if key not in ("COLUMNS", "LINES")}
    command = f"{shlex.quote(sys.executable)} -m docconv models list | grep -F "
    for wanted in (long_id, "deepseek-community/DeepSeek-OCR-2"):
        done = subprocess.run(
            command + shlex.quote(wanted), shell=True, capture_output=True, text=True, env=env, timeout=120
        )
        assert done.returncode == 0, f"grep found no line with {wanted}: {done.stderr}"
        (line,) = done.stdout.splitlines()
        assert line.split("\t")[0] == wanted and len(line.split("\t")) == len(LIST_COLUMNS)


def test_verify_exit_codes_follow_a_flipped_byte_and_download_repairs_it(hub: FakeHub) -> None:
    invoke("download", TINY_ID, "--quiet")
    assert invoke("verify", TINY_ID).exit_code == 0
    blob = (Path(store.load_records()[TINY_ID].path) / "model.safetensors").resolve()
    data = bytearray(blob.read_bytes())
    data[100] ^= 0x01
    blob.write_bytes(bytes(data))

    failed = invoke("verify", TINY_ID)
    assert failed.exit_code == 1
    assert "model.safetensors is missing or corrupted" in failed.stderr
    assert "no" in next(line for line in invoke("list").stdout.splitlines() if TINY_ID in line)

    assert invoke("download", TINY_ID, "--quiet").exit_code == 0
    assert invoke("verify", TINY_ID).exit_code == 0


def test_rm_removes_the_model_and_path_then_fails_with_usage_code(hub: FakeHub) -> None:
    invoke("download", TINY_ID, "--quiet")
    snapshot = Path(invoke("path", TINY_ID).stdout.strip())

    removed = invoke("rm", TINY_ID)

    assert removed.exit_code == 0
    assert not snapshot.exists()
    assert TINY_ID not in invoke("list").stdout
    missing = invoke("path", TINY_ID)
    assert missing.exit_code == 2
    assert f"docconv models download {TINY_ID}" in missing.stderr


def test_import_of_a_hand_copied_directory(hub: FakeHub, tiny_model_dir: Path, tmp_path: Path) -> None:
    copied = tmp_path / "from-usb"
    shutil.copytree(tiny_model_dir, copied)

    imported = invoke("import", str(copied), "--as", "site/deepseek-ocr")

    assert imported.exit_code == 0, imported.stderr
    assert invoke("path", "site/deepseek-ocr").stdout.strip() == str(copied.resolve())
    assert invoke("verify", "site/deepseek-ocr").exit_code == 0
    assert hub.requests == []


def test_import_of_a_directory_without_config_is_a_usage_error(cache_env: dict[str, str], tmp_path: Path) -> None:
    result = invoke("import", str(tmp_path))

    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1
    assert "has no config.json" in result.stderr


def test_unreachable_hub_exits_3_with_one_line(hub: FakeHub) -> None:
    hub.stop()

    result = invoke("download", TINY_ID)

    assert result.exit_code == 3
    assert result.stderr.count("\n") == 1
    assert f"docconv models download {TINY_ID}" in result.stderr
    assert f"docconv models import <dir> --as {TINY_ID}" in result.stderr


def test_offline_process_exits_3_without_traceback(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    code, out, err = finish(run_process("download", TINY_ID))

    assert code == 3
    assert "Traceback" not in err
    assert err.count("\n") == 1 and "docconv models import" in err
    assert hub.requests == []


def test_process_downloads_once_then_a_conversion_resolves_without_network(hub: FakeHub) -> None:
    code, _, err = finish(run_process("download", TINY_ID))
    assert code == 0, err
    assert "model.safetensors" in err
    hub.clear_requests()

    code, out, err = finish(run_process(TINY_ID, entry=RESOLVE_ENTRY))
    assert code == 0, err
    assert out.strip() == store.load_records()[TINY_ID].path
    assert hub.requests == []


@pytest.mark.parametrize("entry", [MODELS_ENTRY, RESOLVE_ENTRY], ids=["models-download", "conversion"])
def test_two_processes_at_once_fetch_each_file_once(hub: FakeHub, tiny_model_dir: Path, entry: str) -> None:
    # A slow weights file keeps the first download running while the second process starts.
    hub.state.slow["model.safetensors"] = 2.0
    args = ("download", TINY_ID) if entry == MODELS_ENTRY else (TINY_ID,)

    first, second = run_process(*args, entry=entry), run_process(*args, entry=entry)
    results = [finish(first), finish(second)]

    assert [code for code, _, _ in results] == [0, 0], [err for _, _, err in results]
    assert any("waiting for another docconv process" in err for _, _, err in results)
    for source in tiny_model_dir.iterdir():
        assert len(hub.full_file_gets(source.name)) == 1, source.name
    assert invoke("verify", TINY_ID).exit_code == 0


def test_a_killed_download_resumes_where_it_stopped(hub: FakeHub, tiny_model_dir: Path) -> None:
    files = checkpoint_bigger_than_a_chunk((tiny_model_dir / "config.json").read_bytes())
    hub.add_repo(FakeRepo("docconv-test/big", files))
    hub.state.stall_once["model.safetensors"] = HF_DOWNLOAD_CHUNK + 1024 * 1024
    killed = run_process("download", "docconv-test/big", "--quiet")
    partial = wait_for_partial_file(HF_DOWNLOAD_CHUNK)
    killed.kill()
    killed.communicate(timeout=10)

    code, _, err = finish(run_process("download", "docconv-test/big", "--quiet"))

    assert code == 0, err
    gets = hub.file_gets("model.safetensors")
    assert [g.headers.get("range") for g in gets] == [None, f"bytes={HF_DOWNLOAD_CHUNK}-"]
    assert not partial.exists()
    assert invoke("verify", "docconv-test/big").exit_code == 0


def wait_for_partial_file(size: int) -> Path:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for part in partial_dir().rglob("*.part"):
            if part.stat().st_size >= size:
                return part
        time.sleep(0.05)
    raise AssertionError(f"no partial download of {size} bytes appeared under {partial_dir()}")
