"""A closed-loop load client for OIP gRPC streaming (`ModelStreamInfer`), one process.

    python -m bench.grpc_stream_client TARGET MESSAGES_FILE --seconds 4 --streams 4 --window 8

h2load cannot drive a bidirectional stream, so this client does, with grpcio's
synchronous API: `--streams` streams, each on its own connection (so that the kernel
spreads them over the workers that share the port), each keeping `--window` messages in
flight (a message is sent when an answer frees its slot). The messages are serialized
ModelInferRequests, written length-prefixed to MESSAGES_FILE, sent in turn. Prints one
JSON line: answers, error answers, seconds, and this process's CPU seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc

STREAM = "/inference.GRPCInferenceService/ModelStreamInfer"
# A ModelStreamInferResponse that starts with field 1 (error_message) is an error; a
# successful one has no error_message and starts with field 2 (infer_response).
ERROR_TAG = 0x0A


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target")
    parser.add_argument("messages", type=Path)
    parser.add_argument("--seconds", type=float, default=4)
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--window", type=int, default=8)
    args = parser.parse_args()
    messages = read_messages(args.messages)
    deadline = time.monotonic() + args.seconds
    counts = [[0, 0] for _ in range(args.streams)]
    started, cpu = time.monotonic(), time.process_time()
    threads = [
        threading.Thread(target=run_stream, args=(args.target, messages, args.window, deadline, counts[i]))
        for i in range(args.streams)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(
        json.dumps(
            {
                "answers": sum(c[0] for c in counts),
                "errors": sum(c[1] for c in counts),
                "seconds": time.monotonic() - started,
                "cpu_seconds": time.process_time() - cpu,
            }
        )
    )


def read_messages(path: Path) -> list[bytes]:
    data, messages, offset = path.read_bytes(), [], 0
    while offset < len(data):
        size = int.from_bytes(data[offset : offset + 4], "big")
        messages.append(data[offset + 4 : offset + 4 + size])
        offset += 4 + size
    return messages


def write_messages(path: Path, messages: list[bytes]) -> None:
    path.write_bytes(b"".join(len(m).to_bytes(4, "big") + m for m in messages))


def run_stream(target: str, messages: list[bytes], window: int, deadline: float, count: list[int]) -> None:
    """One stream until the deadline, then the answers still in flight; counts answers and errors."""
    slots = threading.Semaphore(window)

    def requests() -> Iterator[bytes]:
        i = 0
        while time.monotonic() < deadline:
            slots.acquire()
            yield messages[i % len(messages)]
            i += 1

    # A channel of its own (local subchannel pool): one connection per stream.
    with grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
        call = channel.stream_stream(STREAM)
        for answer in call(requests(), timeout=max(30.0, deadline - time.monotonic() + 30)):
            slots.release()
            count[0] += 1
            if answer[:1] == bytes([ERROR_TAG]):
                count[1] += 1


if __name__ == "__main__":
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")
    main()
