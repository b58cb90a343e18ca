"""The server's own settings block in configuration.yaml."""

from __future__ import annotations

from pathlib import Path

import pytest

from model_server.settings import SettingsError, load_settings

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, block: str) -> Path:
    path = tmp_path / "configuration.yaml"
    path.write_text("services:\n  TabularModelServer:\n    workers: 1\n" + block)
    return path


def test_project_configuration_is_valid() -> None:
    settings = load_settings(ROOT / "configuration.yaml")
    assert set(settings.models) == {"iris", "breast_cancer", "diabetes", "titanic"}
    assert all(":" in tag for tag in settings.tags())


def test_valid_block(tmp_path: Path) -> None:
    settings = load_settings(
        write(tmp_path, "    model_server:\n      models:\n        iris:\n          variants: [{tag: 'iris:v1'}]\n")
    )
    assert settings.tags() == ["iris:v1"] and settings.max_rows_per_request == 1000


@pytest.mark.parametrize(
    ("block", "words"),
    [
        ("", "'services.TabularModelServer.model_server' is missing"),
        ("    model_server:\n      models: {iris: {variants: [{tag: iris}]}}\n", "models.iris.variants.0.tag"),
        (
            "    model_server:\n      models: {iris: {variants: [{tag: 'iris:latest'}]}}\n",
            "must name an explicit version",
        ),
        ("    model_server:\n      models: {iris: {variants: [{tag: 'iris:v1', weight: -1}]}}\n", "weight"),
        ("    model_server:\n      models: {iris: {variants: [{tag: 'iris:v1', weight: 0}]}}\n", "positive total"),
        ("    model_server:\n      models: {iris: {variants: []}}\n", "models.iris.variants"),
        ("    model_server:\n      models: {}\n      max_rows: 5\n", "model_server.max_rows"),
    ],
)
def test_bad_block_fails_with_sentence_naming_the_key(tmp_path: Path, block: str, words: str) -> None:
    with pytest.raises(SettingsError, match="Configuration '") as caught:
        load_settings(write(tmp_path, block))
    assert words in str(caught.value)


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="cannot be read"):
        load_settings(tmp_path / "absent.yaml")
