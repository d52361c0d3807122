"""docconv.models (the weight cache) against a real HTTP hub on 127.0.0.1 serving the tiny checkpoint."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from docconv.engines import create_engine
from docconv.engines.base import EngineError, EngineOptions
from docconv.models import errors, manage, registry, resolve, store
from docconv.models.hub import download_model

from ..fake_hub import HF_DOWNLOAD_CHUNK, FakeHub, FakeRepo, checkpoint_bigger_than_a_chunk

TINY_ID = "docconv-test/tiny-ocr"


@pytest.fixture
def weights_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every cache in a temporary directory: never the user's real caches."""
    monkeypatch.setenv("DOCCONV_CACHE", str(tmp_path / "docconv-cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-home" / "hub"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return tmp_path


@pytest.fixture
def hub(weights_env: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    with FakeHub() as server:
        server.add_repo(FakeRepo.from_directory(TINY_ID, tiny_model_dir))
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        yield server


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def flip_middle_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_first_resolve_downloads_each_file_once_and_the_second_makes_no_request(
    hub: FakeHub, tiny_model_dir: Path
) -> None:
    first = resolve.resolve_model(TINY_ID, progress=False)

    for source in tiny_model_dir.iterdir():
        assert (first / source.name).read_bytes() == source.read_bytes()
        assert len(hub.full_file_gets(source.name)) == 1
    hub.clear_requests()

    assert resolve.resolve_model(TINY_ID, progress=False) == first
    assert hub.requests == []


def test_resolve_shows_download_progress_on_stderr(hub: FakeHub, capsys: pytest.CaptureFixture[str]) -> None:
    resolve.resolve_model(TINY_ID)

    captured = capsys.readouterr()
    assert captured.out == ""
    assert "model.safetensors" in captured.err
    assert "2.3/2.3 MB" in captured.err


def test_download_pins_the_commit_and_records_hub_hashes(hub: FakeHub) -> None:
    record = download_model(TINY_ID, progress=False)

    repo = hub.state.repos[TINY_ID]
    assert record.commit == repo.commit
    assert record.files["model.safetensors"].algo == "sha256"
    assert record.files["model.safetensors"].digest == repo.etag("model.safetensors")
    assert record.files["config.json"].algo == "git-sha1"
    assert store.load_records()[TINY_ID].verified is True


def test_download_resumes_with_a_range_request_after_the_connection_drops(
    hub: FakeHub, tiny_model_dir: Path
) -> None:
    files = checkpoint_bigger_than_a_chunk((tiny_model_dir / "config.json").read_bytes())
    hub.add_repo(FakeRepo("docconv-test/big", files))
    hub.state.drop_once["model.safetensors"] = HF_DOWNLOAD_CHUNK + 1024 * 1024

    path = resolve.resolve_model("docconv-test/big", progress=False)

    gets = hub.file_gets("model.safetensors")
    assert len(gets) == 2
    assert "range" not in gets[0].headers
    assert gets[1].headers["range"] == f"bytes={HF_DOWNLOAD_CHUNK}-"
    assert sha256(path / "model.safetensors") == hashlib.sha256(files["model.safetensors"]).hexdigest()


def test_verify_catches_a_flipped_byte_and_download_refetches_only_that_file(hub: FakeHub) -> None:
    path = resolve.resolve_model(TINY_ID, progress=False)
    flip_middle_byte((path / "model.safetensors").resolve())

    report = manage.verify_model(TINY_ID)
    assert report.mismatched == ["model.safetensors"]
    assert store.load_records()[TINY_ID].verified is False

    hub.clear_requests()
    download_model(TINY_ID, progress=False)
    assert len(hub.full_file_gets("model.safetensors")) == 1
    assert hub.full_file_gets("config.json") == []
    assert manage.verify_model(TINY_ID).ok


def test_a_file_corrupted_in_transit_is_rejected_and_deleted(hub: FakeHub) -> None:
    hub.state.corrupt.add("model.safetensors")

    with pytest.raises(errors.CorruptDownloadError, match="model.safetensors"):
        download_model(TINY_ID, progress=False)
    snapshot = store.hub_cache_dir() / f"models--{TINY_ID.replace('/', '--')}" / "snapshots"
    assert not list(snapshot.rglob("model.safetensors"))

    hub.state.corrupt.clear()
    assert download_model(TINY_ID, progress=False).verified is True


@pytest.mark.parametrize("how", ["argument", "HF_HUB_OFFLINE"])
def test_offline_without_a_cached_copy_names_download_and_import(
    hub: FakeHub, how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if how == "HF_HUB_OFFLINE":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    with pytest.raises(errors.ModelUnavailableError) as caught:
        resolve.resolve_model(TINY_ID, offline=how == "argument", progress=False)

    message = str(caught.value)
    assert "\n" not in message
    assert f"docconv models download {TINY_ID}" in message
    assert f"docconv models import <dir> --as {TINY_ID}" in message
    assert not isinstance(caught.value, EngineError)  # the cache serves `docconv models` as well as engines
    assert hub.requests == []


def test_an_engine_reports_weights_it_cannot_get_as_its_start_up_failure(hub: FakeHub) -> None:
    with pytest.raises(EngineError, match=f"docconv models download {TINY_ID}"):
        create_engine(EngineOptions(model=TINY_ID, offline=True))
    assert hub.requests == []


def test_offline_after_a_download_uses_the_cache(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    path = resolve.resolve_model(TINY_ID, progress=False)
    hub.clear_requests()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    assert resolve.resolve_model(TINY_ID, offline=True, progress=False) == path
    assert hub.requests == []


def test_unreachable_hub_is_a_model_unavailable_error(hub: FakeHub) -> None:
    hub.stop()

    with pytest.raises(errors.ModelUnavailableError, match="hub unreachable") as caught:
        resolve.resolve_model(TINY_ID, progress=False)
    assert "docconv models import" in str(caught.value)


def test_unknown_hub_model_is_not_found(hub: FakeHub) -> None:
    with pytest.raises(errors.ModelNotFoundError, match="docconv-test/missing"):
        download_model("docconv-test/missing", progress=False)


def test_not_enough_disk_space_is_refused_before_any_file_transfer(
    hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_usage = shutil.disk_usage

    def nearly_full(path: str) -> object:
        return real_usage(path)._replace(free=1_000_000)

    monkeypatch.setattr(shutil, "disk_usage", nearly_full)

    with pytest.raises(errors.ModelUnavailableError, match=r"needs 0\.00 GB, 0\.00 GB free"):
        download_model(TINY_ID, progress=False)
    assert hub.full_file_gets("model.safetensors") == []


def test_import_registers_a_hand_copied_directory_for_offline_use(
    hub: FakeHub, tiny_model_dir: Path, weights_env: Path
) -> None:
    copied = weights_env / "usb-stick" / "DeepSeek-OCR"
    shutil.copytree(tiny_model_dir, copied)

    record = manage.import_model(copied, as_id=TINY_ID)

    assert record.files["model.safetensors"].digest == sha256(tiny_model_dir / "model.safetensors")
    assert resolve.resolve_model(TINY_ID, offline=True, progress=False) == copied
    assert hub.requests == []
    assert manage.verify_model(TINY_ID).ok
    flip_middle_byte(copied / "tokenizer.json")
    assert manage.verify_model(TINY_ID).mismatched == ["tokenizer.json"]


def test_import_with_copy_survives_removal_of_the_original(tiny_model_dir: Path, weights_env: Path) -> None:
    original = weights_env / "original"
    shutil.copytree(tiny_model_dir, original)

    record = manage.import_model(original, as_id="site/ocr", copy=True)
    shutil.rmtree(original)

    assert resolve.resolve_model("site/ocr", offline=True) == Path(record.path)
    manage.remove_model("site/ocr")
    assert not Path(record.path).exists()


def test_import_rejects_a_directory_without_config(tiny_model_dir: Path, weights_env: Path) -> None:
    broken = weights_env / "broken"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "config.json").unlink()

    with pytest.raises(errors.ModelDirectoryError, match="broken has no config.json"):
        manage.import_model(broken)


def test_import_rejects_truncated_safetensors(tiny_model_dir: Path, weights_env: Path) -> None:
    broken = weights_env / "truncated"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "model.safetensors").write_bytes(b"\x10\x00")

    with pytest.raises(errors.ModelDirectoryError, match="unreadable model.safetensors"):
        manage.import_model(broken)


def test_existing_huggingface_cache_is_reused_without_downloading(hub: FakeHub) -> None:
    from huggingface_hub import snapshot_download

    hf_snapshot = Path(snapshot_download(TINY_ID, cache_dir=store.huggingface_cache_dir(), endpoint=hub.url))
    hub.clear_requests()

    assert resolve.resolve_model(TINY_ID, progress=False) == hf_snapshot
    assert hub.requests == []
    assert manage.verify_model(TINY_ID).ok


def test_local_directory_is_returned_as_is(tiny_model_dir: Path, weights_env: Path) -> None:
    assert resolve.resolve_model(str(tiny_model_dir), offline=True) == tiny_model_dir
    empty = weights_env / "empty"
    empty.mkdir()
    with pytest.raises(errors.ModelDirectoryError, match="has no config.json"):
        resolve.resolve_model(str(empty))
    with pytest.raises(errors.ModelDirectoryError, match="does not exist"):
        resolve.resolve_model(str(weights_env / "nowhere"))


def test_remove_deletes_only_that_models_files(hub: FakeHub, tiny_model_dir: Path) -> None:
    hub.add_repo(FakeRepo.from_directory("docconv-test/other", tiny_model_dir))
    removed = resolve.resolve_model(TINY_ID, progress=False)
    kept = resolve.resolve_model("docconv-test/other", progress=False)

    manage.remove_model(TINY_ID)

    assert not removed.exists()
    assert TINY_ID not in store.load_records()
    hub.clear_requests()
    assert resolve.resolve_model("docconv-test/other", offline=True) == kept
    assert hub.requests == []


def test_list_shows_downloaded_and_known_models(hub: FakeHub) -> None:
    download_model(TINY_ID, progress=False)

    rows = {row.id: row for row in manage.list_models()}

    assert rows[TINY_ID].verified == "yes"
    assert rows[TINY_ID].size_bytes == sum(r.size for r in store.load_records()[TINY_ID].files.values())
    assert rows[registry.DEFAULT_MODEL].verified == "not downloaded"
    assert rows[registry.DEFAULT_MODEL].size_bytes == 6_672_212_480
    assert rows["deepseek-community/DeepSeek-OCR-2"].note == "known"  # runnable: the OCR-2 engine reads it
