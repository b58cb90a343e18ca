"""Outcomes on a real server with two workers and two Titanic variants: 2,000 predictions
of held-out passengers, feedback for each spread over both workers, and the live quality
per tag equal to what this test computes from the same rows; replays, altered and
foreign ids; ids from every door; a routing change starts a new window."""

from __future__ import annotations

import base64
import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import bentoml
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
import yaml
from scipy import stats

from model_server.local_server import RunningServer
from model_server.monitoring.prediction_ids import PredictionIds
from tests.test_drift_server import _json_value
from training import tables
from training.recipes import DEFAULT_RECIPES, DEFAULT_SEED
from training.register import split, tag_exists, train_and_register

if TYPE_CHECKING:
    from tests.conftest import AdminServerFactory

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
ADMIN_KEY = "admin-key-for-outcome-tests"
PREDICTIONS = 2000
Z = 1.959963984540054


@pytest.fixture(scope="module")
def titanic_v2(trained_default_models: list[str]) -> str:
    if not tag_exists("titanic:v2"):
        train_and_register("titanic", "v2", DEFAULT_RECIPES["titanic:v2"], DEFAULT_SEED)
    return "titanic:v2"


def ab_configuration(directory: Path) -> Path:
    """configuration.yaml with Titanic split evenly between v1 and v2 (two workers)."""
    document = yaml.safe_load((ROOT / "configuration.yaml").read_text())
    settings = document["services"]["TabularModelServer"]["model_server"]
    settings["models"]["titanic"] = {
        "variants": [{"tag": "titanic:v1", "weight": 50}, {"tag": "titanic:v2", "weight": 50}]
    }
    path = directory / "configuration.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


