"""A service with no models, served by a real `bentoml serve` in
tests/test_bentoml_hooks.py: it records what BentoML gave its worker (hooks 5 and 6 of
model_server/bentoml_hooks.py) and answers one route through the front door (hooks 1 and 2)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import bentoml

from model_server.bentoml_hooks import bentoml_routes, front_door_service, http_host
from model_server.config.auth import ApiKeys
from model_server.transports.edge import ConcurrencyGate, Edge
from model_server.transports.http_front_door import FrontDoor
from model_server.transports.route_table import Answer, Request, Route, RouteTable, join


async def _facts(request: Request) -> Answer:
    return Answer(Path(os.environ["PROBE_FACTS"]).read_bytes(), tag="probe:v1")


def _front_door(app: object) -> FrontDoor:
    routes = join(RouteTable([Route("GET", "/probe", "probe", _facts)]), bentoml_routes(metrics_need_key=False))
    return FrontDoor(app, routes, Edge(ApiKeys([]), ConcurrencyGate(4), access_log=False), 1000)


@bentoml.service(name="hook_probe", service_class=front_door_service(_front_door))
class HookProbe:
    def __init__(self) -> None:
        directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        facts = {
            "prometheus_dir": directory,
            "prometheus_dir_exists": bool(directory) and Path(directory).is_dir(),
            "has_fd": "--fd" in sys.argv,
            "http_host": http_host(),
        }
        Path(os.environ["PROBE_FACTS"]).write_text(json.dumps(facts))

    def __is_ready__(self) -> bool:
        return True
