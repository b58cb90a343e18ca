"""Drift on a real server with configuration.yaml's two workers: a stream drawn from the
training data stays below PSI 0.1, a stream with one feature shifted raises that feature
alone above 0.2, the counts are the sum over both workers, and a routing change starts a
new window."""

from __future__ import annotations

import itertools
import math
import os
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
import psutil
import pytest
from sklearn.model_selection import train_test_split

from model_server.local_server import RunningServer
from model_server.processes import start_mark
from training import datasets, tables
from training.recipes import DEFAULT_SEED
from training.register import TEST_SIZE

if TYPE_CHECKING:
    from tests.conftest import AdminServerFactory

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
ADMIN_KEY = "admin-key-for-drift-tests"
ROWS, BATCH = 2400, 100
SHIFTED = "mean texture"
_weights = itertools.count(60)


@pytest.fixture(scope="module")
def drift_server(
    admin_server_factory: AdminServerFactory,
) -> Iterator[RunningServer]:
    """The project's configuration (two workers), with an admin key to change the routing."""
    with admin_server_factory(ADMIN_KEY) as running:
        yield running


def training_rows(name: str) -> tuple[list[str], list[list[Any]]]:
    """The rows a default tag was trained on: its data set and the split registration made."""
    data: datasets.Dataset | tables.Table = tables.titanic() if name == "titanic" else datasets.load(name)
    X = data.frame if isinstance(data, tables.Table) else data.X
    X_train, _, _, _ = train_test_split(X, data.y, test_size=TEST_SIZE, random_state=DEFAULT_SEED, stratify=data.y)
    if isinstance(data, tables.Table):
        names = list(X_train.columns)
        rows = [[_json_value(v) for v in row] for row in X_train.itertuples(index=False)]
        return names, rows
    return list(data.feature_names), X_train.tolist()


def _json_value(value: Any) -> Any:
    """A training value as a client sends it: the missing-category marker and NaN as null."""
    if isinstance(value, str):
        return None if value == tables.MISSING_CATEGORY else value
    return None if value is None or math.isnan(value) else float(value)


def stream(rows: list[list[Any]], count: int, seed: int) -> list[list[Any]]:
    chosen = np.random.default_rng(seed).integers(0, len(rows), count)
    return [list(rows[i]) for i in chosen]


def send(server: RunningServer, name: str, rows: list[list[Any]]) -> None:
    """Rows in requests of BATCH from 8 threads, each request on a new connection, so that
    both workers take some."""

    def post(batch: list[list[Any]]) -> None:
        answer = httpx.post(
            f"{server.url}/v1/models/{name}/predict",
            json={"instances": batch},
            headers={"connection": "close"},
            timeout=60,
        )
        assert answer.status_code == 200, answer.text

    batches = [rows[i : i + BATCH] for i in range(0, len(rows), BATCH)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(post, batches))


def spread_over_both_workers(server: RunningServer, name: str, rows: list[list[Any]], sent: int) -> int:
    """The workers accept from one shared socket, and a worker already awake may take every
    new connection: send more training rows, a batch at a time, until both workers have
    counted some (at most 40 batches). The rows sent in all."""
    for attempt in range(40):
        per_worker = live_tag(drift(server, f"/v1/models/{name}/drift"), f"{name}:v1")["window"]["rows_per_worker"]
        if len(per_worker) == 2 and min(per_worker) > 0:
            break
        extra = stream(rows, BATCH, 100 + attempt)
        send(server, name, extra)
        sent += len(extra)
    return sent


