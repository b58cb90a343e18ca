"""The ceiling of Python gRPC on this machine: a grpc.aio server whose ModelInfer and
ModelStreamInfer do nothing.

    python bench/grpc_ceiling.py PORT [--pipelined]

Answers every ModelInfer call, and every message of a ModelStreamInfer stream (in
order, one at a time), with the same empty response, on the same event loop as
the server's workers (uvloop). The benchmark loads it exactly like the real gRPC front,
so the gap between the two is what validation, batching and the model cost, and the
rest is what grpcio itself costs per call. With `--pipelined`, the stream's messages are
answered as the server's stream is (oip_grpc.py): a task per message, at most 128 in
flight, answers queued to one writer; the gap to the plain stream is what that costs.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from typing import Any

import grpc
import uvloop

SERVICE = "inference.GRPCInferenceService"
EMPTY_RESPONSE = b""  # a ModelInferResponse with every field at its default


async def serve(port: int) -> None:
    async def infer(raw: bytes, context: Any) -> bytes:
        return EMPTY_RESPONSE

    async def stream(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
        async for _ in requests:
            yield EMPTY_RESPONSE

    async def pipelined(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
        answers: asyncio.Queue[bytes | None] = asyncio.Queue()
        slots = asyncio.Semaphore(128)

        async def answer(raw: bytes) -> None:
            await asyncio.sleep(0)  # as a core call that joins the turn's batch
            answers.put_nowait(EMPTY_RESPONSE)
            slots.release()

        async def read() -> None:
            async for raw in requests:
                await slots.acquire()
                asyncio.create_task(answer(raw))
            for _ in range(128):
                await slots.acquire()
            answers.put_nowait(None)

        reader = asyncio.create_task(read())
        while (item := await answers.get()) is not None:
            yield item
        await reader

    handlers = {
        "ModelInfer": grpc.unary_unary_rpc_method_handler(infer),
        "ModelStreamInfer": grpc.stream_stream_rpc_method_handler(pipelined if "--pipelined" in sys.argv else stream),
    }
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    uvloop.run(serve(int(sys.argv[1])))
