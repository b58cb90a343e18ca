"""Hot update against real servers: promote, split, shadow and roll back while clients
keep sending requests; the routing survives a restart; bad admin input changes nothing."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import httpx
import pytest

# Triton's own messages: its service_pb2 and this project's stubs cannot share one process
# (the same `inference.*` names), and tests/test_repository.py uses Triton's.
from tritonclient.grpc import service_pb2 as pb

from model_server.config.auth import KeyFingerprints
from model_server.config.routing import Routing, RoutingFile
from model_server.config.settings import ServedModel, load_settings
from model_server.local_server import ONE_WORKER, RunningServer, start_server
from tests.test_http_api import metric
from tests.test_operations import workers

if TYPE_CHECKING:
    from tests.conftest import AdminServerFactory

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
ADMIN_KEY = "admin-key-for-tests"
ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}
ROW = [5.1, 3.5, 1.4, 0.2]
CLIENTS = 16


@pytest.fixture(scope="module")
def routing_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("routing") / "routing.yaml"


@pytest.fixture(scope="module")
def admin_server(admin_server_factory: AdminServerFactory, routing_file: Path) -> Iterator[RunningServer]:
    """The project's configuration with an admin key and its own routing file."""
    with admin_server_factory(ADMIN_KEY, routing_file=routing_file) as running:
        yield running


def admin(server: RunningServer, method: str, path: str, body: Any = None, **headers: str) -> httpx.Response:
    return httpx.request(
        method, f"{server.url}{path}", json=body, headers={**ADMIN, **headers}, timeout=60, verify=server.verify
    )


def routing_of(server: RunningServer) -> dict[str, Any]:
    response = admin(server, "GET", "/v1/admin/models")
    assert response.status_code == 200, response.text
    return response.json()


@dataclass
class Answer:
    sent: float
    received: float
    status: int
    tag: str | None
    revision: int | None


@dataclass
class AdminCall:
    name: str
    returned: float
    revision: int
    tags: set[str]  # the variants of iris that this revision serves


async def _client(url: str, stop: asyncio.Event, answers: list[Answer]) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        while not stop.is_set():
            sent = time.monotonic()
            try:
                response = await client.post(f"{url}/v1/models/iris/predict", json={"instances": [ROW]})
                status = response.status_code
                tag, revision = response.headers.get("x-model-tag"), response.headers.get("x-routing-revision")
            except httpx.HTTPError:
                status, tag, revision = 0, None, None
            answers.append(Answer(sent, time.monotonic(), status, tag, None if revision is None else int(revision)))


