"""Fuzz every operation of the server's own OpenAPI document, and of BentoML's, with schemathesis."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from model_server.local_server import RunningServer

pytestmark = pytest.mark.integration

ST = str(Path(sys.executable).parent / "st")


def test_openapi_document_describes_the_served_models(server: RunningServer) -> None:
    document = httpx.get(f"{server.url}/v1/openapi.json").json()
    predict = document["paths"]["/v1/models/iris/predict"]["post"]
    body = predict["requestBody"]["content"]["application/json"]["schema"]
    iris = body["properties"]["instances"]["oneOf"][0]["items"]
    assert iris["required"] == ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"]
    pinned = document["paths"]["/v2/models/iris/versions/{version}/infer"]["post"]
    assert pinned["parameters"][0]["schema"]["enum"] == ["v1", "v2"]
    assert {"/predict", "/readyz", "/metrics", "/v2/models/diabetes/infer"} <= set(document["paths"])


def test_the_document_lists_every_route_and_every_listed_route_answers(
    server: RunningServer, trained_default_models: list[str]
) -> None:
    import service  # the route tables the server dispatches with

    document = httpx.get(f"{server.url}/v1/openapi.json").json()
    names = [model["name"] for model in httpx.get(f"{server.url}/v1/models").json()["models"]]
    from_tables = set()
    for route in service.ROUTES:
        for name in (names if "{name}" in route.path else [None]) if route.listed else []:
            path = route.path if name is None else route.path.replace("{name}", name)
            from_tables.add((path, route.method.lower()))
    listed = {(path, method) for path, operations in document["paths"].items() for method in operations}
    assert listed == from_tables
    for path, method in sorted(listed):
        operation = document["paths"][path][method]
        url = path
        for parameter in operation.get("parameters", []):
            url = url.replace("{" + parameter["name"] + "}", parameter["schema"]["enum"][0])
        answer = httpx.request(method.upper(), server.url + url, json={} if method == "post" else None, timeout=30)
        assert answer.status_code not in (404, 405), (method, url, answer.text)
        assert answer.status_code < 500, (method, url, answer.text)


def test_bentoml_document_declares_what_predict_answers(server: RunningServer) -> None:
    operation = httpx.get(f"{server.url}/docs.json").json()["paths"]["/predict"]["post"]
    body = operation["requestBody"]
    assert body["required"] is True
    assert body["content"]["application/json"]["schema"]["additionalProperties"] is False
    error = operation["responses"]["400"]["content"]["application/json"]["schema"]
    assert error["properties"]["detail"]["type"] == "array"
    assert set(operation["responses"]) == {"200", "400", "401", "404", "405", "408", "413", "415", "500", "503"}
    answer = httpx.post(f"{server.url}/predict", json={"model": "iris", "instances": [[1.0]]})
    assert answer.status_code == 400
    assert answer.json()["detail"] == [
        {
            "loc": ["instances", 0],
            "msg": "has 1 values; the model takes 4 in the order of its metadata's features",
            "type": "length",
        }
    ]


# Two schemathesis processes, each on half of the operations, keep the server's two workers
# busy. Not `st run --workers 2`: its threads build hypothesis strategies' descriptions with
# `ast.parse` at once, which CPython 3.11 can fail with "AST constructor recursion depth
# mismatch" (a SystemError of the interpreter, not of the server).
HALVES = (("--include-path-regex", "iris|breast_cancer"), ("--exclude-path-regex", "iris|breast_cancer"))


@pytest.mark.parametrize("document", ["/v1/openapi.json", "/docs.json"])
def test_fuzzing_finds_no_server_error_and_every_answer_conforms(
    server: RunningServer, tmp_path: Path, document: str
) -> None:
    # Every check, positive_data_acceptance included: what the document allows is accepted.
    # /docs.json is BentoML's document of the @bentoml.api method (POST /predict).
    runs = []
    for index, half in enumerate(HALVES if document == "/v1/openapi.json" else ((),)):
        folder = tmp_path / f"half-{index}"
        folder.mkdir()
        command = [ST, "run", server.url + document, *half, "--checks", "all", "--max-examples", "40"]
        command += ["--report", "junit", "--report-dir", str(folder)]
        runs.append(subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=folder))
    for run in runs:
        output, _ = run.communicate(timeout=600)
        summary = output[-3000:]
        assert run.returncode == 0, summary
        assert " passed" in summary and "failures" not in summary.splitlines()[-1], summary
    assert "Traceback" not in server.log()
