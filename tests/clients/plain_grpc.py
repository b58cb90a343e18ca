"""Call the OIP gRPC front with plain grpcio and this project's stubs (no Triton client).

    python tests/clients/plain_grpc.py 127.0.0.1:3001

Prints the tag, the predicted classes and the probabilities for two iris rows.
"""

from __future__ import annotations

import sys
from pathlib import Path

import grpc
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from model_server.transports.oip_proto import grpc_predict_v2_pb2 as pb  # noqa: E402
from model_server.transports.oip_proto import grpc_predict_v2_pb2_grpc as pb_grpc  # noqa: E402


def main(target: str) -> None:
    rows = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], dtype=np.float64)
    request = pb.ModelInferRequest(model_name="iris", id="readme-1")
    request.inputs.add(name="features", datatype="FP64", shape=list(rows.shape))
    request.raw_input_contents.append(rows.tobytes())  # row-major, little-endian
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        print("live:", stub.ServerLive(pb.ServerLiveRequest()).live)
        response = stub.ModelInfer(request, timeout=10)
    outputs = {o.name: (o, raw) for o, raw in zip(response.outputs, response.raw_output_contents, strict=True)}
    labels_raw = outputs["predict"][1]
    labels, offset = [], 0
    while offset < len(labels_raw):  # BYTES: 4-byte little-endian length, then the bytes
        size = int.from_bytes(labels_raw[offset : offset + 4], "little")
        labels.append(labels_raw[offset + 4 : offset + 4 + size].decode())
        offset += 4 + size
    proba_meta, proba_raw = outputs["predict_proba"]
    proba = np.frombuffer(proba_raw, dtype="<f8").reshape(list(proba_meta.shape))
    print("model:", response.model_name, "version:", response.model_version, "id:", response.id)
    print("predict:", labels)
    print("predict_proba:", proba.tolist())


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:3001")