def drift(server: RunningServer, path: str) -> dict[str, Any]:
    answer = httpx.get(f"{server.url}{path}", headers={"connection": "close"}, timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()


def live_tag(answer: dict[str, Any], tag: str) -> dict[str, Any]:
    [found] = [t for t in answer["tags"] if t["tag"] == tag]
    return found


def new_window(server: RunningServer) -> int:
    """Change the routing (iris' split), which starts a new drift window; its revision."""
    weight = next(_weights)
    answer = httpx.put(
        f"{server.url}/v1/admin/models/iris",
        json={"variants": [{"tag": "iris:v1", "weight": weight}, {"tag": "iris:v2", "weight": 100 - weight}]},
        headers={"authorization": f"Bearer {ADMIN_KEY}"},
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    return int(answer.json()["revision"])


def test_a_stream_drawn_from_the_training_data_keeps_every_psi_below_0_1(drift_server: RunningServer) -> None:
    revision = new_window(drift_server)
    for name, seed in (("breast_cancer", 1), ("titanic", 2)):
        _, rows = training_rows(name)
        send(drift_server, name, stream(rows, ROWS, seed))
        sent = spread_over_both_workers(drift_server, name, rows, ROWS)
        answer = drift(drift_server, f"/v1/models/{name}/drift")
        assert answer["routing_revision"] == revision
        found = live_tag(answer, f"{name}:v1")
        # Every row counted once, by the worker that answered it; both workers answered some.
        assert found["window"]["rows"] == sent
        per_worker = found["window"]["rows_per_worker"]
        assert len(per_worker) == 2 and min(per_worker) > 0 and sum(per_worker) == sent, per_worker
        for feature in found["features"]:
            assert sum(b["count"] for b in feature["bins"]) == sent
        assert max(found["psi"]["features"].values()) < 0.1, found["psi"]
        assert found["psi"]["predictions"] < 0.1
    titanic = live_tag(drift(drift_server, "/v1/models/titanic/drift"), "titanic:v1")
    age = next(f for f in titanic["features"] if f["name"] == "age")
    assert age["bins"][-1]["bin"] == "missing" and age["bins"][-1]["count"] > 0  # null ages are counted as missing
    # The shadow (breast_cancer:v2) is listed but counts nothing: it answers no caller.
    shadow = live_tag(drift(drift_server, "/v1/models/breast_cancer/drift"), "breast_cancer:v2")
    assert shadow["window"]["rows"] == 0 and shadow["psi"]["predictions"] is None


def test_a_shifted_feature_alone_rises_above_0_2_whichever_worker_answers(drift_server: RunningServer) -> None:
    new_window(drift_server)
    emptied = live_tag(drift(drift_server, "/v1/models/breast_cancer/drift"), "breast_cancer:v1")
    assert emptied["window"]["rows"] == 0 and emptied["psi"]["features"]["mean radius"] is None
    names, rows = training_rows("breast_cancer")
    shifted = stream(rows, ROWS, 3)
    column = names.index(SHIFTED)
    for row in shifted:
        row[column] *= 1.5
    send(drift_server, "breast_cancer", shifted)
    # Asked on new connections, either worker answers; the answer is the same.
    answers = [drift(drift_server, "/v1/models/breast_cancer/versions/v1/drift") for _ in range(8)]
    assert all(a == answers[0] for a in answers)
    [found] = answers[0]["tags"]
    assert found["tag"] == "breast_cancer:v1" and found["window"]["rows"] == ROWS
    psi = found["psi"]["features"]
    assert psi[SHIFTED] > 0.2, psi
    assert max(v for k, v in psi.items() if k != SHIFTED) < 0.1, psi
    assert found["top_drifting"][0]["feature"] == SHIFTED
    assert emptied["window"]["since"] is not None and found["window"]["since"] == emptied["window"]["since"]
    metrics = httpx.get(f"{drift_server.url}/metrics", timeout=30).text
    gauge = f'model_server_feature_psi{{feature="{SHIFTED}",model="breast_cancer",tag="breast_cancer:v1"}}'
    [line] = [line for line in metrics.splitlines() if line.startswith(gauge)]
    assert float(line.rsplit(" ", 1)[1]) == pytest.approx(psi[SHIFTED], abs=1e-5)


def test_one_row_requests_counted_together_reach_both_workers_counts_exactly(drift_server: RunningServer) -> None:
    """One-row calls run inline and their rows wait (at most 50 ms) to be counted together.
    Read from the counts files, as a worker reads another's (a drift request would make the
    worker that answers it count its own waiting rows first): every row lands there
    without any read, once, in the file of the worker that answered it."""
    new_window(drift_server)
    _, rows = training_rows("breast_cancer")
    sent = 0
    for attempt in range(20):  # until both workers took some (they share one socket)
        batch = stream(rows, 120, 11 + attempt)
        send_one_by_one(drift_server, "breast_cancer", batch)
        sent += len(batch)
        per_worker = rows_in_counts_files(drift_server, "breast_cancer:v1", sent)
        if len(per_worker) == 2 and min(per_worker) > 0:
            break
    assert sum(per_worker) == sent and len(per_worker) == 2 and min(per_worker) > 0, (sent, per_worker)
    answer = live_tag(drift(drift_server, "/v1/models/breast_cancer/drift"), "breast_cancer:v1")
    assert answer["window"]["rows"] == sent and sorted(answer["window"]["rows_per_worker"]) == sorted(per_worker)
    for feature in answer["features"]:
        assert sum(b["count"] for b in feature["bins"]) == sent


def rows_in_counts_files(server: RunningServer, tag: str, expected: int) -> list[int]:
    """The rows each worker's counts file of `tag` holds, once they add up to `expected`
    or after 5 s: the files of the server's directory (docs/monitoring.md), named after the
    workers' parent process; a new window removed the older ones."""
    workers = [
        p for p in psutil.Process(server.process.pid).children(recursive=True) if "worker" in " ".join(p.cmdline())
    ]
    parent = psutil.Process(workers[0].ppid())
    folder = (
        Path(tempfile.gettempdir()) / f"model-server-drift-{os.getuid()}" / f"{parent.pid}-{start_mark(parent.pid)}"
    )
    deadline = time.monotonic() + 5
    while True:
        found = [
            int(np.fromfile(path, dtype=np.int64)[1]) for path in folder.glob(f"{tag.replace(':', '+')}.r*.counts")
        ]
        if sum(found) >= expected or time.monotonic() > deadline:
            return found
        time.sleep(0.02)


def send_one_by_one(server: RunningServer, name: str, rows: list[list[Any]]) -> None:
    """Each row in a request of its own, on a new connection, from 8 threads."""

    def post(row: list[Any]) -> None:
        answer = httpx.post(
            f"{server.url}/v1/models/{name}/predict",
            json={"instances": [row]},
            headers={"connection": "close"},
            timeout=60,
        )
        assert answer.status_code == 200, answer.text

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(post, rows))


def test_unknown_names_and_versions_are_404(drift_server: RunningServer) -> None:
    assert httpx.get(f"{drift_server.url}/v1/models/nope/drift").status_code == 404
    missing = httpx.get(f"{drift_server.url}/v1/models/iris/versions/v404/drift")
    assert missing.status_code == 404 and "v404" in missing.json()["error"]
