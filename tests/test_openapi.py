"""The OpenAPI document, built from route tables and a small core (no server)."""

from __future__ import annotations

from typing import Any

import jsonschema
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from model_server.config.settings import ServerSettings
from model_server.core.server import ModelServer
from model_server.models.registry import LoadedModel
from model_server.models.schema import CLASSIFICATION, Feature, InputSchema
from model_server.transports import openapi
from model_server.transports.json_api import JsonApi
from model_server.transports.oip_rest import OipRestApi
from model_server.transports.route_table import Answer, AnswerBody, Request, RequestBody, Route, RouteTable, join

SCHEMA = InputSchema(
    task=CLASSIFICATION, features=(Feature("a", "float64", 0, 3), Feature("b", "float64", 0, 3)), classes=("no", "yes")
)


@pytest.fixture(scope="module")
def core() -> ModelServer:
    fitted = LogisticRegression().fit(np.array([[0, 0], [1, 1], [2, 2], [3, 3]]), [0, 0, 1, 1])
    model = LoadedModel(tag="m:v1", pipeline=fitted, schema=SCHEMA)
    settings = ServerSettings.model_validate({"models": {"m": {"variants": [{"tag": "m:v1"}]}}})
    server = ModelServer(settings, {"m:v1": model})
    yield server
    server.close()


def document(core: ModelServer) -> dict[str, Any]:
    routes = join(JsonApi(lambda: core, dict).routes, OipRestApi(lambda: core, lambda: True).routes)
    return openapi.build_openapi(core, routes)


def test_every_request_and_answer_body_has_its_builder() -> None:
    assert set(openapi.REQUESTS) | {RequestBody.BENTOML_PREDICT} == set(RequestBody)
    assert set(openapi.ANSWERS) == set(AnswerBody)


def test_a_route_with_an_unknown_body_kind_cannot_be_declared() -> None:
    with pytest.raises(ValueError, match="'drfit' is not a valid AnswerBody"):
        Route("GET", "/v1/x", "x", response_schema=AnswerBody("drfit"))


def test_each_model_route_is_listed_per_served_model_with_its_answer(core: ModelServer) -> None:
    paths = document(core)["paths"]
    assert "/v1/models/m/predict" in paths and "/v2/models/m/infer" in paths
    drift = paths["/v1/models/m/drift"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert drift["required"] == ["model", "routing_revision", "thresholds", "epsilon", "tags"]
    meta = paths["/v2/models/m"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert meta["required"] == ["name", "versions", "platform", "inputs", "outputs"]


def test_the_predict_request_schema_accepts_what_the_core_accepts_and_refuses_the_rest(core: ModelServer) -> None:
    operation = document(core)["paths"]["/v1/models/m/predict"]["post"]
    schema = operation["requestBody"]["content"]["application/json"]["schema"]
    jsonschema.validate({"instances": [[1.0, 2.0]]}, schema)
    jsonschema.validate({"instances": [{"a": 1.0, "b": None}], "version": "v1", "explain": True}, schema)
    for refused in ({"instances": [[1.0]]}, {"instances": [{"a": 1.0}]}, {"rows": [[1, 2]]}, {"instances": []}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(refused, schema)


def test_routes_without_a_described_answer_are_json_objects_and_bentomls_are_its_own(core: ModelServer) -> None:
    async def plain(request: Request) -> Answer:
        return Answer(b"{}")

    routes = RouteTable([Route("GET", "/v1/plain", "plain", plain), Route("GET", "/livez", "BentoML's")])
    paths = openapi.build_openapi(core, routes)["paths"]
    ours = paths["/v1/plain"]["get"]["responses"]["200"]
    assert ours["content"]["application/json"]["schema"] == {"type": "object"}
    theirs = paths["/livez"]["get"]["responses"]["200"]
    assert theirs["description"] == "Answered by BentoML." and "text/plain" in theirs["content"]
