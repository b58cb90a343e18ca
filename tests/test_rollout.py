"""Hot update against real servers: promote, split, shadow and roll back while clients
keep sending requests; the routing survives a restart; bad admin input changes nothing."""

from __future__ import annotations

import asyncio
import json
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

# Triton's own messages: its service_pb2 and this project's stubs cannot share one process
# (the same `inference.*` names), and tests/test_repository.py uses Triton's.
from tritonclient.grpc import service_pb2 as pb

from model_server.auth import KeyFingerprints
from model_server.local_server import RunningServer, start_server
from model_server.routing import Routing, RoutingFile
from model_server.settings import ServedModel, load_settings
from tests.test_http_api import metric

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
def admin_server(trained_default_models: list[str], routing_file: Path) -> Iterator[RunningServer]:
    """The project's configuration with an admin key and its own routing file."""
    env = {"MODEL_SERVER_ADMIN_KEYS": ADMIN_KEY, "MODEL_SERVER_ROUTING_FILE": str(routing_file)}
    running = start_server(ROOT / "configuration.yaml", env)
    try:
        yield running
    finally:
        running.stop()


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
    assert len(answers) > 500
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


def test_routing_survives_a_restart_and_reset_restores_the_configuration(
    trained_default_models: list[str], tmp_path: Path
) -> None:
    routing_file = tmp_path / "routing.yaml"
    env = {"MODEL_SERVER_ADMIN_KEYS": ADMIN_KEY, "MODEL_SERVER_ROUTING_FILE": str(routing_file)}
    first = start_server(ROOT / "configuration.yaml", env)
    try:
        promoted = admin(first, "POST", "/v1/admin/models/iris/promote", {"tag": "iris:v2"})
        assert promoted.status_code == 200 and promoted.json()["revision"] == 1
    finally:
        first.stop()
    assert "iris:v2" in routing_file.read_text()

    second = start_server(ROOT / "configuration.yaml", env)
    try:
        for _ in range(20):
            response = httpx.post(f"{second.url}/v1/models/iris/predict", json={"instances": [ROW]}, timeout=30)
            assert (response.headers["x-model-tag"], response.headers["x-routing-revision"]) == ("iris:v2", "1")
        view = routing_of(second)
        iris = next(m for m in view["models"] if m["name"] == "iris")
        assert iris["variants"] == [{"tag": "iris:v2", "weight": 100.0}]
        assert iris["rollback_to"]["variants"] == [
            {"tag": "iris:v1", "weight": 90.0},
            {"tag": "iris:v2", "weight": 10.0},
        ]
        reset = admin(second, "POST", "/v1/admin/reset")
        assert reset.status_code == 200 and reset.json()["revision"] == 2
        iris = next(m for m in routing_of(second)["models"] if m["name"] == "iris")
        assert iris["variants"] == [{"tag": "iris:v1", "weight": 90.0}, {"tag": "iris:v2", "weight": 10.0}]
    finally:
        second.stop()


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


def test_audit_fingerprints_are_keyed_by_the_servers_secret(trained_default_models: list[str], tmp_path: Path) -> None:
    """The audit line's `by` is an HMAC of the admin key under a secret the server made in
    its home (mode 0600): the same from both workers and after a restart; another secret
    gives another fingerprint."""
    env = {"MODEL_SERVER_ADMIN_KEYS": ADMIN_KEY, "MODEL_SERVER_ROUTING_FILE": str(tmp_path / "routing.yaml")}
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
    finally:
        first.stop()

    restarted = start_server(ROOT / "configuration.yaml", {**env, "BENTOML_HOME": str(first.home)})
    try:
        assert _audited_reset(restarted)["by"] == expected
    finally:
        restarted.stop()

    other_secret = tmp_path / "other-secret"
    other_secret.write_text("another audit secret, another fingerprint\n")
    other = start_server(ROOT / "configuration.yaml", {**env, "MODEL_SERVER_AUDIT_SECRET_FILE": str(other_secret)})
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
    assert routing_of(admin_server)["revision"] > 1
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
    assert reset.status_code == 200 and reset.json()["revision"] == 2
