"""The Open Inference Protocol model repository extension (index, load, unload) of a real
server, over REST and gRPC, driven by tritonclient as a Triton user would.

One server with an admin key serves the whole file; every test leaves it serving what
configuration.yaml says. The session's shared server, which has no admin key, shows
that the extension is off without one. Raw gRPC calls use Triton's own messages
(tritonclient's service_pb2), so they also check that this server's proto matches Triton's.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from sklearn import datasets
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc
from tritonclient.utils import InferenceServerException

from model_server.config.auth import KeyFingerprints
from model_server.local_server import RunningServer

if TYPE_CHECKING:
    from tests.conftest import AdminServerFactory

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
ADMIN_KEY = "repository-test-admin-key"
AUTH = {"authorization": f"Bearer {ADMIN_KEY}"}
AUDIT_SECRET = "the audit secret of the repository tests"
# What configuration.yaml serves, as the index shows it: (state, versions).
SERVED = {
    "iris": ("READY", "v1,v2"),
    "breast_cancer": ("READY", "v1"),
    "diabetes": ("READY", "v1"),
    "titanic": ("READY", "v1"),
}
CONFIGURED_IRIS = {"variants": [{"tag": "iris:v1", "weight": 90}, {"tag": "iris:v2", "weight": 10}]}
DIABETES = np.asarray(datasets.load_diabetes().data[:3], dtype=np.float64).tolist()
IRIS = np.asarray(datasets.load_iris().data[:1], dtype=np.float64).tolist()
# Caller keys pick a tag of an A/B pair; forty of them reach both of iris's 90/10 tags.
CALLERS = [f"caller-{i}" for i in range(40)]

Client = triton_http.InferenceServerClient | triton_grpc.InferenceServerClient


@pytest.fixture(scope="module")
def admin_server(
    admin_server_factory: AdminServerFactory, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    """A real server with an admin key, an audit secret, and its own routing file (its own BentoML home)."""
    secret = tmp_path_factory.mktemp("audit") / "audit-secret"
    secret.write_text(AUDIT_SECRET + "\n")
    with admin_server_factory(ADMIN_KEY, env={"MODEL_SERVER_AUDIT_SECRET_FILE": str(secret)}) as running:
        yield running


@pytest.fixture(scope="module")
def clients(admin_server: RunningServer) -> dict[str, Client]:
    return {
        "http": triton_http.InferenceServerClient(f"127.0.0.1:{admin_server.port}"),
        "grpc": triton_grpc.InferenceServerClient(admin_server.grpc_target),
    }


@pytest.fixture(autouse=True)
def configured_routing(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test on the admin server: serve configuration.yaml's routing again,
    should a failed test have left something changed."""
    yield
    if "admin_server" in request.fixturenames:
        server: RunningServer = request.getfixturevalue("admin_server")
        httpx.post(f"{server.url}/v1/admin/reset", headers=AUTH, timeout=30).raise_for_status()


def index(client: Client) -> dict[str, tuple[str, str]]:
    """The repository index as {name: (state, version)}, checking each transport's shape."""
    if isinstance(client, triton_grpc.InferenceServerClient):
        response = client.get_model_repository_index(headers=AUTH)
        assert isinstance(response, pb.RepositoryIndexResponse)
        assert all(m.reason == ("" if m.state == "READY" else "not served") for m in response.models)
        return {m.name: (m.state, m.version) for m in response.models}
    entries = client.get_model_repository_index(headers=AUTH)
    assert isinstance(entries, list) and all(set(e) == {"name", "version", "state", "reason"} for e in entries)
    return {e["name"]: (e["state"], e["version"]) for e in entries}


def predict(server: RunningServer, name: str, rows: list[list[float]], caller: str | None = None) -> httpx.Response:
    headers = {"x-request-key": caller} if caller else {}
    return httpx.post(f"{server.url}/v1/models/{name}/predict", json={"instances": rows}, headers=headers, timeout=30)


def iris_tags(server: RunningServer) -> set[str]:
    """The tags that answer iris for every caller key."""
    answers = [predict(server, "iris", IRIS, caller) for caller in CALLERS]
    assert all(a.status_code == 200 for a in answers)
    return {a.headers["x-model-tag"] for a in answers}


def status_of(transport: str, http_status: int, grpc_code: str) -> str:
    """tritonclient's `InferenceServerException.status()`: the HTTP status as text, or the gRPC code."""
    return str(http_status) if transport == "http" else f"StatusCode.{grpc_code}"


def test_index_lists_the_served_names_as_ready(clients: dict[str, Client]) -> None:
    assert index(clients["http"]) == SERVED
    assert index(clients["grpc"]) == SERVED


