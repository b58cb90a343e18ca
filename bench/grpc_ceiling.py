"""The ceiling of Python gRPC on this machine: a grpc.aio server whose ModelInfer and
ModelStreamInfer do nothing.

    .venv/bin/python -m bench.grpc_ceiling PORT [--pipelined] [--parse] [--sync THREADS]

Answers every ModelInfer call, and every message of a ModelStreamInfer stream (in
order, one at a time), with the same empty response, on the same event loop as
the server's workers (uvloop). The benchmark loads it exactly like the real gRPC front,
so the gap between the two is what validation, batching and the model cost, and the
rest is what grpcio itself costs per call. With `--pipelined`, the stream's messages are
answered as the server's stream is (oip_grpc.py): a task per message, at most 128 in
flight, answers queued to one writer; the gap to the plain stream is what that costs.

The alternatives to grpc.aio (bench/grpc_servers.py): with `--parse`, each call parses
its ModelInferRequest and writes a one-output ModelInferResponse with the generated
protobuf classes (upb), as a front must; with `--sync THREADS`, grpcio's synchronous
server answers, its handlers on a pool of THREADS threads, instead of grpc.aio. Every
process binds the port with SO_REUSEPORT (grpcio's default on Linux), so several share it
as the server's workers do.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import psutil
import uvloop

from model_server.local_server import free_port

ROOT = Path(__file__).resolve().parents[1]

SERVICE = "inference.GRPCInferenceService"
EMPTY_RESPONSE = b""  # a ModelInferResponse with every field at its default


class Ceiling:
    """bench/grpc_ceiling.py in processes of its own (by default one) sharing a port, as
    the loads see a server."""

    def __init__(self, port: int, processes: list[subprocess.Popen[bytes]]) -> None:
        self.grpc_port, self.processes = port, processes
        self.grpc_target = f"127.0.0.1:{port}"
        self.log_path = Path(os.devnull)

    @classmethod
    def start(cls, *options: str, processes: int = 1) -> Ceiling:
        port = free_port()
        command = [sys.executable, "-m", "bench.grpc_ceiling", str(port), *options]
        ceiling = cls(port, [subprocess.Popen(command, cwd=ROOT) for _ in range(processes)])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    if processes > 1:
                        time.sleep(1.0)  # the others bind too
                    return ceiling
            time.sleep(0.2)
        ceiling.stop()
        raise SystemExit(f"the gRPC ceiling ({' '.join(options) or 'no options'}) did not start")

    def cpu_seconds(self) -> float:
        return sum(sum(psutil.Process(p.pid).cpu_times()[:2]) for p in self.processes)

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            process.wait(timeout=30)


def parsed_answer(raw: bytes) -> bytes:
    """What a front does with protobuf at least: parse the request, write an answer of one
    FP64 output (the row's first input value as its probability)."""
    from model_server.transports.oip_proto import grpc_predict_v2_pb2 as pb

    request = pb.ModelInferRequest.FromString(raw)
    answer = pb.ModelInferResponse(model_name=request.model_name, id=request.id)
    output = answer.outputs.add(name="probabilities", datatype="FP64", shape=[1, 1])
    output.contents.fp64_contents.append(float(len(request.raw_input_contents)))
    return answer.SerializeToString()


def answer_of(raw: bytes) -> bytes:
    return parsed_answer(raw) if "--parse" in sys.argv else EMPTY_RESPONSE


def serve_sync(port: int, threads: int) -> None:
    """grpcio's synchronous server: the same answers, handlers on a thread pool."""

    def infer(raw: bytes, context: Any) -> bytes:
        return answer_of(raw)

    def stream(requests: Iterator[bytes], context: Any) -> Iterator[bytes]:
        for raw in requests:
            yield answer_of(raw)

    handlers = {
        "ModelInfer": grpc.unary_unary_rpc_method_handler(infer),
        "ModelStreamInfer": grpc.stream_stream_rpc_method_handler(stream),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=threads))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


async def serve(port: int) -> None:
    async def infer(raw: bytes, context: Any) -> bytes:
        return answer_of(raw)

    async def stream(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
        async for raw in requests:
            yield answer_of(raw)

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
    if "--sync" in sys.argv:
        serve_sync(int(sys.argv[1]), int(sys.argv[sys.argv.index("--sync") + 1]))
    else:
        uvloop.run(serve(int(sys.argv[1])))
