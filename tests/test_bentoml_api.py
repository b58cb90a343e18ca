"""The `@bentoml.api` method `predict`, seen and called as BentoML's own tools do."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import bentoml
import httpx
import pytest
from bentoml.exceptions import BentoMLException

from model_server.core.ab_split import key_point
from model_server.local_server import ROOT, RunningServer
from tests.test_http_api import sample

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def client(server: RunningServer) -> bentoml.SyncHTTPClient:
    with bentoml.SyncHTTPClient(server.url) as client:
        yield client


def v1(server: RunningServer, name: str, body: dict[str, Any], version: str | None = None) -> httpx.Response:
    path = f"/v1/models/{name}/predict" if version is None else f"/v1/models/{name}/versions/{version}/predict"
    return httpx.post(server.url + path, json=body, timeout=30)


def same(answer: dict[str, Any], reference: dict[str, Any]) -> bool:
    """Two answers alike but for their prediction ids (each answer's own): one id per row in both."""
    mine, theirs = dict(answer), dict(reference)
    ids, other_ids = mine.pop("ids"), theirs.pop("ids")
    rows = len(mine["predictions"])
    return mine == theirs and len(ids) == len(other_ids) == rows and not set(ids) & set(other_ids)


def test_bentoml_client_lists_the_prediction_api(client: bentoml.SyncHTTPClient) -> None:
    assert set(client.endpoints) == {"predict"}
    endpoint = client.endpoints["predict"]
    assert endpoint.route == "/predict"
    assert set(endpoint.input["properties"]) == {"model", "instances", "version", "explain", "key"}
    assert endpoint.input["required"] == ["model", "instances"]


@pytest.mark.parametrize("name", ["breast_cancer", "diabetes"])
@pytest.mark.parametrize("form", ["records", "rows"])
def test_client_answers_equal_v1(client: bentoml.SyncHTTPClient, server: RunningServer, name: str, form: str) -> None:
    features, matrix = sample(name, slice(10, 15))
    rows = matrix.tolist()
    instances = [dict(zip(features, row, strict=True)) for row in rows] if form == "records" else rows
    answer = client.predict(model=name, instances=instances)
    reference = v1(server, name, {"instances": instances})
    assert reference.status_code == 200
    assert same(answer, reference.json())  # single-variant models: the same tag answers both


def test_client_with_a_pinned_version_equals_v1(client: bentoml.SyncHTTPClient, server: RunningServer) -> None:
    _, matrix = sample("iris", slice(50, 53))
    for version in ("v1", "v2"):
        answer = client.predict(model="iris", instances=matrix.tolist(), version=version)
        reference = v1(server, "iris", {"instances": matrix.tolist()}, version=version)
        assert same(answer, reference.json()) and answer["tag"] == f"iris:{version}"


@pytest.mark.parametrize(
    ("instances", "version"),
    [([[1.0, 2.0]], None), ([{"sepal length (cm)": "wide"}], None), ([[5.1, 3.5, 1.4, 0.2]], "v9")],
)
def test_client_bad_input_gets_the_status_and_message_of_v1(
    client: bentoml.SyncHTTPClient, server: RunningServer, instances: list[Any], version: str | None
) -> None:
    with pytest.raises(BentoMLException) as caught:
        client.predict(model="iris", instances=instances, version=version)
    reference = v1(server, "iris", {"instances": instances, "version": version})
    assert reference.status_code in (400, 404)
    assert caught.value.error_code == reference.status_code
    assert json.loads(caught.value.message) == reference.json()


def test_async_client_answers_equal_v1(server: RunningServer) -> None:
    _, matrix = sample("diabetes", slice(0, 3))

    async def call() -> Any:
        async with bentoml.AsyncHTTPClient(server.url) as client:
            return await client.predict(model="diabetes", instances=matrix.tolist())

    assert same(asyncio.run(call()), v1(server, "diabetes", {"instances": matrix.tolist()}).json())


def test_bentoml_page_and_document_list_the_api(server: RunningServer) -> None:
    document = httpx.get(f"{server.url}/docs.json").json()
    assert "post" in document["paths"]["/predict"]
    page = httpx.get(f"{server.url}/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]


IN_PROCESS = """
import asyncio, json, sys
import service

instance = service.TabularModelServer()
rows, key = json.loads(sys.argv[1]), sys.argv[2]
answer = asyncio.run(instance.predict(model="iris", instances=rows, key=key))
print(answer.model_dump_json(exclude_none=True))
"""


def test_an_in_process_call_equals_the_http_answer_for_a_keyed_caller(
    server: RunningServer, store_home: str, tmp_path: Path
) -> None:
    # A key whose stable point falls in iris:v2's band (10 % of callers), so a call that
    # lost the key would land on iris:v1 most of the time.
    key = next(f"caller-{i}" for i in range(1000) if key_point(f"caller-{i}") >= 0.9)
    _, matrix = sample("iris", slice(60, 63))
    rows = matrix.tolist()
    env = {**os.environ, "BENTOML_HOME": store_home, "BENTOML_CONFIG": str(ROOT / "configuration.yaml")}
    out = subprocess.run(
        [sys.executable, "-c", IN_PROCESS, json.dumps(rows), key],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    in_process = json.loads(out.stdout.strip().splitlines()[-1])
    over_http = httpx.post(
        f"{server.url}/predict", json={"model": "iris", "instances": rows}, headers={"X-Request-Key": key}, timeout=30
    )
    assert over_http.status_code == 200
    assert in_process["tag"] == over_http.json()["tag"] == "iris:v2"
    assert same(in_process, over_http.json())
    # The body's key does what the header does.
    in_body = httpx.post(f"{server.url}/predict", json={"model": "iris", "instances": rows, "key": key}, timeout=30)
    assert same(in_body.json(), in_process)
