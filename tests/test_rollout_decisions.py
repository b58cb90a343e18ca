"""The decisions of `rollout/operations.py` on one in-process worker: a real routing file,
a real model store of tiny tags, no HTTP. What each refusal names, what it leaves
unchanged, when a change makes no revision, and where `load` takes a routing from.
The same operations over HTTP, gRPC and the CLI are tested against real servers in
test_rollout.py, test_repository.py and test_admin_cli.py."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import bentoml
import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from sklearn.linear_model import LogisticRegression

from model_server.config.routing import Routing, RoutingFile, WorkerStatus
from model_server.config.settings import ServedModel, ServerSettings
from model_server.constants import SCHEMA_METADATA_KEY
from model_server.core.server import InferenceCall, ModelServer
from model_server.errors import InvalidInput, ModelNotFound, RoutingChanged, RoutingReadOnly
from model_server.models import registry
from model_server.models.schema import CLASSIFICATION, Feature, InputSchema
from model_server.monitoring.metrics import Metrics
from model_server.processes import start_mark
from model_server.rollout.changes import changed
from model_server.rollout.operations import ChangeResult, Rollout, refuse_model_files

NAMES = ("decide", "configured_only")
TWO = InputSchema(
    task=CLASSIFICATION, features=(Feature("a", "float64", 0, 1), Feature("b", "float64", 0, 1)), classes=("no", "yes")
)
THREE = InputSchema(task=CLASSIFICATION, features=(*TWO.features, Feature("c", "float64", 0, 1)), classes=("no", "yes"))
ADMIN = "ab12cd34"


def store(tag: str, schema: InputSchema) -> None:
    width = len(schema.features)
    X = np.array([[0.0] * width, [1.0] * width, [0.2] * width, [0.9] * width])
    model = LogisticRegression().fit(X, np.array([0, 1, 0, 1]))
    bentoml.sklearn.save_model(tag, model, metadata={SCHEMA_METADATA_KEY: schema.to_dict()})


@pytest.fixture(scope="module")
def stored_tags(store_home: str) -> Iterator[None]:
    """decide:a and decide:b take (a, b); decide:wide adds c; configured_only:v1 is in
    the store and the configuration but not served at first."""
    store("decide:a", TWO)
    store("decide:b", TWO)
    store("decide:wide", THREE)
    store("configured_only:v1", TWO)
    yield
    for model in bentoml.models.list():
        if model.tag.name in NAMES:
            bentoml.models.delete(model.tag)


CONFIG = {
    "routing_apply_timeout_s": 2,
    "models": {
        "decide": {"variants": [{"tag": "decide:a"}]},
        "configured_only": {"variants": [{"tag": "configured_only:v1"}]},
    },
}


class Worker:
    """One worker's core and its admin operations over a routing file in `folder`."""

    def __init__(self, folder: Path, writable: bool = True, file: RoutingFile | None = None) -> None:
        settings = ServerSettings.model_validate(CONFIG)
        served = {"decide": settings.models["decide"]}
        self.server = ModelServer(
            settings,
            {"decide:a": registry.load("decide:a")},
            Metrics(CollectorRegistry()),
            Routing(revision=0, models=served),
        )
        path = folder / "routing.yaml"
        self.file = file or RoutingFile(path, writable=writable)
        self.status = WorkerStatus(path)
        self.rollout = Rollout(lambda: self.server, settings, self.file, self.status)

    def run(self, change: Callable[[Rollout], Any]) -> ChangeResult:
        result: ChangeResult = asyncio.run(change(self.rollout))
        return result

    def answer(self) -> str:
        result = asyncio.run(self.server.infer(InferenceCall("decide", instances=[[0.1, 0.2]])))
        return result.tag


@pytest.fixture()
def worker(stored_tags: None, tmp_path: Path) -> Iterator[Worker]:
    made = Worker(tmp_path)
    yield made
    made.status.remove()


def problem_of(excinfo: pytest.ExceptionInfo[InvalidInput]) -> dict[str, Any]:
    problems: list[dict[str, Any]] = excinfo.value.detail
    assert len(problems) == 1, problems
    return problems[0]