@pytest.mark.parametrize(("unload_over", "load_over"), [("grpc", "http"), ("http", "grpc")])
def test_unload_stops_serving_and_load_brings_it_back(
    admin_server: RunningServer, clients: dict[str, Client], unload_over: str, load_over: str
) -> None:
    before = predict(admin_server, "diabetes", DIABETES)
    assert before.status_code == 200 and before.headers["x-model-tag"] == "diabetes:v1"

    clients[unload_over].unload_model("diabetes", headers=AUTH)
    gone = predict(admin_server, "diabetes", DIABETES)
    assert gone.status_code == 404 and "'diabetes' is not served" in gone.json()["error"]
    unloaded = {**SERVED, "diabetes": ("UNAVAILABLE", "")}
    assert index(clients["http"]) == unloaded and index(clients["grpc"]) == unloaded
    assert predict(admin_server, "iris", IRIS).status_code == 200  # the other names still serve

    clients[load_over].load_model("diabetes", headers=AUTH)
    after = predict(admin_server, "diabetes", DIABETES)
    assert after.status_code == 200 and without_ids(after.json()) == without_ids(before.json())
    assert after.headers["x-model-tag"] == "diabetes:v1"
    assert index(clients["http"]) == SERVED and index(clients["grpc"]) == SERVED


@pytest.mark.parametrize(("change_over", "restore_over"), [("grpc", "http"), ("http", "grpc")])
def test_load_with_a_config_parameter_sets_the_routing(
    admin_server: RunningServer, clients: dict[str, Client], change_over: str, restore_over: str
) -> None:
    assert iris_tags(admin_server) == {"iris:v1", "iris:v2"}
    only_v2 = {"variants": [{"tag": "iris:v2", "weight": 100}]}

    clients[change_over].load_model("iris", headers=AUTH, config=json.dumps(only_v2))
    assert iris_tags(admin_server) == {"iris:v2"}
    assert index(clients["http"])["iris"] == ("READY", "v2") and index(clients["grpc"])["iris"] == ("READY", "v2")

    clients[restore_over].load_model("iris", headers=AUTH, config=json.dumps(CONFIGURED_IRIS))
    assert iris_tags(admin_server) == {"iris:v1", "iris:v2"}
    assert index(clients["http"]) == SERVED and index(clients["grpc"]) == SERVED


def test_grpc_changes_carry_the_revision_and_are_logged_and_audited(admin_server: RunningServer) -> None:
    with grpc.insecure_channel(admin_server.grpc_target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        metadata = tuple(AUTH.items())
        revision = httpx.get(f"{admin_server.url}/v1/admin/models", headers=AUTH).json()["revision"]

        response, call = stub.RepositoryModelUnload.with_call(
            pb.RepositoryModelUnloadRequest(model_name="diabetes"),
            metadata=(*metadata, ("x-request-id", "repository-unload-1")),
            timeout=30,
        )
        assert response == pb.RepositoryModelUnloadResponse()
        trailing = dict(call.trailing_metadata())
        assert trailing["x-routing-revision"] == str(revision + 1) and trailing["x-request-id"] == "repository-unload-1"
        ready_only = stub.RepositoryIndex(pb.RepositoryIndexRequest(ready=True), metadata=metadata, timeout=10)
        assert {m.name for m in ready_only.models} == set(SERVED) - {"diabetes"}

        _, call = stub.RepositoryModelLoad.with_call(
            pb.RepositoryModelLoadRequest(model_name="diabetes"), metadata=metadata, timeout=30
        )
        assert dict(call.trailing_metadata())["x-routing-revision"] == str(revision + 2)
    assert httpx.get(f"{admin_server.url}/v1/admin/models", headers=AUTH).json()["revision"] == revision + 2

    # The access log has the call; the audit line names a fingerprint of the key under the
    # configured audit secret, never the key.
    who = KeyFingerprints(AUDIT_SECRET.encode()).of(AUTH["authorization"])
    access = {
        "request_id": "repository-unload-1",
        "transport": "grpc",
        "target": "RepositoryModelUnload",
        "status": 200,
    }
    audit = {"message": "routing change", "action": "remove", "model": "diabetes", "by": who, "revision": revision + 1}
    assert _logged(admin_server, access) and _logged(admin_server, audit)
    assert ADMIN_KEY not in admin_server.log()


def _logged(server: RunningServer, fields: dict[str, Any], timeout: float = 5) -> bool:
    """Whether a JSON log line of the server holds `fields`, waiting for it a little."""
    deadline = time.monotonic() + timeout
    while True:
        for line in server.log().splitlines():
            if line.startswith("{") and fields.items() <= json.loads(line).items():
                return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)


REPOSITORY_CALLS = {
    "index": lambda client, headers: client.get_model_repository_index(headers=headers),
    "load": lambda client, headers: client.load_model("diabetes", headers=headers),
    "unload": lambda client, headers: client.unload_model("diabetes", headers=headers),
}


