"""HTTP routes that change what serves: the admin API (/v1/admin) and the Open Inference
Protocol's model repository extension (/v2/repository), as Triton and MLServer serve it.

Both need an admin key (the edge answers 403 while none is configured); both call the
same `Rollout` operations as the gRPC repository calls and the admin CLI.
"""

from __future__ import annotations

import asyncio
from typing import Any

from model_server.errors import InvalidInput
from model_server.json_codec import decode_json, encode_json
from model_server.rollout.operations import ChangeResult, Rollout, refuse_model_files
from model_server.transports.edge import ADMIN
from model_server.transports.route_table import JSON_TYPE, Answer, Request, Route, RouteTable

JSON_BODY = (JSON_TYPE.decode(),)


ARCHIVE_TYPE = b"application/octet-stream"
# POST /v1/admin/store replaces a stored tag (one that no routing names) with this header.
FORCE_HEADER = b"x-force"


class AdminApi:
    """Handlers of /v1/admin and /v2/repository over one worker's `Rollout`."""

    def __init__(
        self, rollout: Rollout, max_push_bytes: int = 256 * 1024 * 1024, push_timeout_s: float = 600.0
    ) -> None:
        self.rollout = rollout

        def admin(method: str, path: str, summary: str, handler: Any, body: bool = False) -> Route:
            # Unlisted in /v1/openapi.json (which documents the prediction APIs per served
            # model); docs/api.md documents these routes. Not gated: operators must get
            # through when the server is at its request limit.
            return Route(method, path, summary, handler, body=JSON_BODY if body else (), access=ADMIN, listed=False)

        self.routes = RouteTable(
            [
                admin("GET", "/v1/admin/models", "Served names, their routing, revision and stored tags.", self.view),
                admin("PUT", "/v1/admin/models/{name}", "Set (or add) a name's variants and shadow.", self.set, True),
                admin("DELETE", "/v1/admin/models/{name}", "Stop serving a name.", self.remove),
                admin("POST", "/v1/admin/models/{name}/promote", "Send all traffic to one tag.", self.promote, True),
                admin("POST", "/v1/admin/models/{name}/rollback", "Restore the routing before.", self.rollback),
                admin("POST", "/v1/admin/reset", "Serve configuration.yaml's routing again.", self.reset),
                Route(
                    "POST",
                    "/v1/admin/store",
                    "Add a model archive (`bentoml models export`) to the shared store.",
                    self.push,
                    body=(ARCHIVE_TYPE.decode(),),
                    access=ADMIN,
                    listed=False,
                    max_body=(max_push_bytes, "max_push_bytes"),
                    body_timeout=(push_timeout_s, "push_timeout_s"),
                ),
                admin("POST", "/v2/repository/index", "OIP repository index.", self.repository_index, True),
                admin("POST", "/v2/repository/models/{name}/load", "OIP repository load.", self.repository_load, True),
                admin(
                    "POST",
                    "/v2/repository/models/{name}/unload",
                    "OIP repository unload.",
                    self.repository_unload,
                    True,
                ),
            ]
        )

    async def view(self, request: Request) -> Answer:
        # In a thread: it lists the model store, which reads a file per stored tag.
        return Answer(encode_json(await asyncio.to_thread(self.rollout.view)))

    async def set(self, request: Request) -> Answer:
        body = decode_json(request.body)
        return _changed(await self.rollout.set(request.params["name"], body, self._who(request)))

    async def remove(self, request: Request) -> Answer:
        return _changed(await self.rollout.remove(request.params["name"], self._who(request)))

    async def promote(self, request: Request) -> Answer:
        body = decode_json(request.body)
        return _changed(await self.rollout.promote(request.params["name"], body, self._who(request)))

    async def rollback(self, request: Request) -> Answer:
        return _changed(await self.rollout.rollback(request.params["name"], self._who(request)))

    async def reset(self, request: Request) -> Answer:
        return _changed(await self.rollout.reset(self._who(request)))

    async def push(self, request: Request) -> Answer:
        force = (request.header(FORCE_HEADER) or "").strip().lower()
        if force not in ("", "true", "false"):
            raise InvalidInput.at(["headers", FORCE_HEADER.decode()], "must be true or false", "type")
        pushed = await self.rollout.push(request.body, force == "true", self._who(request))
        return Answer(encode_json(pushed.to_json()), status=201)

    async def repository_index(self, request: Request) -> Answer:
        body = _optional_object(request.body)
        ready = body.get("ready", False)
        if not isinstance(ready, bool):
            raise InvalidInput.at(["ready"], "must be true or false", "type")
        return Answer(encode_json(await asyncio.to_thread(self.rollout.index, ready)))

    async def repository_load(self, request: Request) -> Answer:
        config = _config_parameter(_optional_object(request.body))
        result = await self.rollout.load(request.params["name"], config, self._who(request))
        return _changed(result)

    async def repository_unload(self, request: Request) -> Answer:
        _optional_object(request.body)
        return _changed(await self.rollout.remove(request.params["name"], self._who(request)))

    def _who(self, request: Request) -> str:
        return self.rollout.who(request.header(b"authorization"))


def _changed(result: ChangeResult) -> Answer:
    return Answer(encode_json(result.to_json()), status=result.status, revision=result.revision)


def _optional_object(raw: bytes) -> dict[str, Any]:
    """The repository extension's bodies are optional JSON objects."""
    if not raw.strip():
        return {}
    body = decode_json(raw)
    if not isinstance(body, dict):
        raise InvalidInput.at(["body"], "must be a JSON object", "type")
    return body


def _config_parameter(body: dict[str, Any]) -> Any:
    """Triton's load takes a model configuration as `parameters.config`, a JSON string;
    here it is a name's routing, the body of PUT /v1/admin/models/{name}."""
    parameters = body.get("parameters", {})
    if not isinstance(parameters, dict):
        raise InvalidInput.at(["parameters"], "must be a JSON object", "type")
    refuse_model_files(parameters)
    config = parameters.get("config")
    if config is None:
        return None
    if not isinstance(config, str):
        raise InvalidInput.at(["parameters", "config"], "must be a JSON string", "type")
    return decode_json(config.encode())
