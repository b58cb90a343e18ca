"""The web page for people at /ui, and the two small JSON routes it reads besides /v1.

The page (model_server/transports/web/: plain HTML, CSS and JavaScript, nothing fetched from
elsewhere) is a client of the JSON API: it lists the models, builds a form from each
model's training schema, predicts through /v1/models/{name}/predict, scores CSV files
and shows model cards. Its three files are open routes (loading the page needs no API
key); every call it makes carries the key the user typed, so the edge treats it like
any other client. Nothing here is on the prediction path.

Routes:
  GET /ui, /ui/style.css, /ui/app.js          the page, read once when the server starts
  GET /v1/models/{name}/versions/{version}/card   a tag's model card (API key)
  GET /v1/limits                               rows and bytes one request may carry (API key)
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from model_server.constants import EXAMPLES_METADATA, SCHEMA_METADATA_KEY
from model_server.core.server import ModelServer
from model_server.json_codec import encode_json
from model_server.models import registry
from model_server.models.registry import LoadedModel
from model_server.transports.edge import PUBLIC_FILE
from model_server.transports.route_table import Answer, Request, Route, RouteTable

WEB_DIR = Path(__file__).resolve().parent / "web"
PAGE_FILES = {
    "/ui": ("index.html", b"text/html; charset=utf-8"),
    "/ui/style.css": ("style.css", b"text/css; charset=utf-8"),
    "/ui/app.js": ("app.js", b"text/javascript; charset=utf-8"),
}
# The page runs only its own script and style, and talks only to this server.
PAGE_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        b"connect-src 'self' blob:; form-action 'none'; frame-ancestors 'none'; base-uri 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"cache-control", b"no-cache"),
    (b"referrer-policy", b"no-referrer"),
]
# Estimators that take missing values themselves, without an imputer in front.
NATIVE_MISSING = ("HistGradientBoostingClassifier", "HistGradientBoostingRegressor")
IMPUTERS = ("SimpleImputer", "IterativeImputer", "KNNImputer")


class WebPage:
    """The route table of /ui: the page's files and the JSON routes it needs."""

    def __init__(self, get_server: Callable[[], ModelServer], web_dir: Path = WEB_DIR) -> None:
        self._get_server = get_server
        # Per loaded tag: its registration time (read from the store once) and the
        # features its pipeline imputes. Keyed by the loaded object, so a tag loaded
        # again is read again.
        self._facts: dict[tuple[str, int], dict[str, Any]] = {}
        # Open (no key to load the page), outside the concurrency gate, and not in the
        # OpenAPI document, which describes the JSON API.
        page = [
            Route("GET", path, "The web page.", _file_handler(web_dir / name, kind), access=PUBLIC_FILE, listed=False)
            for path, (name, kind) in PAGE_FILES.items()
        ]
        self.routes = RouteTable(
            [
                *page,
                Route(
                    "GET",
                    "/v1/models/{name}/versions/{version}/card",
                    "Model card of one version: labels, metrics, data, features, training command, registration time.",
                    self.card,
                ),
                Route("GET", "/v1/limits", "Rows and bytes one request may carry.", self.limits),
            ]
        )

    async def card(self, request: Request) -> Answer:
        server = self._get_server()
        name, version = request.params["name"], request.params["version"]
        target = server.resolve(name, version)
        served = server.describe(name)
        facts = await self._facts_of(target.model)
        return Answer(encode_json(card_body(target.model, served.shadow, served.variants, facts)))

    async def limits(self, request: Request) -> Answer:
        settings = self._get_server().settings
        body = {"max_rows_per_request": settings.max_rows_per_request, "max_body_bytes": settings.max_body_bytes}
        return Answer(encode_json(body))

    async def _facts_of(self, model: LoadedModel) -> dict[str, Any]:
        key = (model.tag, id(model))
        facts = self._facts.get(key)
        if facts is None:
            # A tag saved again by `python -m training refresh` keeps its first registration.
            created = model.metadata.get("first_registered") or await asyncio.to_thread(
                registry.registration_time, model.tag
            )
            # Off the event loop: the first card of a tag served with its export reads the pipeline.
            facts = {"created": created, "accepts_missing": await asyncio.to_thread(accepts_missing, model)}
            self._facts[key] = facts
        return facts


def _file_handler(path: Path, kind: bytes) -> Callable[[Request], Awaitable[Answer]]:
    """A handler answering one of the page's files, read once, from memory."""
    body = path.read_bytes()

    async def serve(request: Request) -> Answer:
        return Answer(body, content_type=kind, headers=list(PAGE_HEADERS))

    return serve


def card_body(model: LoadedModel, shadow: str | None, variants: list[Any], facts: dict[str, Any]) -> dict[str, Any]:
    """A tag's card: what training stored with it, and how it serves now."""
    metadata = {k: v for k, v in model.metadata.items() if k not in (SCHEMA_METADATA_KEY, "metrics")}
    serving = next(
        ({"role": "variant", "weight": v.weight, "runtime": v.runtime} for v in variants if v.tag == model.tag),
        {"role": "shadow" if model.tag == shadow else "pinned only", "weight": 0.0, "runtime": None},
    )
    names = model.schema.names
    examples = [
        {"target": e.get("target"), "values": {n: e.get("values", {}).get(n) for n in names}}
        for e in metadata.pop(EXAMPLES_METADATA, [])
    ]
    return {
        "model": model.name,
        "tag": model.tag,
        "version": model.version,
        "created": facts["created"],
        "labels": model.labels,
        "algorithm": model.labels.get("algorithm"),
        "task": model.schema.task,
        "metrics": model.metrics,
        "schema": model.schema.to_dict(),
        "accepts_missing": facts["accepts_missing"],
        # Real training rows (training/examples.py), every feature named, null where missing.
        "examples": examples,
        "serving": serving,
        "training": metadata,
    }


def accepts_missing(model: LoadedModel) -> list[str]:
    """The features the pipeline fills in itself when missing (an imputer, or an estimator
    that takes NaN), so the page may leave them empty."""
    names = model.schema.names
    return [n for n in names if n in _missing_ok(model.fitted(), names)]


def _missing_ok(step: Any, columns: list[str]) -> set[str]:
    kind = type(step).__name__
    if kind in IMPUTERS or kind in NATIVE_MISSING:
        return set(columns)
    if kind == "Pipeline" and step.steps:
        first = step.steps[0][1]
        if type(first).__name__ == "MissingCategories" and len(step.steps) > 1:
            # It only turns NaN into the marker of missing categories: what follows decides.
            first = step.steps[1][1]
        return _missing_ok(first, columns)
    if kind == "ColumnTransformer":
        found: set[str] = set()
        for _, transformer, selected in step.transformers:
            chosen = [columns[c] if isinstance(c, int) else c for c in _as_list(selected)]
            found |= _missing_ok(transformer, chosen)
        return found
    return set()


def _as_list(selected: Any) -> list[Any]:
    if isinstance(selected, str | int):
        return [selected]
    try:
        return list(selected)
    except TypeError:  # a callable column selector: not worth guessing
        return []
