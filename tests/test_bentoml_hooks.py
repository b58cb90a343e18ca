"""Contract tests: one per BentoML hook that model_server/bentoml_hooks.py lists.

Each fails loudly when a BentoML upgrade changes what the project relies on.
"""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from pathlib import Path

import bentoml
import httpx
import pytest
from starlette.routing import Mount
from starlette.testclient import TestClient

from model_server.bentoml_hooks import bentoml_routes, declares_models, front_door_service
from model_server.config.auth import ApiKeys
from model_server.constants import SERVICE_NAME, SETTINGS_KEY
from model_server.local_server import start_server
from model_server.transports.edge import ConcurrencyGate, Edge
from model_server.transports.http_front_door import FrontDoor
from model_server.transports.openapi import error_responses
from model_server.transports.route_table import Answer, Request, Route, RouteTable, join

ROOT = Path(__file__).resolve().parent.parent


async def _probe(request: Request) -> Answer:
    return Answer(b'{"probe":true}', tag="probe:v1")


def _front_door(app: object) -> FrontDoor:
    routes = join(RouteTable([Route("GET", "/probe", "probe", _probe)]), bentoml_routes(metrics_need_key=False))
    return FrontDoor(app, routes, Edge(ApiKeys([]), ConcurrencyGate(4), access_log=False), 1000)


class Probe:
    """A service with no models whose readiness the test sets."""

    ready = False

    def __is_ready__(self) -> bool:
        return Probe.ready


def test_hook_1_service_class_makes_the_service_our_subclass() -> None:
    assert "service_class" in inspect.signature(bentoml.service).parameters
    cls = front_door_service(_front_door)
    service = bentoml.service(name="probe_one", service_class=cls)(type("ProbeOne", (Probe,), {}))
    assert isinstance(service, cls) and isinstance(service, bentoml.Service)


def test_hook_2_to_asgi_puts_the_front_door_first_and_readyz_asks_the_service() -> None:
    # One test: BentoML registers its metrics globally when an app starts, so a process
    # can start only one.
    assert "is_main" in inspect.signature(bentoml.Service.to_asgi).parameters
    service = bentoml.service(name="probe_two", service_class=front_door_service(_front_door))(
        type("ProbeTwo", (Probe,), {})
    )
    app = service.to_asgi()
    assert isinstance(app, FrontDoor)
    with TestClient(app) as client:
        answer = client.get("/probe", headers={"x-request-id": "contract-2"})
        assert answer.json() == {"probe": True} and answer.headers["x-model-tag"] == "probe:v1"
        forwarded = client.get("/livez", headers={"x-request-id": "contract-2b"})
        assert forwarded.status_code == 200 and forwarded.headers["x-request-id"] == "contract-2b"
        unknown = client.get("/nowhere")
        assert unknown.status_code == 404 and unknown.json()["error"].startswith("no route for GET /nowhere")
        assert client.get("/readyz").status_code == 503  # __is_ready__ says no (documented)
        Probe.ready = True
        try:
            assert client.get("/readyz").status_code == 200
        finally:
            Probe.ready = False


def test_hook_3_bentoml_answers_exactly_the_routes_the_front_door_forwards_to_it() -> None:
    service = bentoml.service(name="probe_three")(type("ProbeThree", (Probe,), {}))
    app = bentoml.Service.to_asgi(service)
    served = {route.path for route in app.routes if not isinstance(route, Mount)}
    mounted = {route.path for route in app.routes if isinstance(route, Mount)}
    ours = bentoml_routes(metrics_need_key=False)
    assert served == {route.path for route in ours if not route.prefix}
    assert mounted == {route.path for route in ours if route.prefix}


