"""TLS on HTTP and gRPC from one configuration block, with a certificate made here."""

from __future__ import annotations

import ssl
import subprocess
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc

from model_server.local_server import RunningServer, start_server
from tests.oversized import TEN_MB, lying_post, urllib_post
from tests.test_http_api import expected

pytestmark = pytest.mark.integration

ROW = [5.1, 3.5, 1.4, 0.2]


@pytest.fixture(scope="module")
def tls_server(trained_default_models: list[str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    config = folder / "configuration.yaml"
    config.write_text(
        "services:\n  TabularModelServer:\n    workers: 1\n"
        f"    ssl:\n      enabled: true\n      certfile: {cert}\n      keyfile: {key}\n"
        "    model_server:\n      models:\n        iris:\n          variants: [{tag: 'iris:v1'}]\n"
    )
    running = start_server(config, ca_file=cert)
    try:
        yield running
    finally:
        running.stop()


def test_http_over_tls(tls_server: RunningServer) -> None:
    assert tls_server.url.startswith("https://")
    response = httpx.post(
        f"{tls_server.url}/v1/models/iris/predict", json={"instances": [ROW]}, verify=tls_server.verify
    )
    assert response.json()["probabilities"] == expected("iris:v1", np.array([ROW]))["probabilities"]
    with pytest.raises(httpx.HTTPError):  # plain HTTP is not answered
        httpx.get(f"http://127.0.0.1:{tls_server.port}/readyz", timeout=5)


def test_grpc_over_tls(tls_server: RunningServer) -> None:
    assert tls_server.ca_file is not None
    client = triton_grpc.InferenceServerClient(
        tls_server.grpc_target, ssl=True, root_certificates=str(tls_server.ca_file)
    )
    tensor = triton_grpc.InferInput("features", [1, 4], "FP64")
    tensor.set_data_from_numpy(np.array([ROW]))
    result = client.infer("iris", [tensor])
    assert result.as_numpy("predict_proba").tolist() == expected("iris:v1", np.array([ROW]))["probabilities"]
    plain = triton_grpc.InferenceServerClient(tls_server.grpc_target)
    with pytest.raises(Exception):  # noqa: B017  an insecure channel cannot talk to it
        plain.is_server_live(client_timeout=5)


def test_oversized_body_sent_whole_gets_the_413_over_tls(tls_server: RunningServer) -> None:
    context = tls_server.verify
    assert isinstance(context, ssl.SSLContext)
    status, body = urllib_post(f"{tls_server.url}/v1/models/iris/predict", context=context)
    assert status == 413 and body["detail"][0]["type"] == "too_large", body
    status, body = lying_post(f"{tls_server.url}/v1/models/iris/predict", 20_000_000, TEN_MB, context=context)
    assert status == 413 and "20000000 bytes" in body["error"]
