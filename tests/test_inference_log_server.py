"""The inference log on a real server (two workers, sampling 1.0, CloudEvents to a
receiver of the test's): after a stop, the Parquet files hold exactly the rows answered
on every door, with their ids and inputs, and the feedback beside them; each logged
request also went out as two CloudEvents; `python -m training --from-log` trains a tag on
exactly the logged rows joined with their feedback. And a queue too small for a request
drops its rows, counted, while every request is answered."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import bentoml
import httpx
import numpy as np
import pandas as pd
import pytest
import tritonclient.grpc as triton_grpc
import yaml

from model_server.local_server import ONE_WORKER, RunningServer, start_server
from tests.test_outcomes_server import held_out, samples
from training import from_log, tables

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent


class Receiver(BaseHTTPRequestHandler):
    """Keeps every CloudEvent posted to it (headers and body)."""

    events: list[tuple[dict[str, str], Any]] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers["content-length"]))
        Receiver.events.append(({k.lower(): v for k, v in self.headers.items()}, json.loads(body)))
        self.send_response(202)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def receiver() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/events"
    server.shutdown()


def logging_configuration(directory: Path, **log: Any) -> Path:
    document = yaml.safe_load((ROOT / "configuration.yaml").read_text())
    settings = document["services"]["TabularModelServer"]["model_server"]
    settings["inference_log"] = {"enabled": True, "directory": str(directory / "log"), **log}
    path = directory / "configuration.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


@pytest.fixture(scope="module")
def logged(
    trained_default_models: list[str], tmp_path_factory: pytest.TempPathFactory, receiver: str
) -> dict[str, Any]:
    """Titanic's held-out passengers in requests of 1 to 5 rows over JSON, one over gRPC,
    feedback for every one of them; then the server is stopped (its files closed)."""
    directory = tmp_path_factory.mktemp("inference-log")
    server = start_server(logging_configuration(directory, rotate_seconds=1.0, cloudevents_url=receiver))
    rows, labels = held_out()
    sent: list[tuple[list[Any], str, str]] = []  # (row, label, id)
    request_ids = []
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            start = 0
            sizes = np.random.default_rng(0).integers(1, 6, 200)
            for size in sizes:
                chunk = list(range(start, min(start + int(size), len(rows))))
                if not chunk:
                    break
                answer = client.post("/v1/models/titanic/predict", json={"instances": [rows[i] for i in chunk]})
                assert answer.status_code == 200, answer.text
                request_ids.append(answer.headers["x-request-id"])
                sent += [(rows[i], labels[i], answer.json()["ids"][j]) for j, i in enumerate(chunk)]
                start += len(chunk)
        grpc_ids = infer_over_grpc(server, rows[0])
        items = [{"id": i, "truth": label} for _, label, i in sent]
        for first in range(0, len(items), 100):
            part = items[first : first + 100]
            answer = httpx.post(f"{server.url}/v1/models/titanic/feedback", json={"feedback": part})
            assert answer.json()["counts"]["accepted"] == len(part)
        metrics = httpx.get(f"{server.url}/metrics", timeout=30).text
        time.sleep(1.5)  # the last rows reach their file
    finally:
        server.stop()
    return {
        "directory": directory / "log",
        "sent": sent,
        "grpc_ids": grpc_ids,
        "request_ids": request_ids,
        "metrics": metrics,
        "home": server.home,
    }


def infer_over_grpc(server: RunningServer, row: list[Any]) -> list[str]:
    with triton_grpc.InferenceServerClient(server.grpc_target) as client:
        inputs = []
        for feature, value in zip(["pclass", "sex", "age", "sibsp", "parch"], row, strict=True):
            if feature in ("pclass", "sex"):
                tensor = triton_grpc.InferInput(feature, [1], "BYTES")
                tensor.set_data_from_numpy(np.array([(value or "").encode()], dtype=np.object_))
            else:
                tensor = triton_grpc.InferInput(feature, [1, 1], "FP64")
                tensor.set_data_from_numpy(np.array([[np.nan if value is None else value]], dtype=np.float64))
            inputs.append(tensor)
        result = client.infer("titanic", inputs, headers={"x-request-id": "grpc-call-1"})
        return [i.decode() for i in result.as_numpy("prediction_id")]


def read_all(folder: Path) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(f) for f in sorted(folder.rglob("*.parquet"))], ignore_index=True)


def test_rows_written_equal_rows_answered_on_every_door(logged: dict[str, Any]) -> None:
    directory = logged["directory"]
    assert not list(directory.rglob("*.partial"))
    rows = read_all(directory / "predictions" / "titanic")
    sent = logged["sent"]
    assert len(rows) == len(sent) + 1 and rows["id"].is_unique
    assert set(rows["id"]) == {i for _, _, i in sent} | set(logged["grpc_ids"])
    by_id = rows.set_index("id")
    for row, _, prediction_id in sent[:50]:
        logged_row = by_id.loc[prediction_id]
        for feature, value in zip(["pclass", "sex", "age", "sibsp", "parch"], row, strict=True):
            got = logged_row[f"input.{feature}"]
            assert (pd.isna(got) and value is None) or got == value
    assert set(by_id.loc[logged["grpc_ids"], "request_id"]) == {"grpc-call-1"}
    assert set(rows["request_id"]) >= set(logged["request_ids"])
    assert set(rows["tag"]) == {"titanic:v1"} and rows["output.predict"].isin(["died", "survived"]).all()
    feedback = read_all(directory / "feedback" / "titanic")
    assert len(feedback) == len(sent) and set(feedback["status"]) == {"accepted"}
    assert sorted(feedback["truth"]) == sorted(label for _, label, _ in sent)
    counted = samples(logged["metrics"], "model_server_inference_log_rows_total")
    written = sum(v for labels, v in counted if "written" in labels)
    assert written <= len(sent) + 1  # the files closed before the scrape (the rest at the stop)


def test_each_logged_request_went_out_as_two_cloudevents(logged: dict[str, Any]) -> None:
    events = [(h, b) for h, b in Receiver.events if h.get("ce-inferenceservicename") == "titanic"]
    kinds = [h["ce-type"] for h, _ in events]
    requests = len(logged["request_ids"]) + 1
    assert kinds.count("org.kubeflow.serving.inference.request") == requests
    assert kinds.count("org.kubeflow.serving.inference.response") == requests
    assert {h["ce-id"] for h, _ in events} == set(logged["request_ids"]) | {"grpc-call-1"}
    assert all(h["ce-specversion"] == "1.0" and h["ce-endpoint"] == "titanic:v1" for h, _ in events)
    responses = [b for h, b in events if h["ce-type"].endswith("response")]
    assert {i for b in responses for i in b["ids"]} == {i for _, _, i in logged["sent"]} | set(logged["grpc_ids"])


def test_training_from_the_log_uses_the_logged_rows_joined_with_their_feedback(logged: dict[str, Any]) -> None:
    directory = logged["directory"]
    command = [sys.executable, "-m", "training", "--from-log", str(directory), "--name", "titanic", "--version", "log1"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT, env=dict(os.environ))
    assert done.returncode == 0, done.stderr
    assert "saved titanic:log1" in done.stdout
    frame, task = from_log.joined(directory, "titanic")
    # The joined table is exactly what was sent with feedback (the gRPC row had none).
    got = sorted(map(repr, frame.astype(object).where(frame.notna(), None).values.tolist()))
    want = sorted(repr([*row, label]) for row, label, _ in logged["sent"])
    assert got == want and task == "classification"
    table = tables.from_frame("titanic", frame, "truth", f"log:{directory.name}", task=task)
    info = bentoml.models.get("titanic:log1").info
    assert info.metadata["data_sha256"] == table.fingerprint()
    assert info.metadata["training_rows"] + info.metadata["test_rows"] == len(logged["sent"])


def test_a_queue_too_small_for_a_request_drops_and_counts_its_rows(
    trained_default_models: list[str], tmp_path: Path
) -> None:
    server = start_server(logging_configuration(tmp_path, queue_rows=1), ONE_WORKER)
    try:
        rows, _ = held_out()
        for first in range(0, 40, 2):
            answer = httpx.post(f"{server.url}/v1/models/titanic/predict", json={"instances": rows[first : first + 2]})
            assert answer.status_code == 200 and len(answer.json()["ids"]) == 2
        metrics = httpx.get(f"{server.url}/metrics", timeout=30).text
    finally:
        server.stop()
    dropped = sum(v for labels, v in samples(metrics, "model_server_inference_log_rows_total") if "dropped" in labels)
    assert dropped == 40
    assert not list((tmp_path / "log").rglob("*.parquet"))
