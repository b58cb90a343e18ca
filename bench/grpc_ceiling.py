"""The ceiling of Python gRPC on this machine: a grpc.aio server whose ModelInfer does nothing.

    python bench/grpc_ceiling.py PORT

Answers every ModelInfer call with the same empty response, on the same event loop as
the server's workers (uvloop). The benchmark loads it exactly like the real gRPC front,
so the gap between the two is what validation, batching and the model cost, and the
rest is what grpcio itself costs per call.
"""

from __future__ import annotations

import sys
from typing import Any

import grpc
import uvloop

SERVICE = "inference.GRPCInferenceService"
EMPTY_RESPONSE = b""  # a ModelInferResponse with every field at its default


async def serve(port: int) -> None:
    async def infer(raw: bytes, context: Any) -> bytes:
        return EMPTY_RESPONSE

    handler = grpc.unary_unary_rpc_method_handler(infer)
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {"ModelInfer": handler}),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    uvloop.run(serve(int(sys.argv[1])))
