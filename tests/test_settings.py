"""The server's own settings block in configuration.yaml."""

from __future__ import annotations

from pathlib import Path

import pytest

from model_server.config.settings import SettingsError, load_settings

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


def models_block(models: str) -> str:
    return f"    model_server:\n      models: {models}\n"


# Issue 23: weights that are not finite or overflow, names and tags outside the rules
# (docs/api.md, "Names, tags and weights"), a shadow that is one of the variants.
W, T = "iris.variants.0.weight", "iris.variants.0.tag"
REFUSED_AT_START = [
    pytest.param("{iris: {variants: [{tag: 'iris:v1', weight: .inf}]}}", W, "finite", id="inf"),
    pytest.param("{iris: {variants: [{tag: 'iris:v1', weight: 1e309}]}}", W, "finite", id="1e309"),
    pytest.param("{iris: {variants: [{tag: 'iris:v1', weight: Infinity}]}}", W, "finite", id="str"),
    pytest.param("{iris: {variants: [{tag: 'iris:v1', weight: .nan}]}}", W, "finite", id="nan"),
    pytest.param(
        "{iris: {variants: [{tag: 'iris:v1', weight: 1.0e+308}, {tag: 'iris:v2', weight: 1.0e+308}]}}",
        "iris.variants.0.weight",
        "less than or equal to 1000000",
        id="overflowing-total",
    ),
    pytest.param("{'..': {variants: [{tag: 'iris:v1'}]}}", "..", "a model name must be", id="dotdot"),
    pytest.param("{'a..b': {variants: [{tag: 'iris:v1'}]}}", "a..b", "without '..'", id="inner-dotdot"),
    pytest.param(f"{{{'n' * 65}: {{variants: [{{tag: 'iris:v1'}}]}}}}", "nnn", "1 to 64", id="too-long"),
    pytest.param("{'ir is': {variants: [{tag: 'iris:v1'}]}}", "ir is", "a model name must be", id="space"),
    pytest.param("{'iris\u200f': {variants: [{tag: 'iris:v1'}]}}", "iris", "a model name", id="rtl-mark"),
    pytest.param("{iris: {variants: [{tag: 'iris:../../x'}]}}", T, "a tag must be", id="tag-dots"),
    pytest.param("{iris: {variants: [{tag: '/etc/passwd:v1'}]}}", T, "a tag must be", id="tag-path"),
    pytest.param("{iris: {variants: [{tag: 'iris:v1\u00e9'}]}}", T, "a tag must be", id="tag-accent"),
    pytest.param("{iris: {variants: [{tag: 'iris:v1'}], shadow: 'iris:..'}}", "iris.shadow", "a tag", id="shadow-tag"),
    pytest.param(
        "{iris: {variants: [{tag: 'iris:v1'}, {tag: 'iris:v2'}], shadow: 'iris:v2'}}",
        "iris.shadow",
        "'iris:v2' is already a variant of this name; a shadow must be another tag",
        id="shadow-is-a-variant",
    ),
]


@pytest.mark.parametrize(("models", "key", "words"), REFUSED_AT_START)
def test_weights_names_tags_and_shadows_outside_the_rules_fail_start_up(
    tmp_path: Path, models: str, key: str, words: str
) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(write(tmp_path, models_block(models)))
    message = str(caught.value)
    assert message.startswith(f"Configuration 'services.TabularModelServer.model_server.models.{key}")
    assert words in message


def test_the_largest_weight_and_the_longest_name_are_accepted(tmp_path: Path) -> None:
    name = "A" + "b" * 63
    models = f"{{{name}: {{variants: [{{tag: 'iris:v1', weight: 1000000}}, {{tag: 'iris:v2', weight: 0}}]}}}}"
    settings = load_settings(write(tmp_path, models_block(models)))
    assert [v.weight for v in settings.models[name].variants] == [1_000_000, 0]


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="cannot be read"):
        load_settings(tmp_path / "absent.yaml")