@pytest.mark.parametrize("call", list(REPOSITORY_CALLS))
@pytest.mark.parametrize("transport", ["http", "grpc"])
@pytest.mark.parametrize(
    "headers",
    [None, {"authorization": "Bearer not-the-admin-key"}, {"authorization": ADMIN_KEY}],
    ids=["no-key", "wrong-key", "bare-key"],
)
def test_repository_calls_need_the_admin_key(
    admin_server: RunningServer,
    clients: dict[str, Client],
    call: str,
    transport: str,
    headers: dict[str, str] | None,
) -> None:
    with pytest.raises(InferenceServerException) as caught:
        REPOSITORY_CALLS[call](clients[transport], headers)
    assert caught.value.status() == status_of(transport, 401, "UNAUTHENTICATED")
    assert "unauthorized" in str(caught.value.message())
    if headers and not headers["authorization"].startswith("Bearer "):
        assert "a bare key is not accepted" in str(caught.value.message())
    assert index(clients["http"]) == SERVED  # nothing changed


@pytest.mark.parametrize("call", list(REPOSITORY_CALLS))
@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_repository_calls_are_off_without_an_admin_key_configured(
    server: RunningServer, call: str, transport: str
) -> None:
    """The session's shared server has no admin key: even a key is refused with 403."""
    client: Client = (
        triton_http.InferenceServerClient(f"127.0.0.1:{server.port}")
        if transport == "http"
        else triton_grpc.InferenceServerClient(server.grpc_target)
    )
    with pytest.raises(InferenceServerException) as caught:
        REPOSITORY_CALLS[call](client, AUTH)
    assert caught.value.status() == status_of(transport, 403, "PERMISSION_DENIED")
    assert "the admin API is off" in str(caught.value.message())
    assert predict(server, "diabetes", DIABETES).status_code == 200


BAD_LOADS = [
    # name, config, HTTP status, gRPC code, words in the message
    pytest.param(
        "no_such_model",
        None,
        404,
        "NOT_FOUND",
        "'no_such_model' is not served",
        id="name-not-in-store",
    ),
    pytest.param(
        "diabetes",
        json.dumps({"variants": [{"tag": "diabetes:v9", "weight": 100}]}),
        400,
        "INVALID_ARGUMENT",
        "diabetes:v9",
        id="unknown-tag",
    ),
    pytest.param(
        "churn",
        json.dumps({"variants": [{"tag": "churn:v9", "weight": 100}]}),
        400,
        "INVALID_ARGUMENT",
        "Model 'churn:v9' is not in the model store; train or import it (docs/training.md).",
        id="unknown-tag-not-built-in",
    ),
    pytest.param("diabetes", "{variants", 400, "INVALID_ARGUMENT", "invalid input", id="config-not-json"),
    pytest.param(
        "diabetes",
        json.dumps({"variants": [{"tag": "diabetes:v1", "weight": 0}]}),
        400,
        "INVALID_ARGUMENT",
        "invalid input",
        id="zero-weights",
    ),
    # Issue 23: weights that are not finite, names and tags outside the rules, a shadow
    # that is one of the variants (docs/api.md, "Names, tags and weights").
    pytest.param(
        "diabetes",
        '{"variants": [{"tag": "diabetes:v1", "weight": 1e309}]}',
        400,
        "INVALID_ARGUMENT",
        "variants[0]['weight']: Input should be a finite number",
        id="weight-1e309",
    ),
    pytest.param(
        "diabetes",
        '{"variants": [{"tag": "diabetes:v1", "weight": "Infinity"}]}',
        400,
        "INVALID_ARGUMENT",
        "variants[0]['weight']: Input should be a finite number",
        id="weight-Infinity",
    ),
    pytest.param(
        "diabetes",
        '{"variants": [{"tag": "diabetes:v1", "weight": true}]}',
        400,
        "INVALID_ARGUMENT",
        "variants[0]['weight']: must be a number, not true or false",
        id="weight-true",
    ),
    pytest.param(
        "diabetes",
        '{"variants": [{"tag": "diabetes:v1", "weight": 1e308}, {"tag": "diabetes:v2", "weight": 1e308}]}',
        400,
        "INVALID_ARGUMENT",
        "variants[0]['weight']: Input should be less than or equal to 1000000",
        id="weights-overflowing",
    ),
    pytest.param("a..b", None, 400, "INVALID_ARGUMENT", "a model name must be 1 to 64 characters", id="name-dotdot"),
    pytest.param("d" * 65, None, 400, "INVALID_ARGUMENT", "a model name must be", id="name-too-long"),
    pytest.param(
        "diabetes",
        '{"variants": [{"tag": "diabetes:../../x"}]}',
        400,
        "INVALID_ARGUMENT",
        "variants[0]['tag']: a tag must be 'name:version'",
        id="tag-dotdot",
    ),
    pytest.param(
        "diabetes",
        '{"variants": [{"tag": "/etc/passwd:v1"}]}',
        400,
        "INVALID_ARGUMENT",
        "variants[0]['tag']: a tag must be 'name:version'",
        id="tag-path",
    ),
    pytest.param(
        "diabetes",
        '{"variants": [{"tag": "diabetes:v1\\u0000"}]}',
        400,
        "INVALID_ARGUMENT",
        "variants[0]['tag']: a tag must be 'name:version'",
        id="tag-nul",
    ),
    pytest.param(
        "diabetes",
        '{"variants": [{"tag": "diabetes:v1"}], "shadow": "diabetes:v1"}',
        400,
        "INVALID_ARGUMENT",
        "shadow: 'diabetes:v1' is already a variant of this name",
        id="shadow-is-a-variant",
    ),
]


