"""The ceilings the server is measured against: a bare ASGI app under uvicorn that does
only what a prediction cannot do without, on the same exported model.

    CEILING_MODEL=folder uvicorn bench.ceiling:app --http httptools --loop uvloop --workers N

No framework and no checks: orjson reads the body, onnxruntime (one thread) runs the
tag's checked ONNX export fed as the server feeds it, orjson writes the probabilities.
With CEILING_ANSWER=constant it answers a fixed body without reading the model: the
cost of HTTP alone under uvicorn. `start` exports the tag from the model store into a
folder (the export's bytes and the little of its schema the feed needs) and starts the
app there, so the app itself imports neither BentoML nor the project.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson

MODEL_FILE = "model.onnx"
FEED_FILE = "feed.json"


class Model:
    """onnxruntime over an export, fed one float32 matrix or one tensor per column."""

    def __init__(self, folder: Path) -> None:
        import onnxruntime

        feed = json.loads((folder / FEED_FILE).read_text())
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(
            (folder / MODEL_FILE).read_bytes(), options, providers=["CPUExecutionProvider"]
        )
        self.columns: list[tuple[str, str, bool]] = [tuple(c) for c in feed["columns"]]  # type: ignore[misc]
        self.frame_input: bool = feed["frame_input"]

    def probabilities(self, instances: list[Any]) -> list[list[float]]:
        if not self.frame_input:
            inputs = {"features": np.asarray(instances, dtype=np.float32)}
        else:
            inputs = {}
            for name, graph_name, categorical in self.columns:
                if categorical:
                    column = np.asarray([[r.get(name) or ""] for r in instances], dtype=object)
                else:
                    values = [r.get(name) for r in instances]
                    column = np.asarray([[np.nan if v is None else v] for v in values], dtype=np.float32)
                inputs[graph_name] = column
        probabilities: list[list[float]] = self.session.run(None, inputs)[-1].astype(np.float64).tolist()
        return probabilities


CONSTANT = orjson.dumps({"predictions": [1], "probabilities": [[0.25, 0.75]]})
HEADERS = [(b"content-type", b"application/json")]


def build_app() -> Any:
    folder = os.environ.get("CEILING_MODEL")
    model = Model(Path(folder)) if folder and os.environ.get("CEILING_ANSWER") != "constant" else None

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                while (message := await receive())["type"] != "lifespan.shutdown":
                    await send({"type": message["type"] + ".complete"})
                await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        if scope["method"] == "GET":  # the readiness probe of `start`
            payload = b"{}"
        elif model is None:
            payload = CONSTANT
        else:
            probabilities = model.probabilities(orjson.loads(body)["instances"])
            predictions = [max(range(len(p)), key=p.__getitem__) for p in probabilities]
            payload = orjson.dumps({"predictions": predictions, "probabilities": probabilities})
        await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
        await send({"type": "http.response.body", "body": payload})

    return app


app = build_app() if "CEILING_MODEL" in os.environ or "CEILING_ANSWER" in os.environ else None


def export(tag: str, folder: Path) -> Path:
    """The tag's checked ONNX export and the columns its feed needs, written to `folder`."""
    import bentoml

    from model_server.constants import ONNX_METADATA, ONNX_OBJECT
    from model_server.models.registry import stored_schema

    stored = bentoml.models.get(tag)
    schema = stored_schema(tag)
    onnx: dict[str, Any] = stored.info.metadata.get(ONNX_METADATA) or {}  # type: ignore[assignment]
    names: dict[str, str] = onnx.get("inputs") or {}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MODEL_FILE).write_bytes(stored.custom_objects[ONNX_OBJECT])
    columns = [(f.name, names.get(f.name, f.name), f.is_categorical) for f in schema.features]
    (folder / FEED_FILE).write_text(json.dumps({"frame_input": schema.frame_input, "columns": columns}))
    return folder


def start(tag: str | None, workers: int, port: int, log_path: Path) -> subprocess.Popen[bytes]:
    """uvicorn with httptools and uvloop serving the ceiling app on `port`: the model's
    answer for `tag`, or the constant answer when `tag` is None. Returns once it answers."""
    import httpx

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if tag is None:
        env["CEILING_ANSWER"] = "constant"
    else:
        env["CEILING_MODEL"] = str(export(tag, Path(tempfile.mkdtemp(prefix="ceiling-model-"))))
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "bench.ceiling:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--http",
        "httptools",
        "--loop",
        "uvloop",
        "--no-access-log",
        "--log-level",
        "warning",
    ]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, cwd=Path(__file__).resolve().parents[1], env=env, stdout=log, stderr=log, start_new_session=True
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the ceiling app ended: {log_path.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    return process
