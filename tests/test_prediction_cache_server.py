"""The prediction cache on a real server: a cached answer equals the computed one on
every door, the metrics count hits and misses, and a routing change empties it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc

from model_server.local_server import RunningServer
from tests.payloads import CONFIGURATIONS
from tests.test_http_api import expected, metric

if TYPE_CHECKING:
    from tests.conftest import AdminServerFactory

pytestmark = pytest.mark.integration

ADMIN_KEY = "cache-test-admin-key"
ROW = [5.9, 3.0, 5.1, 1.8]


@pytest.fixture(scope="module")
def caching(admin_server_factory: AdminServerFactory) -> Iterator[RunningServer]:
    with admin_server_factory(ADMIN_KEY, config=CONFIGURATIONS / "prediction_cache.yaml") as running:
        yield running


def cache_rows(server: RunningServer, outcome: str) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    return metric(text, "model_server_prediction_cache_rows_total", model="iris", tag="iris:v1", outcome=outcome)


def predict(server: RunningServer, rows: list[list[float]]) -> dict:  # type: ignore[type-arg]
    response = httpx.post(f"{server.url}/v1/models/iris/predict", json={"instances": rows}, timeout=30)
    assert response.status_code == 200, response.text
    answer = response.json()
    # A cached row is a new answer all the same: its own prediction id, left out of the comparisons.
    assert len(answer.pop("ids")) == len(rows)
    return answer  # type: ignore[no-any-return]


def test_cached_answers_equal_computed_ones_on_every_door_and_a_routing_change_empties_the_cache(
    caching: RunningServer,
) -> None:
    want = expected("iris:v1", np.array([ROW]))
    first = predict(caching, [ROW])
    assert (cache_rows(caching, "miss"), cache_rows(caching, "hit")) == (1, 0)
    for _ in range(4):
        assert predict(caching, [ROW]) == first
    assert first["probabilities"] == want["probabilities"] and first["predictions"] == want["predictions"]
    assert (cache_rows(caching, "miss"), cache_rows(caching, "hit")) == (1, 4)

    # One cached row and one new row in a request: only the new one is computed.
    other = [6.3, 2.5, 4.9, 1.5]
    mixed = predict(caching, [other, ROW])
    assert mixed["probabilities"] == expected("iris:v1", np.array([other, ROW]))["probabilities"]
    assert (cache_rows(caching, "miss"), cache_rows(caching, "hit")) == (2, 5)

    # OIP gRPC goes through the same core, so the same cache.
    client = triton_grpc.InferenceServerClient(caching.grpc_target)
    tensor = triton_grpc.InferInput("features", [1, 4], "FP64")
    tensor.set_data_from_numpy(np.array([ROW]))
    assert client.infer("iris", [tensor]).as_numpy("predict_proba").tolist() == want["probabilities"]
    assert cache_rows(caching, "hit") == 6

    # A routing change (the same tag, a new revision) starts from an empty cache.
    changed = httpx.put(
        f"{caching.url}/v1/admin/models/iris",
        json={"variants": [{"tag": "iris:v1", "weight": 2}]},
        headers={"authorization": f"Bearer {ADMIN_KEY}"},
        timeout=60,
    )
    assert changed.status_code == 200, changed.text
    assert predict(caching, [ROW]) == first
    assert (cache_rows(caching, "miss"), cache_rows(caching, "hit")) == (3, 6)