def test_promote_split_shadow_and_rollback_under_load_fail_no_request(admin_server: RunningServer) -> None:
    steps: list[tuple[str, str, str, Any]] = [
        ("promote v2", "POST", "/v1/admin/models/iris/promote", {"tag": "iris:v2"}),
        (
            "50/50",
            "PUT",
            "/v1/admin/models/iris",
            {"variants": [{"tag": "iris:v1", "weight": 50}, {"tag": "iris:v2", "weight": 50}]},
        ),
        (
            "shadow",
            "PUT",
            "/v1/admin/models/iris",
            {"variants": [{"tag": "iris:v1", "weight": 100}], "shadow": "iris:v2"},
        ),
        ("rollback", "POST", "/v1/admin/models/iris/rollback", None),
    ]
    start_revision = routing_of(admin_server)["revision"]
    answers: list[Answer] = []
    calls: list[AdminCall] = []

    async def scenario() -> None:
        stop = asyncio.Event()
        clients = [asyncio.create_task(_client(admin_server.url, stop, answers)) for _ in range(CLIENTS)]
        async with httpx.AsyncClient(timeout=60, headers=ADMIN) as operator:
            await asyncio.sleep(1.0)
            for name, method, path, body in steps:
                response = await operator.request(method, f"{admin_server.url}{path}", json=body)
                assert response.status_code == 200, f"{name}: {response.text}"
                result = response.json()
                # Answered once every worker serves the change.
                assert result["workers_behind"] == []
                assert len(result["workers"]) == 2
                assert {w["revision"] for w in result["workers"]} == {result["revision"]}
                tags = {v["tag"] for v in result["routing"]["variants"]}
                calls.append(AdminCall(name, time.monotonic(), result["revision"], tags))
                await asyncio.sleep(1.0)
        stop.set()
        await asyncio.gather(*clients)

    asyncio.run(scenario())

    print(f"{len(answers)} answers from {CLIENTS} clients over revisions {sorted({a.revision for a in answers})}")
    # Load on every routing (how much depends on the machine; that each had some does not).
    served = {call.revision: sum(1 for a in answers if a.revision == call.revision) for call in calls}
    assert all(count >= 20 for count in served.values()), served
    failed = [a for a in answers if a.status != 200]
    assert failed == [], f"{len(failed)} failed requests, first {failed[:3]}"
    assert [c.revision for c in calls] == list(range(start_revision + 1, start_revision + 5))
    assert [c.tags for c in calls] == [{"iris:v2"}, {"iris:v1", "iris:v2"}, {"iris:v1"}, {"iris:v1", "iris:v2"}]
    # Every answer's tag belongs to the routing of the revision that answered it.
    allowed = {start_revision: {"iris:v1", "iris:v2"}} | {c.revision: c.tags for c in calls}
    wrong = [a for a in answers if a.tag not in allowed[a.revision]]
    assert wrong == []
    # Once a change has returned, no worker answers with an older routing.
    for call in calls:
        late = [a for a in answers if a.sent > call.returned and a.revision < call.revision]
        assert late == [], f"after {call.name}: {len(late)} answers from older revisions"
    # Each routing really served: v2 alone after the promote, both in the 50/50 split.
    by_revision: dict[int, set[str]] = {}
    for answer in answers:
        by_revision.setdefault(answer.revision, set()).add(answer.tag)  # type: ignore[arg-type]
    assert by_revision[calls[0].revision] == {"iris:v2"}
    assert by_revision[calls[1].revision] == {"iris:v1", "iris:v2"}
    assert by_revision[calls[2].revision] == {"iris:v1"}
    # The shadow compared the live answers of its revision.
    metrics = httpx.get(f"{admin_server.url}/metrics", timeout=10).text
    compared = metric(
        metrics, "model_server_shadow_comparisons_total", model="iris", tag="iris:v1", shadow_tag="iris:v2"
    )
    assert compared > 0


def test_answers_and_the_gauge_carry_the_revision(admin_server: RunningServer) -> None:
    """On every door: /v1, BentoML's /predict, OIP REST (headers) and OIP gRPC (trailing metadata)."""
    revision = routing_of(admin_server)["revision"]
    doors = {
        "/v1/models/iris/predict": {"instances": [ROW]},
        "/predict": {"model": "iris", "instances": [ROW]},
        "/v2/models/iris/infer": {"inputs": [{"name": "features", "datatype": "FP64", "shape": [1, 4], "data": ROW}]},
    }
    for path, body in doors.items():
        response = httpx.post(f"{admin_server.url}{path}", json=body, timeout=30)
        assert response.status_code == 200, (path, response.text)
        assert int(response.headers["x-routing-revision"]) == revision, path
    request = pb.ModelInferRequest(model_name="iris")
    request.inputs.add(name="features", datatype="FP64", shape=[1, 4]).contents.fp64_contents.extend(ROW)
    with grpc.insecure_channel(admin_server.grpc_target) as channel:
        infer = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelInferResponse.FromString,
        )
        _, call = infer.with_call(request, timeout=30)
    assert dict(call.trailing_metadata())["x-routing-revision"] == str(revision)
    deadline = time.monotonic() + 10
    while True:
        text = httpx.get(f"{admin_server.url}/metrics", timeout=10).text
        values = [
            float(line.split()[-1]) for line in text.splitlines() if line.startswith("model_server_routing_revision{")
        ]
        if len(values) == 2 and set(values) == {revision} or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert values == [revision, revision]


