"""A value outside a feature's training range is answered with a warning, the same on
every door of a real server: JSON /v1 and /predict, BentoML's client of `predict`, OIP
REST (tritonclient.http) and OIP gRPC (tritonclient.grpc), explained or not. An answer
whose values all lie inside the training range carries no warning at all."""

from __future__ import annotations

from typing import Any

import bentoml
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http

from model_server.local_server import RunningServer
from model_server.models import registry

pytestmark = pytest.mark.integration

INSIDE = [5.1, 3.5, 1.4, 0.2]  # a row of iris' training data


def _outside() -> tuple[list[float], str]:
    """INSIDE with its last feature one unit above its training maximum, and the warning
    that names it, from the stored schema."""
    feature = registry.stored_schema("iris:v1").features[3]
    value = feature.max + 1
    warning = f"{feature.name}: {value:.6g} is outside the training range {feature.min:.6g} to {feature.max:.6g}"
    return [*INSIDE[:3], value], warning


def _oip(module: Any, row: list[float]) -> Any:
    tensor = module.InferInput("features", [1, 4], "FP64")
    tensor.set_data_from_numpy(np.array([row], dtype=np.float64))
    return tensor


def test_the_json_doors_and_bentomls_client_warn_of_a_value_outside_the_training_range(server: RunningServer) -> None:
    row, warning = _outside()
    names = registry.stored_schema("iris:v1").names
    record = dict(zip(names, row, strict=True))
    v1 = httpx.post(f"{server.url}/v1/models/iris/versions/v1/predict", json={"instances": [record]}, timeout=30)
    named = httpx.post(f"{server.url}/predict", json={"model": "iris", "version": "v1", "instances": [row]}, timeout=30)
    explained = httpx.post(
        f"{server.url}/v1/models/iris/versions/v1/predict", json={"instances": [row], "explain": True}, timeout=60
    )
    with bentoml.SyncHTTPClient(server.url) as client:
        by_client = client.predict(model="iris", version="v1", instances=[row])
        inside = client.predict(model="iris", version="v1", instances=[INSIDE])
    for answer in (v1, named, explained):
        assert answer.status_code == 200, answer.text
        assert answer.json()["warnings"] == [warning]
        assert answer.json()["tag"] == "iris:v1" and len(answer.json()["predictions"]) == 1
    assert by_client["warnings"] == [warning] and by_client["probabilities"] == v1.json()["probabilities"]
    assert "explanation" in explained.json()
    assert "warnings" not in inside
    # Several rows: one warning per feature, counting the rows.
    rows = [INSIDE, row, row]
    many = httpx.post(f"{server.url}/v1/models/iris/versions/v1/predict", json={"instances": rows}, timeout=30).json()
    feature = registry.stored_schema("iris:v1").features[3]
    assert many["warnings"] == [
        f"{feature.name}: 2 of 3 rows are outside the training range {feature.min:.6g} to {feature.max:.6g}"
        f" (the first: row 1, {row[3]:.6g})"
    ]


def test_oip_rest_and_grpc_carry_the_warning_as_a_response_parameter(server: RunningServer) -> None:
    row, warning = _outside()
    http = triton_http.InferenceServerClient(f"127.0.0.1:{server.port}")
    answer = http.infer("iris", [_oip(triton_http, row)], model_version="v1")
    assert answer.get_response()["parameters"] == {"warnings": warning}
    assert answer.get_response()["model_version"] == "v1"
    inside = http.infer("iris", [_oip(triton_http, INSIDE)], model_version="v1")
    assert "parameters" not in inside.get_response()
    grpc = triton_grpc.InferenceServerClient(server.grpc_target)
    result = grpc.infer("iris", [_oip(triton_grpc, row)], model_version="v1")
    assert result.get_response().parameters["warnings"].string_param == warning
    assert result.as_numpy("predict_proba").tolist() == answer.as_numpy("predict_proba").tolist()
    quiet = grpc.infer("iris", [_oip(triton_grpc, INSIDE)], model_version="v1")
    assert "warnings" not in quiet.get_response().parameters