@pytest.mark.parametrize(("name", "config", "http_status", "grpc_code", "words"), BAD_LOADS)
@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_a_bad_load_is_refused_and_changes_nothing(
    admin_server: RunningServer,
    clients: dict[str, Client],
    transport: str,
    name: str,
    config: str | None,
    http_status: int,
    grpc_code: str,
    words: str,
) -> None:
    before = predict(admin_server, "diabetes", DIABETES)
    revision = httpx.get(f"{admin_server.url}/v1/admin/models", headers=AUTH).json()["revision"]

    with pytest.raises(InferenceServerException) as caught:
        clients[transport].load_model(name, headers=AUTH, config=config)
    assert caught.value.status() == status_of(transport, http_status, grpc_code)
    assert words in str(caught.value.message())

    assert index(clients["http"]) == SERVED and index(clients["grpc"]) == SERVED
    after = predict(admin_server, "diabetes", DIABETES)
    assert after.status_code == 200 and without_ids(after.json()) == without_ids(before.json())
    assert httpx.get(f"{admin_server.url}/v1/admin/models", headers=AUTH).json()["revision"] == revision


@pytest.mark.parametrize(
    ("request_message", "words"),
    [
        (pb.RepositoryModelLoadRequest(model_name=""), "model_name: is required"),
        (pb.RepositoryModelUnloadRequest(model_name=""), "model_name: is required"),
        (
            pb.RepositoryModelLoadRequest(
                model_name="diabetes", parameters={"config": pb.ModelRepositoryParameter(bytes_param=b"{}")}
            ),
            "parameters['config']: must be a string_param",
        ),
        # Issue 23: names no route can reach, refused before anything looks them up.
        (pb.RepositoryModelLoadRequest(model_name="../../etc"), "model_name: a model name must be"),
        (pb.RepositoryModelUnloadRequest(model_name="../../etc"), "model_name: a model name must be"),
        (pb.RepositoryModelLoadRequest(model_name="iris\u200f"), "model_name: a model name must be"),
        (pb.RepositoryModelLoadRequest(model_name="iris\x00"), "model_name: a model name must be"),
    ],
    ids=[
        "load-without-name",
        "unload-without-name",
        "config-not-a-string",
        "load-name-path",
        "unload-name-path",
        "load-name-rtl-mark",
        "load-name-nul",
    ],
)
def test_grpc_repository_requests_are_checked(admin_server: RunningServer, request_message: Any, words: str) -> None:
    method = (
        "RepositoryModelLoad" if isinstance(request_message, pb.RepositoryModelLoadRequest) else "RepositoryModelUnload"
    )
    with grpc.insecure_channel(admin_server.grpc_target) as channel:
        call = channel.unary_unary(f"/inference.GRPCInferenceService/{method}")
        with pytest.raises(grpc.RpcError) as caught:
            call(request_message.SerializeToString(), metadata=tuple(AUTH.items()), timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and words in caught.value.details()


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_a_load_with_model_files_is_refused(
    admin_server: RunningServer, clients: dict[str, Client], transport: str
) -> None:
    """Models come from the model store: Triton's model files are a 400, not silently ignored."""
    revision = httpx.get(f"{admin_server.url}/v1/admin/models", headers=AUTH).json()["revision"]
    with pytest.raises(InferenceServerException) as caught:
        clients[transport].load_model(
            "diabetes", headers=AUTH, config=json.dumps(CONFIGURED_IRIS), files={"file:1/model.onnx": b"\x00"}
        )
    assert caught.value.status() == status_of(transport, 400, "INVALID_ARGUMENT")
    assert "model files are not accepted" in str(caught.value.message())
    assert httpx.get(f"{admin_server.url}/v1/admin/models", headers=AUTH).json()["revision"] == revision


def without_ids(answer: dict[str, Any]) -> dict[str, Any]:
    """An answer without its prediction ids, which every answer has its own of."""
    return {key: value for key, value in answer.items() if key != "ids"}