def test_removed_name_is_unloaded_by_every_worker_and_comes_back(admin_server: RunningServer) -> None:
    before = httpx.post(f"{admin_server.url}/v1/models/diabetes/predict", json={"instances": [[0.01] * 10]}, timeout=30)
    assert before.status_code == 200
    removed = admin(admin_server, "DELETE", "/v1/admin/models/diabetes")
    assert removed.status_code == 200 and removed.json()["routing"] is None
    assert all("diabetes:v1" not in w["loaded_tags"] for w in removed.json()["workers"])
    gone = httpx.post(f"{admin_server.url}/v1/models/diabetes/predict", json={"instances": [[0.01] * 10]}, timeout=30)
    assert gone.status_code == 404
    added = admin(admin_server, "PUT", "/v1/admin/models/diabetes", {"variants": [{"tag": "diabetes:v1"}]})
    assert added.status_code == 200
    assert all("diabetes:v1" in w["loaded_tags"] for w in added.json()["workers"])
    again = httpx.post(f"{admin_server.url}/v1/models/diabetes/predict", json={"instances": [[0.01] * 10]}, timeout=30)
    assert again.json()["predictions"] == before.json()["predictions"]


BAD_CHANGES = [
    pytest.param(
        "PUT",
        "/v1/admin/models/iris",
        {"variants": [{"tag": "iris:v404", "weight": 1}]},
        400,
        "python -m training iris --version v404",
        id="unknown-tag",
    ),
    pytest.param(
        "PUT",
        "/v1/admin/models/churn",
        {"variants": [{"tag": "churn:v404", "weight": 1}]},
        400,
        "Model 'churn:v404' is not in the model store; train or import it (docs/training.md).",
        id="unknown-tag-not-built-in",
    ),
    pytest.param(
        "POST",
        "/v1/admin/models/iris/promote",
        {"tag": "iris:v404"},
        400,
        "not in the model store",
        id="promote-unknown",
    ),
    pytest.param(
        "PUT",
        "/v1/admin/models/iris",
        {"variants": [{"tag": "breast_cancer:v1", "weight": 1}]},
        400,
        "lacks 'sepal length (cm)'",
        id="schema-mismatch",
    ),
    pytest.param(
        "PUT",
        "/v1/admin/models/iris",
        {"variants": [{"tag": "iris:v1", "weight": 10}], "shadow": "breast_cancer:v2"},
        400,
        "takes other features",
        id="shadow-schema-mismatch",
    ),
    pytest.param(
        "PUT",
        "/v1/admin/models/iris",
        {"variants": [{"tag": "iris:v1", "weight": -5}]},
        400,
        "greater than or equal to 0",
        id="negative-weight",
    ),
    pytest.param(
        "PUT",
        "/v1/admin/models/iris",
        {"variants": [{"tag": "iris:v1", "weight": 0}]},
        400,
        "positive total",
        id="zero-total",
    ),
    pytest.param("PUT", "/v1/admin/models/iris", {"variants": []}, 400, "at least 1", id="no-variants"),
    pytest.param("POST", "/v1/admin/models/nope/rollback", None, 404, "'nope' is not served", id="rollback-unknown"),
    pytest.param("DELETE", "/v1/admin/models/nope", None, 404, "'nope' is not served", id="remove-unknown"),
]


@pytest.mark.parametrize(("method", "path", "body", "status", "message"), BAD_CHANGES)
def test_bad_admin_input_is_refused_and_changes_nothing(
    admin_server: RunningServer, method: str, path: str, body: Any, status: int, message: str
) -> None:
    before = routing_of(admin_server)
    response = admin(admin_server, method, path, body)
    assert response.status_code == status, response.text
    assert message in response.text
    after = routing_of(admin_server)
    assert (after["revision"], after["models"]) == (before["revision"], before["models"])


@pytest.mark.parametrize(
    ("name", "how"),
    [
        ("iris", "train it with `python -m training iris --version v404`"),
        ("churn", "train or import it (docs/training.md)"),  # a user's own table or an import
    ],
)
def test_a_tag_missing_from_the_store_is_400_with_the_way_to_register_it(
    admin_server: RunningServer, name: str, how: str
) -> None:
    response = admin(admin_server, "PUT", f"/v1/admin/models/{name}", {"variants": [{"tag": f"{name}:v404"}]})
    assert response.status_code == 400
    message = f"Model '{name}:v404' is not in the model store; {how}."
    assert response.json()["detail"] == [{"loc": ["variants", 0, "tag"], "msg": message, "type": "unknown_tag"}]


