"""Fuzz every operation of the server's own OpenAPI document with schemathesis."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.server_process import RunningServer

pytestmark = pytest.mark.integration

ST = str(Path(sys.executable).parent / "st")


def test_openapi_document_describes_the_served_models(server: RunningServer) -> None:
    document = httpx.get(f"{server.url}/v1/openapi.json").json()
    iris = document["components"]["schemas"]["iris_PredictRequest"]["properties"]["instances"]["oneOf"][0]["items"]
    assert iris["required"] == ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"]
    assert "/v1/models/breast_cancer/versions/{version}/predict" in document["paths"]
    assert "/v2/models/diabetes/infer" in document["paths"]


def test_fuzzing_finds_no_server_error_and_every_answer_conforms(server: RunningServer, tmp_path: Path) -> None:
    # positive_data_acceptance is left out: the schema cannot say "data holds rows x
    # columns values" or "within the plausible range", so schema-valid tensors may be 400.
    result = subprocess.run(
        [
            ST,
            "run",
            f"{server.url}/v1/openapi.json",
            "--checks",
            "all",
            "--exclude-checks",
            "positive_data_acceptance",
            "--max-examples",
            "40",
            "--report",
            "junit",
            "--report-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    summary = result.stdout[-3000:]
    assert result.returncode == 0, summary
    assert " passed" in summary and "failures" not in summary.splitlines()[-1], summary
    assert "Traceback" not in server.log()