@pytest.fixture(scope="module")
def outcome_server(
    admin_server_factory: AdminServerFactory, titanic_v2: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    config = ab_configuration(tmp_path_factory.mktemp("outcomes"))
    with admin_server_factory(ADMIN_KEY, config=config) as running:
        yield running


def held_out() -> tuple[list[list[Any]], list[str]]:
    """Titanic's held-out passengers (the split registration made) as JSON rows, and their labels."""
    _, X_test, _, y_test = split(tables.titanic(), DEFAULT_SEED)
    rows = [[_json_value(v) for v in row] for row in X_test.itertuples(index=False)]
    return rows, [str(y) for y in y_test]


def predict_each(server: RunningServer, rows: list[list[Any]]) -> list[dict[str, Any]]:
    """One request per row, from 8 threads on their own connections."""

    def post(chunk: list[list[Any]]) -> list[dict[str, Any]]:
        answers = []
        with httpx.Client(base_url=server.url, timeout=60) as client:
            for row in chunk:
                answer = client.post("/v1/models/titanic/predict", json={"instances": [row]})
                assert answer.status_code == 200, answer.text
                answers.append(answer.json())
        return answers

    chunks = [rows[i::8] for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        parts = list(pool.map(post, chunks))
    # Back in the order of `rows`.
    return [parts[i % 8][i // 8] for i in range(len(rows))]


def send_feedback(server: RunningServer, items: list[dict[str, Any]], batch: int = 20) -> list[dict[str, Any]]:
    """Feedback in requests of `batch` items from 4 threads, each request on a new
    connection (either worker takes it); the results in the order of `items`."""

    def post(chunk: list[dict[str, Any]]) -> list[dict[str, Any]]:
        answer = httpx.post(
            f"{server.url}/v1/models/titanic/feedback",
            json={"feedback": chunk},
            headers={"connection": "close"},
            timeout=60,
        )
        assert answer.status_code == 200, answer.text
        return list(answer.json()["results"])

    chunks = [items[i : i + batch] for i in range(0, len(items), batch)]
    with ThreadPoolExecutor(4) as pool:
        return [result for results in pool.map(post, chunks) for result in results]


def outcomes(server: RunningServer, path: str = "/v1/models/titanic/outcomes") -> dict[str, Any]:
    answer = httpx.get(f"{server.url}{path}", headers={"connection": "close"}, timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()


def tag_entry(answer: dict[str, Any], tag: str) -> dict[str, Any]:
    [found] = [t for t in answer["tags"] if t["tag"] == tag]
    return found


def wilson(k: int, n: int) -> tuple[float, float]:
    p = k / n
    centre = (p + Z**2 / (2 * n)) / (1 + Z**2 / n)
    half = Z / (1 + Z**2 / n) * math.sqrt(p * (1 - p) / n + Z**2 / (4 * n**2))
    return centre - half, centre + half


def t_interval(values: list[float]) -> tuple[float, float, float]:
    """Mean and its 95 % Student t interval, by scipy's own routine."""
    mean = float(np.mean(values))
    low, high = stats.t.interval(0.95, len(values) - 1, loc=mean, scale=stats.sem(values))
    return mean, float(low), float(high)


@pytest.fixture(scope="module")
def answered(outcome_server: RunningServer) -> dict[str, Any]:
    """2,000 predictions of held-out passengers and the feedback for each, sent once."""
    rows, labels = held_out()
    chosen = [i % len(rows) for i in range(PREDICTIONS)]
    answers = predict_each(outcome_server, [rows[i] for i in chosen])
    items = [{"id": a["ids"][0], "truth": labels[i]} for a, i in zip(answers, chosen, strict=True)]
    results = send_feedback(outcome_server, items)
    return {"answers": answers, "labels": [labels[i] for i in chosen], "items": items, "results": results}


def test_live_quality_per_tag_equals_the_reference_summed_over_both_workers(
    outcome_server: RunningServer, answered: dict[str, Any]
) -> None:
    assert [r["status"] for r in answered["results"]] == ["accepted"] * PREDICTIONS
    report = outcomes(outcome_server)
    seen_workers = set()
    for tag in ("titanic:v1", "titanic:v2"):
        mine = [(a, y) for a, y in zip(answered["answers"], answered["labels"], strict=True) if a["tag"] == tag]
        assert len(mine) > 700  # an even split of 2,000
        classes = mine[0][0]["classes"]
        hits = sum(a["predictions"][0] == y for a, y in mine)
        # A binary id carries the positive class's probability p (prediction_ids.py), so the
        # log loss is binary cross-entropy on p: -log(p) or -log(1 - p). The answer's first
        # probability is the model's own float32 1 - p, a rounding apart from it.
        positive = [a["probabilities"][0][1] for a, _ in mine]
        losses = [-math.log(p if y == classes[1] else 1 - p) for p, (_, y) in zip(positive, mine, strict=True)]
        briers = [(a["probabilities"][0][1] - (y == classes[1])) ** 2 for a, y in mine]
        live = tag_entry(report, tag)["live"]
        assert live["outcomes"] == len(mine)
        assert live["accuracy"]["value"] == hits / len(mine)  # exactly
        assert live["accuracy"]["interval"] == pytest.approx(wilson(hits, len(mine)), abs=1e-9)
        for name, values in (("log_loss", losses), ("brier", briers)):
            mean, low, high = t_interval(values)
            assert live[name]["value"] == pytest.approx(mean, abs=1e-9)
            assert live[name]["interval"] == pytest.approx([low, high], abs=1e-9)
        for label in classes:
            support = [a for a, y in mine if y == label]
            found = sum(a["predictions"][0] == label for a in support)
            assert live["recall"][label]["support"] == len(support)
            assert live["recall"][label]["value"] == found / len(support)
            assert live["recall"][label]["interval"] == pytest.approx(wilson(found, len(support)), abs=1e-9)
        assert tag_entry(report, tag)["heldout"]["accuracy"] > 0.5
        workers = tag_entry(report, tag)["outcomes_per_worker"]
        assert sum(workers) == len(mine)
        seen_workers.add(len(workers))
    assert 2 in seen_workers, "feedback reached one worker only"
    # The same answer whichever worker gives it.
    assert all(outcomes(outcome_server)["tags"] == report["tags"] for _ in range(6))


def test_metrics_carry_the_live_quality_and_the_feedback_counts(
    outcome_server: RunningServer, answered: dict[str, Any]
) -> None:
    report = outcomes(outcome_server)
    text = httpx.get(f"{outcome_server.url}/metrics", timeout=30).text
    for tag in ("titanic:v1", "titanic:v2"):
        live = tag_entry(report, tag)["live"]
        assert gauge(text, "model_server_outcomes", model="titanic", tag=tag) == live["outcomes"]
        accuracy = {"model": "titanic", "tag": tag, "metric": "accuracy"}
        assert gauge(text, "model_server_live_quality", **accuracy) == live["accuracy"]["value"]
        lower = gauge(text, "model_server_live_quality_lower", **accuracy)
        assert lower == pytest.approx(live["accuracy"]["interval"][0], abs=1e-12)
        heldout = gauge(text, "model_server_heldout_quality", **accuracy)
        assert heldout == tag_entry(report, tag)["heldout"]["accuracy"]
    accepted = sum(v for k, v in samples(text, "model_server_feedback_items_total") if 'result="accepted"' in k)
    assert accepted >= PREDICTIONS


def samples(text: str, metric: str) -> list[tuple[str, float]]:
    """Every sample of `metric` (summed over workers' pids by the caller), as (labels, value)."""
    found = []
    for line in text.splitlines():
        if line.startswith(metric + "{"):
            labels, _, value = line.rpartition(" ")
            found.append((labels, float(value)))
    return found


def gauge(text: str, family: str, **labels: str) -> float:
    """The one sample of `family` with these labels (whatever their order in the text)."""
    wanted = {f'{k}="{v}"' for k, v in labels.items()}
    found = [value for names, value in samples(text, family) if set(names[len(family) + 1 : -1].split(",")) == wanted]
    assert len(found) == 1, (family, labels)
    return found[0]


def test_replays_count_once_and_altered_or_foreign_ids_are_refused(
    outcome_server: RunningServer, answered: dict[str, Any]
) -> None:
    before = outcomes(outcome_server)["tags"]
    replayed = send_feedback(outcome_server, answered["items"][:100], batch=10)
    assert [r["status"] for r in replayed] == ["duplicate"] * 100
    item = answered["items"][0]
    raw = bytearray(base64.urlsafe_b64decode(item["id"] + "=" * (-len(item["id"]) % 4)))
    raw[-20] ^= 0x01  # one bit of the prediction
    altered = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    foreign = PredictionIds([b"another server's secret!"]).sign(
        "titanic", "titanic:v1", 0, 0, np.array([[0.5, 0.5]]), True
    )[0]
    answer = httpx.post(
        f"{outcome_server.url}/v1/models/titanic/feedback",
        json={
            "feedback": [
                {"id": altered, "truth": "died"},
                {"id": foreign, "truth": "died"},
                {"id": "not an id", "truth": "died"},
                {"id": answered["answers"][1]["ids"][0], "truth": "drowned"},
                {"id": answered["answers"][1]["ids"][0], "truth": 1.5},
                {"truth": "died"},
            ]
        },
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    statuses = [r["status"] for r in body["results"]]
    assert statuses == ["invalid_id", "invalid_id", "invalid_id", "invalid_truth", "invalid_truth", "invalid_id"]
    assert "signature" in body["results"][0]["message"] and "died, survived" in body["results"][3]["message"]
    assert body["counts"]["invalid_id"] == 4 and body["counts"]["accepted"] == 0
    assert outcomes(outcome_server)["tags"] == before
    other_model = httpx.post(
        f"{outcome_server.url}/v1/models/iris/feedback",
        json={"feedback": [{"id": answered["items"][2]["id"], "truth": "died"}]},
        timeout=30,
    ).json()
    assert other_model["results"][0]["status"] == "invalid_id" and "titanic" in other_model["results"][0]["message"]


def test_bad_feedback_bodies_are_400_naming_the_field(outcome_server: RunningServer) -> None:
    for body, where in (
        ({}, "feedback"),
        ({"feedback": []}, "feedback"),
        ({"feedback": [{"id": "x", "truth": "died"}] * 1001}, "feedback"),
        ({"feedback": [], "extra": 1}, "extra"),
    ):
        answer = httpx.post(f"{outcome_server.url}/v1/models/titanic/feedback", json=body, timeout=30)
        assert answer.status_code == 400, answer.text
        assert answer.json()["detail"][0]["loc"] == [where]
    missing = httpx.post(f"{outcome_server.url}/v1/models/nope/feedback", json={"feedback": [{}]}, timeout=30)
    assert missing.status_code == 404


def test_a_truth_too_large_for_a_float_is_invalid_and_the_other_items_still_count(
    outcome_server: RunningServer,
) -> None:
    """JSON allows integers of any size: a regressor's truth of 400 digits is refused as
    any other bad truth, and the valid item beside it is stored, not lost."""
    path = "/v1/models/diabetes/outcomes"
    ids = httpx.post(
        f"{outcome_server.url}/v1/models/diabetes/predict", json={"instances": [[0.0] * 10, [0.01] * 10]}, timeout=30
    ).json()["ids"]
    before = sum(t["live"]["outcomes"] for t in outcomes(outcome_server, path)["tags"])
    huge = "9" * 400
    body = json.dumps({"feedback": [{"id": ids[0], "truth": 100}, {"id": ids[1], "truth": 0}]})
    body = body.replace('"truth": 0', '"truth": ' + huge)
    answer = httpx.post(
        f"{outcome_server.url}/v1/models/diabetes/feedback",
        content=body,
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    assert [r["status"] for r in results] == ["accepted", "invalid_truth"]
    assert "finite number" in results[1]["message"]
    assert sum(t["live"]["outcomes"] for t in outcomes(outcome_server, path)["tags"]) == before + 1
    # A promotion's margin of 400 digits is refused naming the field, as a negative one is.
    refused = httpx.post(
        f"{outcome_server.url}/v1/admin/models/titanic/promote",
        content='{"tag": "titanic:v1", "if_not_worse": ' + huge + "}",
        headers={"authorization": f"Bearer {ADMIN_KEY}", "content-type": "application/json"},
        timeout=30,
    )
    assert refused.status_code == 400, refused.text
    assert refused.json()["detail"][0]["loc"] == ["if_not_worse"]


PASSENGER = {"pclass": "1st", "sex": "female", "age": 29.0, "sibsp": 0, "parch": 0}


def test_every_door_returns_ids_that_feedback_accepts(outcome_server: RunningServer) -> None:
    ids: list[str] = []
    v1 = httpx.post(f"{outcome_server.url}/v1/models/titanic/predict", json={"instances": [PASSENGER] * 2}).json()
    ids += v1["ids"]
    named = httpx.post(f"{outcome_server.url}/predict", json={"model": "titanic", "instances": [PASSENGER]}).json()
    ids += named["ids"]
    with bentoml.SyncHTTPClient(outcome_server.url) as client:
        ids += client.predict(model="titanic", instances=[PASSENGER])["ids"]
    for module, url in ((triton_http, f"127.0.0.1:{outcome_server.port}"), (triton_grpc, outcome_server.grpc_target)):
        with module.InferenceServerClient(url) as client:
            inputs = []
            for feature, value in PASSENGER.items():
                if isinstance(value, str):
                    tensor = module.InferInput(feature, [1], "BYTES")
                    tensor.set_data_from_numpy(np.array([value.encode()], dtype=np.object_))
                else:
                    tensor = module.InferInput(feature, [1, 1], "FP64")
                    tensor.set_data_from_numpy(np.array([[float(value)]]))
                inputs.append(tensor)
            result = client.infer("titanic", inputs)
            door_ids = result.as_numpy("prediction_id")
            assert door_ids.shape == (1,)
            ids += [i.decode() if isinstance(i, bytes) else str(i) for i in door_ids]
    assert len(ids) == 6 and len(set(ids)) == 6
    results = send_feedback(outcome_server, [{"id": i, "truth": "survived"} for i in ids])
    assert [r["status"] for r in results] == ["accepted"] * 6
    assert {r["tag"] for r in results} <= {"titanic:v1", "titanic:v2"}


def admin_cli(server: RunningServer, *arguments: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "model_server.admin", *arguments, "--url", server.url]
    environment = {**os.environ, "MODEL_SERVER_ADMIN_KEY": ADMIN_KEY}
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env=environment, cwd=ROOT)


def test_a_guarded_promotion_is_refused_with_the_figures_unless_the_candidate_is_not_worse(
    outcome_server: RunningServer, answered: dict[str, Any]
) -> None:
    accuracy = {t["tag"]: t["live"]["accuracy"]["value"] for t in outcomes(outcome_server)["tags"]}
    weaker, stronger = sorted(accuracy, key=lambda tag: accuracy[tag])
    # At a margin of 0 the weaker (or equal) tag's interval reaches below 0: refused with the figures.
    refused = httpx.post(
        f"{outcome_server.url}/v1/admin/models/titanic/promote",
        json={"tag": weaker, "if_not_worse": 0},
        headers={"authorization": f"Bearer {ADMIN_KEY}"},
        timeout=60,
    )
    assert refused.status_code == 409, refused.text
    [detail] = refused.json()["detail"]
    verdict = detail["verdict"]
    assert detail["type"] in ("worse", "undetermined") and verdict["metric"] == "accuracy"
    assert (verdict["a"], verdict["b"]) == (stronger, weaker)  # against the other variant (equal weights)
    assert verdict["interval"][0] < 0 and sum(verdict["units"]) >= PREDICTIONS
    assert verdict["b_value"] == accuracy[weaker]
    cli = admin_cli(outcome_server, "promote", "titanic", "--tag", weaker, "--if-not-worse", "0")
    assert cli.returncode == 1 and "promotion refused" in cli.stderr and "95 % interval" in cli.stderr
    assert "[HTTP 409]" in cli.stderr
    bad = admin_cli(outcome_server, "promote", "titanic", "--tag", weaker, "--if-not-worse", "-1")
    assert bad.returncode == 1 and "if_not_worse" in bad.stderr
    # Not worse by more than half the accuracy: promoted.
    done = admin_cli(outcome_server, "promote", "titanic", "--tag", stronger, "--if-not-worse", "0.5")
    assert done.returncode == 0, done.stderr
    served = httpx.get(f"{outcome_server.url}/v1/models/titanic").json()["variants"]
    assert [v["tag"] for v in served] == [stronger]


def test_a_routing_change_starts_a_new_window(outcome_server: RunningServer) -> None:
    old = httpx.post(f"{outcome_server.url}/v1/models/titanic/predict", json={"instances": [PASSENGER]}).json()
    changed = httpx.put(
        f"{outcome_server.url}/v1/admin/models/titanic",
        json={"variants": [{"tag": "titanic:v1", "weight": 40}, {"tag": "titanic:v2", "weight": 60}]},
        headers={"authorization": f"Bearer {ADMIN_KEY}"},
        timeout=60,
    )
    assert changed.status_code == 200, changed.text
    report = outcomes(outcome_server)
    assert report["routing_revision"] == changed.json()["revision"]
    assert [t["live"]["outcomes"] for t in report["tags"]] == [0, 0]
    assert [r["status"] for r in send_feedback(outcome_server, [{"id": old["ids"][0], "truth": "died"}])] == [
        "outside_window"
    ]
    new = httpx.post(f"{outcome_server.url}/v1/models/titanic/predict", json={"instances": [PASSENGER]}).json()
    assert [r["status"] for r in send_feedback(outcome_server, [{"id": new["ids"][0], "truth": "died"}])] == [
        "accepted"
    ]
    assert sum(t["live"]["outcomes"] for t in outcomes(outcome_server)["tags"]) == 1