@pytest.mark.parametrize("key", [None, "Bearer wrong-key", ADMIN_KEY], ids=["no-key", "wrong-key", "bare-key"])
def test_admin_routes_need_the_admin_key(admin_server: RunningServer, key: str | None) -> None:
    before = routing_of(admin_server)["revision"]
    headers = {} if key is None else {"authorization": key}
    for method, path, body in [
        ("GET", "/v1/admin/models", None),
        ("PUT", "/v1/admin/models/iris", {"variants": [{"tag": "iris:v2"}]}),
        ("POST", "/v1/admin/models/iris/promote", {"tag": "iris:v2"}),
        ("POST", "/v1/admin/models/iris/rollback", None),
        ("DELETE", "/v1/admin/models/iris", None),
        ("POST", "/v1/admin/reset", None),
        ("POST", "/v2/repository/index", {}),
    ]:
        response = httpx.request(method, f"{admin_server.url}{path}", json=body, headers=headers, timeout=30)
        assert response.status_code == 401, (path, response.text)
        assert ("a bare key is not accepted" in response.json()["error"]) == (key == ADMIN_KEY)
    assert routing_of(admin_server)["revision"] == before


def test_admin_routes_are_forbidden_without_any_admin_key(server: RunningServer) -> None:
    """The default server (no admin key configured): never open by default."""
    for method, path in [
        ("GET", "/v1/admin/models"),
        ("POST", "/v1/admin/models/iris/promote"),
        ("POST", "/v1/admin/reset"),
    ]:
        response = httpx.request(method, f"{server.url}{path}", json={"tag": "iris:v2"}, headers=ADMIN, timeout=30)
        assert response.status_code == 403, response.text
        assert "no admin key is configured" in response.json()["error"]
    answer = httpx.post(f"{server.url}/v1/models/iris/predict", json={"instances": [ROW]}, timeout=30)
    assert answer.headers["x-routing-revision"] == "0"


def test_audit_log_says_who_before_after_and_revision(admin_server: RunningServer) -> None:
    promoted = admin(admin_server, "POST", "/v1/admin/models/breast_cancer/promote", {"tag": "breast_cancer:v2"})
    assert promoted.status_code == 200
    revision = promoted.json()["revision"]
    rolled_back = admin(admin_server, "POST", "/v1/admin/models/breast_cancer/rollback")
    assert rolled_back.json()["routing"]["shadow"] == "breast_cancer:v2"
    deadline = time.monotonic() + 10
    while f'"revision": {revision + 1}' not in admin_server.log() and time.monotonic() < deadline:
        time.sleep(0.2)

    lines = [json.loads(line) for line in admin_server.log().splitlines() if '"logger": "model_server.audit"' in line]
    promote = next(line for line in lines if line["revision"] == revision)
    assert promote["action"] == "promote" and promote["model"] == "breast_cancer"
    assert promote["by"].startswith("key:") and ADMIN_KEY not in json.dumps(promote)
    assert promote["before"]["shadow"] == "breast_cancer:v2"
    assert promote["after"] == {
        "variants": [{"tag": "breast_cancer:v2", "weight": 100.0}],
        "unknown_categories": "reject",
    }
    rollback = next(line for line in lines if line["revision"] == revision + 1)
    assert rollback["action"] == "rollback" and rollback["after"] == promote["before"]


def _audit_lines(server: RunningServer) -> list[dict[str, Any]]:
    return [json.loads(line) for line in server.log().splitlines() if '"logger": "model_server.audit"' in line]


def _audited_reset(server: RunningServer) -> dict[str, Any]:
    """Reset over a new connection (any worker may take it); its audit line."""
    revision = admin(server, "POST", "/v1/admin/reset").json()["revision"]
    deadline = time.monotonic() + 10
    while not (lines := [a for a in _audit_lines(server) if a["revision"] == revision]):
        assert time.monotonic() < deadline, "no audit line"
        time.sleep(0.1)
    return lines[0]