def test_hook_4_bentoml_keeps_our_settings_block_and_the_ssl_block() -> None:
    script = f"""
import json
from bentoml._internal.configuration import load_config
from bentoml._internal.configuration.containers import BentoMLContainer
load_config({str(ROOT / "tests" / "payloads" / "bentoml_config.yaml")!r}, use_version=2)
block = BentoMLContainer.config.services[{SERVICE_NAME!r}].get()
print(json.dumps({{"ours": block[{SETTINGS_KEY!r}], "ssl": block["ssl"]}}))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=ROOT)
    kept = json.loads(out.stdout.strip().splitlines()[-1])
    assert kept["ours"]["models"]["iris"]["variants"] == [{"tag": "iris:v1"}]
    assert kept["ssl"]["enabled"] is True and kept["ssl"]["certfile"] == "cert.pem"


def test_models_declared_by_class_attribute_are_the_services_models() -> None:
    cls = declares_models(["iris:v1", "iris:v2"])(type("ProbeModels", (Probe,), {}))
    service = bentoml.service(name="probe_models")(cls)
    assert sorted(str(model.tag) for model in service.models) == ["iris:v1", "iris:v2"]


@pytest.mark.integration
def test_hooks_2_5_and_6_in_a_real_worker(tmp_path: Path) -> None:
    """A real `bentoml serve` of a probe service: the front door answers its route (hook 2);
    the worker's environment names an existing Prometheus directory when __init__ runs
    (hook 5); the worker got the shared socket as --fd and http_host reads its address (hook 6)."""
    facts_file = tmp_path / "facts.json"
    running = start_server(
        ROOT / "configuration.yaml", {"PROBE_FACTS": str(facts_file)}, service="tests.bentoml_probe_service:HookProbe"
    )
    try:
        answer = httpx.get(f"{running.url}/probe", timeout=10)
        assert answer.status_code == 200 and answer.headers["x-model-tag"] == "probe:v1"
        facts = answer.json()
    finally:
        running.stop()
    assert facts["prometheus_dir"] and facts["prometheus_dir_exists"] is True
    assert facts["has_fd"] is True and facts["http_host"] == "127.0.0.1"


def test_hook_7_the_document_of_an_api_route_declares_the_front_doors_body_and_errors() -> None:
    class ProbeApi(Probe):
        @bentoml.api(route="/echo")
        def echo(self, text: str) -> str:
            return text

    plain = bentoml.service(name="probe_nine_plain")(type("ProbeNinePlain", (ProbeApi,), {}))
    bentoml_says = _as_served(plain)["paths"]["/echo"]["post"]
    assert bentoml_says["responses"]["400"] == {
        "description": "Bad Request",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/InvalidArgument"}}},
    }, "BentoML's own error declaration changed: check what hook 7 replaces"
    assert "required" not in bentoml_says["requestBody"]
    ours = bentoml.service(name="probe_nine", service_class=front_door_service(_front_door, error_responses()))(
        type("ProbeNine", (ProbeApi,), {})
    )
    operation = _as_served(ours)["paths"]["/echo"]["post"]
    assert operation["requestBody"]["required"] is True
    assert {status: response for status, response in operation["responses"].items() if status != "200"} == (
        error_responses()
    )
    assert operation["responses"]["200"] == bentoml_says["responses"]["200"]
    error = error_responses()["400"]["content"]["application/json"]["schema"]
    assert error["properties"]["detail"]["type"] == "array"  # BentoML declares a string


def _as_served(service: bentoml.Service) -> dict:  # type: ignore[type-arg]
    """The document as BentoML's /docs.json view sends it (JSONResponse of `asdict()`)."""
    return json.loads(json.dumps(service.openapi_spec.asdict()))


def test_http_host_reads_the_address_of_the_socket_it_is_given() -> None:
    import socket

    from model_server.bentoml_hooks import http_host

    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        assert http_host(["worker", "--fd", str(listening.fileno())]) == "127.0.0.1"
        assert listening.fileno() >= 0  # the shared socket stays open
    assert http_host(["pytest"]) is None


def test_hook_9_a_tag_lives_in_name_version_of_the_store_folder_and_its_facts_follow_it() -> None:
    """The registry reads a tag's facts from <store>/<name>/<version>/model.yaml once per
    change of that file; BentoML's own reading is the reference."""
    from sklearn.linear_model import LinearRegression

    from model_server.models import registry

    fitted = LinearRegression().fit([[0.0], [1.0]], [0.0, 1.0])
    first = bentoml.sklearn.save_model("hook-nine:one", fitted, labels={"turn": "first"}, metadata={"n": 1})
    bentoml.sklearn.save_model("hook-nine:two", fitted, labels={"turn": "second"})
    assert registry._store_path() / "hook-nine" / "one" == Path(bentoml.models.get("hook-nine:one").path)
    assert registry.stored_versions("hook-nine") == ["hook-nine:one", "hook-nine:two"]
    assert [str(m.tag) for m in sorted(bentoml.models.list("hook-nine"), key=lambda m: m.info.creation_time)] == [
        "hook-nine:one",
        "hook-nine:two",
    ]
    assert "hook-nine" in registry.stored_names()
    facts = registry.stored_facts("hook-nine:one")
    assert (facts.labels, facts.metadata["n"]) == ({"turn": "first"}, 1)
    assert registry.registration_time("hook-nine:one") == first.info.creation_time.isoformat()

    # Saved again under the same version: the facts read are the new file's, not the cached ones.
    bentoml.models.delete("hook-nine:one")
    assert registry.stored_versions("hook-nine") == ["hook-nine:two"]
    assert registry.registration_time("hook-nine:one") is None
    again = bentoml.sklearn.save_model("hook-nine:one", fitted, labels={"turn": "third, a longer label"})
    assert registry.stored_facts("hook-nine:one").labels == {"turn": "third, a longer label"}
    assert registry.stored_facts("hook-nine:one").created == again.info.creation_time
    assert registry.stored_versions("hook-nine") == ["hook-nine:two", "hook-nine:one"]
    assert registry.stored_versions("../hook-nine") == [] and registry.stored_versions("absent") == []