def test_a_change_writes_the_next_revision_serves_it_and_audits_who_before_and_after(
    worker: Worker, caplog: pytest.LogCaptureFixture
) -> None:
    body = {"variants": [{"tag": "decide:a", "weight": 50}, {"tag": "decide:b", "weight": 50}]}
    with caplog.at_level(logging.INFO, logger="model_server.audit"):
        result = worker.run(lambda r: r.set("decide", body, ADMIN))
    assert (result.revision, result.status, result.behind) == (1, 200, [])
    assert [v.tag for v in result.routing.variants] == ["decide:a", "decide:b"]  # type: ignore[union-attr]
    written = worker.file.read()
    assert written is not None and written.revision == 1 and worker.server.revision == 1
    assert written.models["decide"].variants[1].tag == "decide:b"
    assert [w["revision"] for w in result.workers] == [1]
    (line,) = [r for r in caplog.records if r.name == "model_server.audit"]
    fields = line.fields  # type: ignore[attr-defined]
    assert (fields["action"], fields["by"], fields["revision"]) == ("set", ADMIN, 1)
    assert fields["before"] == {"variants": [{"tag": "decide:a", "weight": 1.0}], "unknown_categories": "reject"}
    assert [v["tag"] for v in fields["after"]["variants"]] == ["decide:a", "decide:b"]


def test_a_change_that_changes_nothing_makes_no_revision_and_keeps_the_rollback_target(worker: Worker) -> None:
    worker.run(lambda r: r.set("decide", {"variants": [{"tag": "decide:b"}]}, ADMIN))
    again = worker.run(lambda r: r.load("decide", None, ADMIN))  # served as it is already
    assert again.revision == 1 and worker.file.read().revision == 1  # type: ignore[union-attr]
    back = worker.run(lambda r: r.rollback("decide", ADMIN))
    assert back.revision == 2 and [v.tag for v in back.routing.variants] == ["decide:a"]  # type: ignore[union-attr]
    assert worker.answer() == "decide:a"


def test_a_read_only_routing_file_refuses_every_change_before_looking_at_the_body(
    stored_tags: None, tmp_path: Path
) -> None:
    worker = Worker(tmp_path, writable=False)
    for change in (
        lambda r: r.set("decide", {"variants": "not even a list"}, ADMIN),
        lambda r: r.promote("decide", {"tag": "decide:b"}, ADMIN),
        lambda r: r.remove("decide", ADMIN),
        lambda r: r.reset(ADMIN),
    ):
        with pytest.raises(RoutingReadOnly):
            worker.run(change)
    assert not worker.file.path.exists() and worker.server.revision == 0


@pytest.mark.parametrize(
    ("body", "loc", "kind"),
    [
        ({"variants": [{"tag": "decide:a"}, {"tag": "decide:v404"}]}, ["variants", 1, "tag"], "unknown_tag"),
        ({"variants": [{"tag": "decide:a"}], "shadow": "decide:v404"}, ["shadow"], "unknown_tag"),
        ({"variants": [{"tag": "decide:a"}, {"tag": "decide:wide"}]}, ["variants", 1, "tag"], "schema_mismatch"),
        ({"variants": [{"tag": "decide:b", "runtime": "onnx"}]}, ["variants", 0, "runtime"], "no_onnx_export"),
    ],
)
def test_a_refused_change_names_the_field_and_changes_nothing(
    worker: Worker, body: dict[str, Any], loc: list[Any], kind: str
) -> None:
    with pytest.raises(InvalidInput) as refused:
        worker.run(lambda r: r.set("decide", body, ADMIN))
    problem = problem_of(refused)
    assert (problem["loc"], problem["type"]) == (loc, kind)
    assert not worker.file.path.exists() and worker.server.revision == 0
    assert worker.server._prepared == {}  # nothing loaded for it stays behind
    assert worker.answer() == "decide:a"


def test_the_wide_tag_is_refused_against_the_served_schema_even_alone(worker: Worker) -> None:
    """A name's new tags are compared with what it serves now, not only with each other."""
    with pytest.raises(InvalidInput) as refused:
        worker.run(lambda r: r.set("decide", {"variants": [{"tag": "decide:wide"}]}, ADMIN))
    problem = problem_of(refused)
    assert problem["type"] == "schema_mismatch" and "adds 'c'" in problem["msg"]