def test_routing_and_audit_fingerprints_survive_a_restart_and_reset_restores_the_configuration(
    trained_default_models: list[str], tmp_path: Path
) -> None:
    """The routing file outlives the server: a promotion serves after a restart, with its
    rollback target, and a reset restores the configuration. The audit line's `by` is an
    HMAC of the admin key under a secret the server made in its home (mode 0600): the same
    from both workers and after the restart; another secret gives another fingerprint.
    (One pair of servers checks both, as each check needs a restart.)"""
    routing_file = tmp_path / "routing.yaml"
    env = {"MODEL_SERVER_ADMIN_KEYS": ADMIN_KEY, "MODEL_SERVER_ROUTING_FILE": str(routing_file)}
    first = start_server(ROOT / "configuration.yaml", env)  # two workers
    try:
        assert first.home is not None
        secret_file = first.home / "audit-secret"
        assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
        expected = KeyFingerprints(secret_file.read_bytes().strip()).of(ADMIN["authorization"])
        audits = [_audited_reset(first)]
        while len({a["worker"] for a in audits}) < 2 and len(audits) < 40:
            audits.append(_audited_reset(first))
        assert len({a["worker"] for a in audits}) == 2, "every reset landed on one worker"
        assert {a["by"] for a in audits} == {expected}
        assert ADMIN_KEY not in first.log()
        promoted = admin(first, "POST", "/v1/admin/models/iris/promote", {"tag": "iris:v2"})
        assert promoted.status_code == 200
        revision = promoted.json()["revision"]
        assert revision == audits[-1]["revision"] + 1
    finally:
        first.stop()
    assert "iris:v2" in routing_file.read_text()

    # After the restart one worker is enough: the secret is in the home, not in a worker.
    restarted = start_server(ROOT / "configuration.yaml", {**env, **ONE_WORKER, "BENTOML_HOME": str(first.home)})
    try:
        for _ in range(20):
            response = httpx.post(f"{restarted.url}/v1/models/iris/predict", json={"instances": [ROW]}, timeout=30)
            served_by = (response.headers["x-model-tag"], response.headers["x-routing-revision"])
            assert served_by == ("iris:v2", str(revision))
        iris = next(m for m in routing_of(restarted)["models"] if m["name"] == "iris")
        assert iris["variants"] == [{"tag": "iris:v2", "weight": 100.0}]
        assert iris["rollback_to"]["variants"] == [
            {"tag": "iris:v1", "weight": 90.0},
            {"tag": "iris:v2", "weight": 10.0},
        ]
        reset = _audited_reset(restarted)
        assert reset["by"] == expected and reset["revision"] == revision + 1
        iris = next(m for m in routing_of(restarted)["models"] if m["name"] == "iris")
        assert iris["variants"] == [{"tag": "iris:v1", "weight": 90.0}, {"tag": "iris:v2", "weight": 10.0}]
    finally:
        restarted.stop()

    other_secret = tmp_path / "other-secret"
    other_secret.write_text("another audit secret, another fingerprint\n")
    other = start_server(
        ROOT / "configuration.yaml", {**env, **ONE_WORKER, "MODEL_SERVER_AUDIT_SECRET_FILE": str(other_secret)}
    )
    try:
        by = _audited_reset(other)["by"]
    finally:
        other.stop()
    assert by == KeyFingerprints(b"another audit secret, another fingerprint").of(ADMIN["authorization"]) != expected


def test_the_same_routing_again_writes_no_revision(admin_server: RunningServer) -> None:
    """A repeated change (a client re-loading what serves) keeps the revision and the rollback target."""
    body = {"variants": [{"tag": "iris:v1", "weight": 70}, {"tag": "iris:v2", "weight": 30}]}
    first = admin(admin_server, "PUT", "/v1/admin/models/iris", body)
    assert first.status_code == 200
    rollback_to = next(m for m in routing_of(admin_server)["models"] if m["name"] == "iris")["rollback_to"]
    again = admin(admin_server, "PUT", "/v1/admin/models/iris", body)
    assert again.status_code == 200 and again.json()["revision"] == first.json()["revision"]
    view = routing_of(admin_server)
    assert view["revision"] == first.json()["revision"]
    assert next(m for m in view["models"] if m["name"] == "iris")["rollback_to"] == rollback_to


