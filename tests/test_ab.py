"""A/B by tag against real servers: split, stickiness, re-weighting, explicit version, shadows."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import aiohttp
import httpx
import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer

from model_server.local_server import RunningServer, start_server
from tests import fault_models
from tests.payloads import CONFIGURATIONS
from tests.test_http_api import expected, metric
from tests.waiting import settled

pytestmark = pytest.mark.integration

KEYS = [f"user-{i}" for i in range(10_000)]
ROW = [5.1, 3.5, 1.4, 0.2]

REWEIGHTED_CONFIG = CONFIGURATIONS / "reweighted_iris.yaml"


@pytest.fixture(scope="module")
def reweighted_server(trained_default_models: list[str]) -> Iterator[RunningServer]:
    """iris at 80/20 instead of the default 90/10, plus a slow and a failing shadow."""
    fault_models.register()
    running = start_server(REWEIGHTED_CONFIG)
    try:
        yield running
    finally:
        running.stop()


def keyed_tags(server: RunningServer, keys: list[str], model: str = "iris") -> list[str]:
    """The tag that answered each keyed request, 64 in flight at a time (aiohttp: httpx's
    async pool tops out near 150 requests/s here, aiohttp's near 850)."""

    async def run() -> list[str]:
        connector = aiohttp.TCPConnector(limit=64)
        async with aiohttp.ClientSession(server.url, connector=connector) as session:
            gate = asyncio.Semaphore(64)

            async def one(key: str) -> str:
                async with gate:
                    async with session.post(
                        f"/v1/models/{model}/predict", json={"instances": [ROW]}, headers={"X-Request-Key": key}
                    ) as response:
                        body = await response.json()
                        assert response.status == 200, body
                        assert response.headers["X-Model-Tag"] == body["tag"]
                        return str(body["tag"])

            return await asyncio.gather(*(one(k) for k in keys))

    return asyncio.run(run())


@pytest.fixture(scope="module")
def default_split(server: RunningServer) -> list[str]:
    return keyed_tags(server, KEYS)


def test_keyed_split_follows_the_configured_weights(default_split: list[str]) -> None:
    share_v2 = default_split.count("iris:v2") / len(default_split)
    assert abs(share_v2 - 0.10) <= 0.02, share_v2
    assert set(default_split) == {"iris:v1", "iris:v2"}


def test_same_key_always_gets_the_same_tag(server: RunningServer, default_split: list[str]) -> None:
    again = keyed_tags(server, KEYS[:2000])
    assert again == default_split[:2000]


def test_answers_match_the_tag_that_answered(server: RunningServer, default_split: list[str]) -> None:
    key_v2 = KEYS[default_split.index("iris:v2")]
    response = httpx.post(
        f"{server.url}/v1/models/iris/predict", json={"instances": [ROW]}, headers={"X-Request-Key": key_v2}
    )
    body = response.json()
    assert body["tag"] == "iris:v2"
    assert body["probabilities"] == expected("iris:v2", np.array([ROW]))["probabilities"]


def test_explicit_version_bypasses_the_split(server: RunningServer, default_split: list[str]) -> None:
    key_v1 = KEYS[default_split.index("iris:v1")]
    pinned = httpx.post(
        f"{server.url}/v1/models/iris/versions/v2/predict", json={"instances": [ROW]}, headers={"X-Request-Key": key_v1}
    )
    assert pinned.json()["tag"] == "iris:v2"
    oip = httpx.post(
        f"{server.url}/v2/models/iris/versions/v2/infer",
        json={"inputs": [{"name": "features", "datatype": "FP64", "shape": [1, 4], "data": ROW}]},
        headers={"X-Request-Key": key_v1},
    )
    assert oip.json()["model_version"] == "v2"


def test_unkeyed_requests_are_split_by_weight(server: RunningServer) -> None:
    tags = [predict_tag(server) for _ in range(400)]
    assert 10 <= tags.count("iris:v2") <= 80  # 10 % of 400 is 40; a binomial 99.99 % band


def predict_tag(server: RunningServer) -> str:
    return str(httpx.post(f"{server.url}/v1/models/iris/predict", json={"instances": [ROW]}).json()["tag"])


def test_new_weights_move_only_the_keys_in_the_changed_band(
    reweighted_server: RunningServer, default_split: list[str]
) -> None:
    after = keyed_tags(reweighted_server, KEYS)
    moved = [(a, b) for a, b in zip(default_split, after, strict=True) if a != b]
    assert 0.08 <= len(moved) / len(KEYS) <= 0.12, len(moved)
    assert set(moved) == {("iris:v1", "iris:v2")}  # nobody moved back from v2
    assert abs(after.count("iris:v2") / len(KEYS) - 0.20) <= 0.02


def test_per_tag_metrics(server: RunningServer, default_split: list[str]) -> None:
    text = httpx.get(f"{server.url}/metrics").text
    v2_ok = metric(text, "model_server_requests_total", model="iris", tag="iris:v2", outcome="ok")
    assert v2_ok >= default_split.count("iris:v2")
    assert metric(text, "model_server_request_seconds_count", model="iris", tag="iris:v2") >= default_split.count(
        "iris:v2"
    )
    # Every keyed request sent ROW, which both iris tags call setosa.
    assert (
        metric(text, "model_server_predicted_classes_total", model="iris", tag="iris:v1", **{"class": "setosa"}) >= 9000
    )


def wait_for(predicate, seconds: float = 20.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def test_default_shadow_records_agreement(server: RunningServer) -> None:
    """The server is shared by this process's test files: the counts are taken before and after."""
    labels = {"model": "breast_cancer", "tag": "breast_cancer:v1", "shadow_tag": "breast_cancer:v2"}

    def counts() -> tuple[float, float]:
        text = httpx.get(f"{server.url}/metrics").text
        agree, disagree = (
            metric(text, "model_server_shadow_comparisons_total", outcome=o, **labels) for o in ("agree", "disagree")
        )
        return agree + disagree, disagree

    compared_before, disagreed_before = settled(counts)  # what earlier tests sent may still be compared
    rows = np.asarray(load_breast_cancer().data[:50]).tolist()
    response = httpx.post(f"{server.url}/v1/models/breast_cancer/predict", json={"instances": rows})
    assert response.json()["tag"] == "breast_cancer:v1"
    assert wait_for(lambda: counts()[0] >= compared_before + 50)
    live = expected("breast_cancer:v1", np.array(rows))["predictions"]
    shadow = expected("breast_cancer:v2", np.array(rows))["predictions"]
    differ = sum(a != b for a, b in zip(live, shadow, strict=True))
    assert differ > 0  # the two tags disagree on some of these rows
    compared, disagreed = counts()
    assert (compared - compared_before, disagreed - disagreed_before) == (50, differ)


def test_slow_shadow_answers_the_caller_first(reweighted_server: RunningServer) -> None:
    labels = {"model": "iris_slow_shadow", "tag": "iris:v1", "shadow_tag": "iris:slow", "outcome": "agree"}

    def agreed() -> float:
        return metric(
            httpx.get(f"{reweighted_server.url}/metrics").text, "model_server_shadow_comparisons_total", **labels
        )

    response = httpx.post(f"{reweighted_server.url}/v1/models/iris_slow_shadow/predict", json={"instances": [ROW]})
    assert response.status_code == 200 and response.json()["tag"] == "iris:v1"
    # The shadow sleeps 2 s per call: the caller had its answer before the comparison existed.
    assert agreed() == 0
    assert wait_for(lambda: agreed() == 1)


def test_failing_shadow_never_fails_the_caller(reweighted_server: RunningServer) -> None:
    for _ in range(5):
        response = httpx.post(
            f"{reweighted_server.url}/v1/models/iris_failing_shadow/predict", json={"instances": [ROW]}
        )
        assert response.status_code == 200
        assert response.json()["probabilities"] == expected("iris:v1", np.array([ROW]))["probabilities"]
    labels = {"model": "iris_failing_shadow", "tag": "iris:v1", "shadow_tag": "iris:broken", "outcome": "error"}
    assert wait_for(
        lambda: (
            metric(
                httpx.get(f"{reweighted_server.url}/metrics").text, "model_server_shadow_comparisons_total", **labels
            )
            == 5
        )
    )
