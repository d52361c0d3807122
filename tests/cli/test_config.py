"""Configuration precedence (CLI > env > file > defaults), errors, and ``docconv config``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from docconv.cli.config import config_app
from docconv.cli.settings import KEYS, ConfigError, Settings, config_path, env_var, load_settings


@pytest.fixture
def config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty config dir, and no DOCCONV_<KEY> variables from the caller's environment."""
    monkeypatch.setenv("DOCCONV_CONFIG_DIR", str(tmp_path))
    for key in KEYS:
        monkeypatch.delenv(env_var(key), raising=False)
    return tmp_path


def write_config(directory: Path, text: str) -> Path:
    path = directory / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_without_file_or_environment(config_dir: Path) -> None:
    settings = load_settings()
    assert settings == Settings()
    assert (settings.model, settings.mode, settings.max_ratio, settings.max_tokens) == (
        "deepseek-ai/DeepSeek-OCR",
        "auto",
        10.0,
        8192,
    )
    assert set(settings.sources.values()) == {"default"}


def test_config_path_honours_the_override(config_dir: Path) -> None:
    assert config_path() == config_dir / "config.toml"


def test_cli_beats_env_beats_file_beats_default(config_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_config(config_dir, 'mode = "gundam"\nbatch_size = 4\nmax_tokens = 2048\ndevice = "cuda:1"\n')
    monkeypatch.setenv("DOCCONV_BATCH_SIZE", "2")
    monkeypatch.setenv("DOCCONV_MAX_TOKENS", "1024")
    settings = load_settings({"max_tokens": 512, "mode": None})
    assert (settings.device, settings.mode, settings.batch_size, settings.max_tokens) == (
        "cuda:1",
        "gundam",
        2,
        512,
    )
    assert settings.sources["device"] == "file"
    assert settings.sources["batch_size"] == "env DOCCONV_BATCH_SIZE"
    assert settings.sources["max_tokens"] == "command line"
    assert settings.sources["mode"] == "file"  # a None CLI value means the flag was not given
    assert settings.sources["quant"] == "default"


def test_environment_values_are_parsed_by_type(config_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCCONV_KEEP_HEADERS", "yes")
    monkeypatch.setenv("DOCCONV_MAX_RATIO", "7.5")
    monkeypatch.setenv("DOCCONV_DPI", "auto")
    monkeypatch.setenv("DOCCONV_MODEL", "/models/ocr")
    settings = load_settings()
    assert (settings.keep_headers, settings.max_ratio, settings.dpi, settings.model) == (
        True,
        7.5,
        None,
        "/models/ocr",
    )


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('colour = "blue"\n', "colour: unknown key"),
        ('batch_size = "four"\n', "batch_size: expected a whole number"),
        ('mode = "huge"\n', "mode: expected one of auto, tiny"),
        ("max_tiles = 12\n", "max_tiles: expected a number from 2 to 9"),
        ('device = "gpu"\n', "device: expected auto, cpu, mps, cuda or cuda:N"),
        ("keep_headers = 1\n", "keep_headers: expected true or false"),
        ("mode = gundam\n", "not valid TOML"),
    ],
)
def test_bad_file_entries_name_the_file_and_key(config_dir: Path, toml: str, message: str) -> None:
    path = write_config(config_dir, toml)
    with pytest.raises(ConfigError) as error:
        load_settings()
    assert str(path) in str(error.value)
    assert message in str(error.value)
    assert "\n" not in str(error.value)
    assert error.value.exit_code == 2


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("DOCCONV_BATCH_SIZE", "many", "DOCCONV_BATCH_SIZE: expected a whole number, got 'many'"),
        ("DOCCONV_BATCH_SIZE", "0", "DOCCONV_BATCH_SIZE: expected at least 1"),
        ("DOCCONV_QUANT", "2bit", "DOCCONV_QUANT: expected one of auto, none, 8bit, 4bit, int4"),
        ("DOCCONV_KEEP_HEADERS", "maybe", "DOCCONV_KEEP_HEADERS: expected true or false"),
    ],
)
def test_bad_environment_values_name_the_variable(
    config_dir: Path, monkeypatch: pytest.MonkeyPatch, variable: str, value: str, message: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=message):
        load_settings()


def test_unrelated_docconv_variables_are_not_settings(
    config_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCCONV_CACHE", "/somewhere")  # the weight cache's own variable
    assert load_settings() == Settings()


def test_config_path_command_prints_the_file(config_dir: Path) -> None:
    result = CliRunner().invoke(config_app, ["path"])
    assert result.exit_code == 0
    assert result.output.strip() == str(config_dir / "config.toml")


def test_config_show_lists_values_and_their_sources(
    config_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_config(config_dir, "batch_size = 3\n")
    monkeypatch.setenv("DOCCONV_MODE", "large")
    result = CliRunner().invoke(config_app, ["show"])
    assert result.exit_code == 0
    rows = [line.split("\t") for line in result.stdout.splitlines()]  # piped: key, value, source
    assert [row[0] for row in rows] == list(KEYS)
    lines = {key: rest for key, *rest in rows}
    assert lines["batch_size"] == ["3", "file"]
    assert lines["mode"] == ["'large'", "env DOCCONV_MODE"]
    assert lines["max_tokens"] == ["8192", "default"]
    assert lines["page_separator"] == [r"'\n\n<!-- page {page} -->\n\n'", "default"]


def test_config_show_json_has_typed_values_and_sources(config_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_config(config_dir, "batch_size = 3\n")
    monkeypatch.setenv("DOCCONV_KEEP_HEADERS", "yes")
    result = CliRunner().invoke(config_app, ["show", "--json"])
    assert result.exit_code == 0
    shown = json.loads(result.stdout)
    assert list(shown) == list(KEYS)
    assert shown["batch_size"] == {"value": 3, "source": "file"}
    assert shown["keep_headers"] == {"value": True, "source": "env DOCCONV_KEEP_HEADERS"}
    assert shown["dpi"] == {"value": None, "source": "default"}
    assert shown["max_ratio"] == {"value": 10.0, "source": "default"}


def test_config_show_reports_a_broken_file_in_one_line_with_exit_2(config_dir: Path) -> None:
    path = write_config(config_dir, "ngram = -1\n")
    result = CliRunner().invoke(config_app, ["show"])
    assert result.exit_code == 2
    assert result.output.strip() == f"docconv: error: {path}: ngram: expected at least 0, got -1"