def test_workers_follow_the_routing_file_even_when_its_revision_goes_down(
    admin_server: RunningServer, routing_file: Path
) -> None:
    """The file is the truth: set back by hand (a ConfigMap re-applied), every worker follows it."""
    highest = routing_of(admin_server)["revision"]
    assert highest > 1
    set_back = Routing.initial(load_settings(ROOT / "configuration.yaml"))
    set_back.models["iris"] = ServedModel.model_validate({"variants": [{"tag": "iris:v2", "weight": 1}]})
    RoutingFile(routing_file).replace(set_back.model_copy(update={"revision": 1}))
    deadline = time.monotonic() + 15
    while True:
        answers = [
            httpx.post(f"{admin_server.url}/v1/models/iris/predict", json={"instances": [ROW]}, timeout=30)
            for _ in range(20)
        ]
        seen = {(a.headers["x-model-tag"], a.headers["x-routing-revision"]) for a in answers}
        if seen == {("iris:v2", "1")} or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert seen == {("iris:v2", "1")}
    assert {w["revision"] for w in routing_of(admin_server)["workers"]} == {1}
    reset = admin(admin_server, "POST", "/v1/admin/reset")
    # Issue 23, item 10: the next change goes above every revision the file held, never 2 again.
    assert reset.status_code == 200 and reset.json()["revision"] == highest + 1


# -- issue 23: what must never serve, and a routing file that disappears -----------------

IRIS_BODY = '{"variants": [{"tag": "iris:v1", "weight": 1}]}'
RTL = "\u200f"
REFUSED = [
    # method, path, raw JSON body, the error's loc, words of its msg
    pytest.param(
        "PUT",
        "/v1/admin/models/iris",
        '{"variants": [{"tag": "iris:v1", "weight": 1e309}]}',
        ["variants", 0, "weight"],
        "finite number",
        id="weight-1e309",
    ),
    pytest.param(
        "PUT",
        "/v1/admin/models/iris",
        '{"variants": [{"tag": "iris:v1", "weight": "Infinity"}]}',
        ["variants", 0, "weight"],
        "finite number",
        id="weight-Infinity",
    ),
    pytest.param(
        "PUT",
        "/v1/admin/models/iris",
        '{"variants": [{"tag": "iris:v1", "weight": 5}, {"tag": "iris:v2", "weight": "inf"}]}',
        ["variants", 1, "weight"],
        "finite number",
        id="weight-inf",
    ),
    pytest.param(
        "PUT",
        "/v1/admin/models/iris",
        '{"variants": [{"tag": "iris:v1", "weight": 1e308}, {"tag": "iris:v2", "weight": 1e308}]}',
        ["variants", 0, "weight"],
        "less than or equal to 1000000",
        id="weights-overflowing",
    ),
    pytest.param("PUT", "/v1/admin/models/a..b", IRIS_BODY, ["name"], "without '..'", id="name-dotdot"),
    pytest.param("PUT", "/v1/admin/models/" + "n" * 65, IRIS_BODY, ["name"], "1 to 64", id="name-too-long"),
    pytest.param("PUT", "/v1/admin/models/iris%ff", IRIS_BODY, ["name"], "a model name", id="name-invalid-utf8"),
    pytest.param("PUT", "/v1/admin/models/iris%E2%80%8F", IRIS_BODY, ["name"], "a model name", id="name-rtl-mark"),
    pytest.param("PUT", "/v1/admin/models/iris%00", IRIS_BODY, ["name"], "a model name", id="name-nul"),
    pytest.param("DELETE", "/v1/admin/models/a..b", None, ["name"], "a model name", id="remove-name-dotdot"),
    pytest.param("POST", "/v1/admin/models/.hidden/rollback", None, ["name"], "a model name", id="rollback-name-dot"),
    *[
        pytest.param(
            "PUT",
            "/v1/admin/models/iris",
            json.dumps({"variants": [{"tag": tag, "weight": 1}]}),
            ["variants", 0, "tag"],
            "a tag must be 'name:version'",
            id=f"tag-{label}",
        )
        for label, tag in [
            ("dotdot", "iris:../../x"),
            ("path", "/etc/passwd:v1"),
            ("accent", "iris:v1\u00e9"),
            ("nul", "iris:v1\u0000"),
            ("rtl-mark", "iris:v1" + RTL),
            ("upper-case", "Iris:v1"),
        ]
    ],
    pytest.param(
        "POST",
        "/v1/admin/models/iris/promote",
        '{"tag": "iris:../../x"}',
        ["tag"],
        "a tag must be 'name:version'",
        id="promote-tag-dotdot",
    ),
    pytest.param(
        "PUT",
        "/v1/admin/models/iris",
        '{"variants": [{"tag": "iris:v1", "weight": 1}], "shadow": "/etc/passwd:v1"}',
        ["shadow"],
        "a tag must be 'name:version'",
        id="shadow-tag-path",
    ),
    pytest.param(
        "PUT",
        "/v1/admin/models/iris",
        '{"variants": [{"tag": "iris:v1", "weight": 90}, {"tag": "iris:v2", "weight": 10}], "shadow": "iris:v2"}',
        ["shadow"],
        "'iris:v2' is already a variant of this name; a shadow must be another tag",
        id="shadow-is-a-variant",
    ),
]


