"""A fleet's shared store, in process: the workers' reports of several replicas (live,
stale, dead) and a pushed archive's checks (what is stored, what is refused and left
untouched). The same against three real replicas behind nginx: test_fleet.py."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import bentoml
import numpy as np
import pytest
from bentoml._internal.models import ModelStore
from sklearn.dummy import DummyClassifier
from sklearn.linear_model import LogisticRegression

from model_server.config.routing import WorkerStatus, replicas_of
from model_server.constants import SCHEMA_METADATA_KEY
from model_server.errors import InvalidInput, StoreConflict
from model_server.models.schema import CLASSIFICATION, Feature, InputSchema
from model_server.rollout.store_push import digest, store_archive

SCHEMA = InputSchema(
    task=CLASSIFICATION, features=(Feature("a", "float64", 0, 1), Feature("b", "float64", 0, 1)), classes=("no", "yes")
)


def _report(directory: Path, replica: str, host: str, pid: int, revision: int, age_s: float) -> Path:
    path = directory / f"{replica}-{pid}.json"
    report = {
        "pid": pid,
        "started": 1.0,
        "worker": "0",
        "revision": revision,
        "at": "",
        "loaded_tags": [],
        "replica": replica,
        "host": host,
        "heartbeat": time.time() - age_s,
    }
    path.write_text(json.dumps(report))
    return path


def test_reports_of_other_hosts_count_while_their_heartbeat_is_fresh(tmp_path: Path) -> None:
    status = WorkerStatus(tmp_path / "routing.yaml", tmp_path / "workers", "replica-a")
    status.report(3, "0", ["iris:v1"])
    _report(status.directory, "replica-b", "another-host", 4242, 2, age_s=1)
    stale = _report(status.directory, "replica-c", "a-third-host", 4343, 1, age_s=WorkerStatus.STALE_S + 5)
    forgotten = _report(status.directory, "replica-d", "gone-host", 4444, 1, age_s=WorkerStatus.FORGET_S + 5)
    # A worker of this host whose process is gone: removed at once.
    dead = _report(status.directory, "replica-a", status.host, 999_999_999, 1, age_s=0)
    workers = status.workers()
    assert sorted((w["replica"], w["revision"]) for w in workers) == [("replica-a", 3), ("replica-b", 2)]
    assert stale.exists() and not forgotten.exists() and not dead.exists()
    assert replicas_of(workers) == [
        {"replica": "replica-a", "revision": 3, "workers": [os.getpid()]},
        {"replica": "replica-b", "revision": 2, "workers": [4242]},
    ]
    status.remove()
    assert [w["replica"] for w in status.workers()] == ["replica-b"]


def test_a_worker_reports_again_when_its_heartbeat_is_due(tmp_path: Path) -> None:
    shared = WorkerStatus(tmp_path / "routing.yaml", tmp_path / "workers", "replica-a")
    assert shared.due()
    shared.report(1, "0", [])
    assert not shared.due()
    shared.reported_at -= WorkerStatus.HEARTBEAT_S
    assert shared.due()
    # One machine's workers (no shared store) never need a heartbeat: their pids tell.
    assert not WorkerStatus(tmp_path / "routing.yaml").due()


@pytest.fixture(scope="module")
def archives(store_home: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, bytes]]:
    folder = tmp_path_factory.mktemp("archives")
    X = np.array([[0.0, 0.0], [1.0, 1.0], [0.2, 0.1], [0.9, 0.8]])
    y = np.array([0, 1, 0, 1])
    fitted = LogisticRegression().fit(X, y)
    bentoml.sklearn.save_model("pushed:v1", fitted, metadata={SCHEMA_METADATA_KEY: SCHEMA.to_dict()})
    bentoml.sklearn.save_model("store-foreign:v1", DummyClassifier().fit(X, y))
    made = {
        tag: Path(bentoml.models.export_model(tag, str(folder / f"{tag.replace(':', '-')}.bentomodel"))).read_bytes()
        for tag in ("pushed:v1", "store-foreign:v1")
    }
    yield made
    for tag in ("pushed:v1", "store-foreign:v1"):
        bentoml.models.delete(tag)


def _stored(store: Path) -> list[str]:
    if not store.exists():
        return []
    return sorted(f"{n.name}/{v.name}" for n in store.iterdir() if n.is_dir() for v in n.iterdir() if v.is_dir())


def test_an_archive_of_this_project_is_renamed_into_the_store(archives: dict[str, bytes], tmp_path: Path) -> None:
    store = tmp_path / "models"
    pushed = store_archive(archives["pushed:v1"], store, serving=set(), force=False)
    assert pushed.to_json() == {
        "tag": "pushed:v1",
        "bytes": len(archives["pushed:v1"]),
        "sha256": digest(archives["pushed:v1"]),
        "replaced": False,
    }
    assert _stored(store) == ["pushed/v1"] and (store / "pushed" / "latest").read_text() == "v1"
    stored = ModelStore(str(store)).get("pushed:v1")
    assert stored.info.metadata[SCHEMA_METADATA_KEY] == SCHEMA.to_dict()
    assert list((tmp_path / ".incoming").iterdir()) == []


@pytest.mark.parametrize(
    ("archive", "serving", "force", "error", "kind"),
    [
        ("store-foreign:v1", set(), False, InvalidInput, "foreign_archive"),
        (b"not an archive", set(), False, InvalidInput, "not_an_archive"),
        (b"", set(), False, InvalidInput, "missing"),
        ("pushed:v1", set(), False, StoreConflict, "tag_exists"),
        ("pushed:v1", {"pushed:v1"}, True, StoreConflict, "tag_serving"),
    ],
)
def test_a_refused_archive_leaves_the_store_as_it_was(
    archives: dict[str, bytes],
    tmp_path: Path,
    archive: str | bytes,
    serving: set[str],
    force: bool,
    error: type[Exception],
    kind: str,
) -> None:
    store = tmp_path / "models"
    store_archive(archives["pushed:v1"], store, serving=set(), force=False)
    before = (store / "pushed" / "v1" / "model.yaml").read_bytes()
    body = archives[archive] if isinstance(archive, str) else archive
    with pytest.raises(error) as caught:
        store_archive(body, store, serving=serving, force=force)
    assert caught.value.detail[0]["type"] == kind  # type: ignore[attr-defined]
    assert _stored(store) == ["pushed/v1"] and (store / "pushed" / "v1" / "model.yaml").read_bytes() == before
    assert list((tmp_path / ".incoming").iterdir()) == []


def test_force_replaces_a_tag_that_no_routing_names(archives: dict[str, bytes], tmp_path: Path) -> None:
    store = tmp_path / "models"
    store_archive(archives["pushed:v1"], store, serving=set(), force=False)
    assert store_archive(archives["pushed:v1"], store, serving={"pushed:v2"}, force=True).replaced
    assert _stored(store) == ["pushed/v1"]