class RacingFile(RoutingFile):
    """A routing file another admin writes to just before this worker takes its lock."""

    def __init__(self, path: Path, other: Callable[[Routing], Routing]) -> None:
        super().__init__(path)
        self.other = other

    def update(self, change: Callable[[Routing], Routing], initial: Routing) -> tuple[Routing, Routing]:
        other, self.other = self.other, lambda routing: routing
        super().update(other, initial)
        return super().update(change, initial)


def test_a_change_proposed_from_a_routing_that_moved_meanwhile_is_refused_not_applied(
    stored_tags: None, tmp_path: Path
) -> None:
    both = ServedModel.model_validate({"variants": [{"tag": "decide:a"}, {"tag": "decide:b"}]})
    worker = Worker(tmp_path)
    worker.run(lambda r: r.set("decide", {"variants": [{"tag": "decide:a"}], "shadow": "decide:b"}, ADMIN))
    # A rollback proposed from revision 1 meets revision 2 under the lock.
    racing = RacingFile(worker.file.path, lambda r: changed(r, "decide", both, "other"))
    worker.rollout.file = racing
    with pytest.raises(RoutingChanged):
        worker.run(lambda r: r.rollback("decide", ADMIN))
    assert racing.read().revision == 2  # type: ignore[union-attr]
    assert [v.tag for v in racing.read().models["decide"].variants] == ["decide:a", "decide:b"]  # type: ignore[union-attr]


def test_load_takes_the_body_else_the_served_routing_else_the_configuration_else_the_newest_tag(
    worker: Worker,
) -> None:
    configured = worker.run(lambda r: r.load("configured_only", None, ADMIN))
    assert [v.tag for v in configured.routing.variants] == ["configured_only:v1"]  # type: ignore[union-attr]
    store("configured_only:v2", TWO)  # the configuration names v1, the newest is v2: still v1
    again = worker.run(lambda r: r.load("configured_only", None, ADMIN))
    assert again.revision == configured.revision
    worker.run(lambda r: r.remove("decide", ADMIN))
    newest = worker.run(lambda r: r.load("decide", None, ADMIN))  # configured as decide:a
    assert [v.tag for v in newest.routing.variants] == ["decide:a"]  # type: ignore[union-attr]
    with pytest.raises(ModelNotFound):
        worker.run(lambda r: r.load("never_stored", None, ADMIN))
    given = worker.run(lambda r: r.load("decide", {"variants": [{"tag": "decide:b"}]}, ADMIN))
    assert [v.tag for v in given.routing.variants] == ["decide:b"]  # type: ignore[union-attr]


def test_a_name_outside_the_configuration_loads_its_newest_stored_tag(worker: Worker) -> None:
    store("unconfigured:old", TWO)
    store("unconfigured:new", TWO)
    try:
        loaded = worker.run(lambda r: r.load("unconfigured", None, ADMIN))
        assert [v.tag for v in loaded.routing.variants] == ["unconfigured:new"]  # type: ignore[union-attr]
        index = {entry["name"]: entry for entry in worker.rollout.index()}
        assert index["unconfigured"]["state"] == "READY" and index["decide"]["version"] == "a"
    finally:
        for tag in ("unconfigured:old", "unconfigured:new"):
            bentoml.models.delete(tag)


def test_a_change_waits_for_the_workers_and_names_those_behind(worker: Worker) -> None:
    # Another live process (this test's parent) reports an old revision for the same file.
    other = worker.status.directory / f"{os.getppid()}.json"
    other.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    other.write_text(
        json.dumps(
            {
                "pid": os.getppid(),
                "started": start_mark(os.getppid()),
                "worker": "1",
                "revision": 0,
                "at": "",
                "loaded_tags": [],
            }
        )
    )
    try:
        result = worker.run(lambda r: r.set("decide", {"variants": [{"tag": "decide:b"}]}, ADMIN))
    finally:
        other.unlink()
    assert result.status == 202 and [(w["pid"], w["revision"]) for w in result.behind] == [(os.getppid(), 0)]
    assert result.to_json()["workers_behind"] == result.behind
    assert sorted(w["revision"] for w in result.to_json()["workers"]) == [0, 1]


def test_model_files_in_a_repository_load_are_refused_by_name() -> None:
    refuse_model_files(["config", "other"])
    with pytest.raises(InvalidInput) as refused:
        refuse_model_files(["config", "file:1/model.onnx"])
    assert problem_of(refused)["loc"] == ["parameters", "file:1/model.onnx"]