@pytest.mark.parametrize(("method", "path", "body", "loc", "words"), REFUSED)
def test_weights_names_tags_and_shadows_outside_the_rules_are_a_400_naming_the_field(
    admin_server: RunningServer, method: str, path: str, body: str | None, loc: list[Any], words: str
) -> None:
    before = routing_of(admin_server)
    response = httpx.request(
        method,
        f"{admin_server.url}{path}",
        content=body,
        headers={**ADMIN, "content-type": "application/json"},
        timeout=60,
    )
    assert response.status_code == 400, response.text
    problem = response.json()["detail"][0]  # two weights of 1e308 are two problems
    assert problem["loc"] == loc and words in problem["msg"], problem
    assert problem["type"] in {"value_error", "finite_number", "less_than_equal"}, problem
    after = routing_of(admin_server)
    assert (after["revision"], after["models"]) == (before["revision"], before["models"])
    listed = httpx.get(f"{admin_server.url}/v1/models", timeout=30)
    assert listed.status_code == 200 and "iris" in {m["name"] for m in listed.json()["models"]}


def replace_file(path: Path, text: str) -> None:
    """Write the routing file by hand, in one rename (readers never see half of it)."""
    temporary = path.with_name(".by-hand")
    temporary.write_text(text)
    os.replace(temporary, path)


def wait_for(server: RunningServer, check: Any, timeout: float = 120) -> dict[str, Any]:
    """The admin view once `check(view)` holds for every worker's view."""
    deadline = time.monotonic() + timeout
    while True:
        views = [routing_of(server) for _ in range(6)]  # the worker that answers varies
        if all(check(view) for view in views):
            return views[0]
        assert time.monotonic() < deadline, f"not reached after {timeout} s: {views[0]}"
        time.sleep(0.2)


def restart_a_worker(server: RunningServer) -> None:
    """Kill one worker as a crash would; BentoML starts another, which reads the routing anew."""
    before = workers(server)
    assert len(before) == 2
    os.kill(before[0].pid, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while {p.pid for p in workers(server)} & {before[0].pid} or len(workers(server)) < 2:
        assert time.monotonic() < deadline, "the killed worker was not replaced"
        time.sleep(0.2)


def served(server: RunningServer) -> set[tuple[str, str]]:
    """(tag, revision) of 40 answers for iris, from whichever worker takes each."""
    answers = [
        httpx.post(f"{server.url}/v1/models/iris/predict", json={"instances": [ROW]}, timeout=30) for _ in range(40)
    ]
    assert all(a.status_code == 200 for a in answers)
    return {(a.headers["x-model-tag"], a.headers["x-routing-revision"]) for a in answers}


def test_a_routing_file_with_a_weight_that_is_not_finite_leaves_the_last_good_routing(
    admin_server: RunningServer, routing_file: Path
) -> None:
    """Issue 23, item 1: written by hand, the follower refuses it with a log line, and a
    worker that starts meanwhile serves the last good routing too."""
    promoted = admin(admin_server, "POST", "/v1/admin/models/iris/promote", {"tag": "iris:v2"})
    assert promoted.status_code == 200
    revision = promoted.json()["revision"]
    good = routing_file.read_text()
    bad = good.replace("weight: 100.0", "weight: .inf", 1)
    assert bad != good
    replace_file(routing_file, bad.replace(f"revision: {revision}\n", f"revision: {revision + 1}\n", 1))

    problem = "'models.iris.variants.0.weight' is invalid: Input should be a finite number"
    view = wait_for(admin_server, lambda v: problem in (v["routing_file_problem"] or ""))
    assert view["revision"] == revision
    assert "Serving the last good routing it held" in view["routing_file_problem"]
    assert problem in admin_server.log()
    restart_a_worker(admin_server)
    assert wait_for(admin_server, lambda v: [w["revision"] for w in v["workers"]] == [revision, revision])
    assert served(admin_server) == {("iris:v2", str(revision))}
    listed = httpx.get(f"{admin_server.url}/v1/models", timeout=30)
    assert listed.status_code == 200
    assert next(m for m in listed.json()["models"] if m["name"] == "iris")["variants"][0]["weight"] == 100.0

    replace_file(routing_file, good)
    wait_for(admin_server, lambda v: v["routing_file_problem"] is None)
    rolled_back = admin(admin_server, "POST", "/v1/admin/models/iris/rollback")
    assert rolled_back.status_code == 200 and rolled_back.json()["revision"] == revision + 1


def test_a_deleted_routing_file_keeps_every_worker_on_its_last_routing(
    admin_server: RunningServer, routing_file: Path
) -> None:
    """Issue 23, item 10: the file deleted, then a worker restarted: both serve the last
    routing the file held (not configuration.yaml's), the admin view says why, and the
    next change takes a revision that was never used."""
    promoted = admin(admin_server, "POST", "/v1/admin/models/iris/promote", {"tag": "iris:v2"})
    assert promoted.status_code == 200
    revision = promoted.json()["revision"]
    routing_file.unlink()

    view = wait_for(admin_server, lambda v: "is missing, but it existed" in (v["routing_file_problem"] or ""))
    assert view["revision"] == revision
    restart_a_worker(admin_server)
    view = wait_for(admin_server, lambda v: [w["revision"] for w in v["workers"]] == [revision, revision])
    assert re.search(rf"Serving the last routing it held \(revision {revision}\)", view["routing_file_problem"])
    assert served(admin_server) == {("iris:v2", str(revision))}

    rolled_back = admin(admin_server, "POST", "/v1/admin/models/iris/rollback")
    assert rolled_back.status_code == 200 and rolled_back.json()["revision"] == revision + 1
    assert Routing.from_text(routing_file.read_text(), "test").revision == revision + 1
    view = wait_for(admin_server, lambda v: v["routing_file_problem"] is None)
    assert {w["revision"] for w in view["workers"]} == {revision + 1}


def test_malformed_names_and_versions_in_predictions_are_a_404_on_every_door(admin_server: RunningServer) -> None:
    """Issue 23, items 2 and 3: a request names a model and a version, never a tag BentoML
    looks up; whatever they hold, the answer is that nothing such is served."""
    url = admin_server.url
    tensor = {"inputs": [{"name": "features", "datatype": "FP64", "shape": [1, 4], "data": ROW}]}
    answers = {
        "/v1 version": httpx.post(f"{url}/v1/models/iris/predict", json={"instances": [ROW], "version": "../../x"}),
        "/v1 name": httpx.post(f"{url}/v1/models/a..b/predict", json={"instances": [ROW]}),
        "/predict": httpx.post(f"{url}/predict", json={"model": "iris", "instances": [ROW], "version": "v1\u200f"}),
        "/v2 version": httpx.post(f"{url}/v2/models/iris/versions/v1%C3%A9/infer", json=tensor),
        "/v2 name": httpx.post(f"{url}/v2/models/a..b/infer", json=tensor),
    }
    for door, response in answers.items():
        assert response.status_code == 404, (door, response.text)
        assert "is not served here" in response.json()["error"] or "has no served version" in response.json()["error"]
    request = pb.ModelInferRequest(model_name="iris", model_version="../../x")
    request.inputs.add(name="features", datatype="FP64", shape=[1, 4]).contents.fp64_contents.extend(ROW)
    with grpc.insecure_channel(admin_server.grpc_target) as channel:
        infer = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelInferResponse.FromString,
        )
        with pytest.raises(grpc.RpcError) as caught:
            infer(request, timeout=30)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert "has no served version '../../x'" in caught.value.details()
