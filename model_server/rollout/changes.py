"""The changes the admin API and the admin CLI make to a routing, as pure functions of a
`Routing`, so that a running server (model_server/rollout/operations.py) and a routing file edited
without one (model_server/admin.py) change it in exactly the same way."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from model_server.config.routing import Change, Routing, now
from model_server.config.settings import ServedModel, check_model_name, check_tag
from model_server.errors import InvalidInput, ModelNotFound, problem
from model_server.json_codec import finite_number


def model_name(name: str, where: list[Any] | None = None) -> str:
    """`name` when it may be served (settings.MODEL_NAME_RULE), else InvalidInput naming
    `where` (the path parameter `name` of the admin routes by default)."""
    try:
        return check_model_name(name)
    except ValueError as exc:
        raise InvalidInput.at(where or ["name"], str(exc), "value_error") from None


def tag_field(body: Any) -> str:
    """The `tag` of a promote body: a stored tag with an explicit version, else InvalidInput."""
    tag = body.get("tag") if isinstance(body, dict) else None
    if not isinstance(tag, str):
        raise InvalidInput.at(["tag"], "must be a string naming a stored tag, like 'iris:v3'", "type")
    return _stored_tag(tag, ["tag"])


def margin_field(body: Any) -> float | None:
    """The `if_not_worse` margin of a promote body: a finite number from 0, or None when absent."""
    margin = body.get("if_not_worse") if isinstance(body, dict) else None
    if margin is None:
        return None
    number = finite_number(margin)
    if number is None or number < 0:
        raise InvalidInput.at(
            ["if_not_worse"], "must be a finite number from 0: how much worse the candidate may be", "value_error"
        )
    return number


def served_model(body: Any) -> ServedModel:
    """A name's routing (`{"variants": [...], "shadow": ...}`) validated, or InvalidInput naming the field."""
    try:
        return ServedModel.model_validate(body)
    except ValidationError as exc:
        # "Value error, " is pydantic's prefix for the rules of settings.py: the rule alone reads better.
        problems = [problem(list(e["loc"]), e["msg"].removeprefix("Value error, "), e["type"]) for e in exc.errors()]
        raise InvalidInput.from_problems(problems) from None


def changed(routing: Routing, name: str, served: ServedModel | None, who: str) -> Routing:
    """`routing` at the next revision with `name` served by `served` (None: not served), and
    the name's routing before kept in `changes[name].previous` for rollback."""
    model_name(name)
    revision = routing.revision + 1
    models = dict(routing.models)
    if served is None:
        models.pop(name, None)
    else:
        models[name] = served
    change = Change(at=now(), by=who, revision=revision, previous=routing.models.get(name))
    return routing.model_copy(
        update={"revision": revision, "models": models, "changes": {**routing.changes, name: change}}
    )


def promoted(routing: Routing, name: str, tag: str) -> ServedModel:
    """`name` with all its traffic on `tag` (a shadow on that tag is dropped)."""
    _stored_tag(tag, ["tag"])
    served = _served(routing, name)
    shadow = None if served.shadow == tag else served.shadow
    body = served.model_dump() | {"variants": [{"tag": tag, "weight": 100}], "shadow": shadow}
    return served_model(body)


def rolled_back(routing: Routing, name: str) -> ServedModel:
    """`name`'s routing before its last change (rolling back twice returns)."""
    change = routing.changes.get(name)
    if change is None and name not in routing.models:
        raise ModelNotFound(name)
    if change is None or change.previous is None:
        raise InvalidInput.at(["model"], f"'{name}' has no earlier routing to roll back to", "nothing_to_roll_back")
    return change.previous


def removed(routing: Routing, name: str) -> ServedModel | None:
    """What serves `name` once removed: nothing (ModelNotFound when nothing does already)."""
    _served(routing, name)
    return None


def reset(routing: Routing, initial: Routing) -> Routing:
    """`initial` (configuration.yaml's routing) at the revision after `routing`'s."""
    return initial.model_copy(update={"revision": routing.revision + 1, "changes": {}})


def _served(routing: Routing, name: str) -> ServedModel:
    served = routing.models.get(name)
    if served is None:
        raise ModelNotFound(name)
    return served


def _stored_tag(tag: str, where: list[Any]) -> str:
    try:
        return check_tag(tag)
    except ValueError as exc:
        raise InvalidInput.at(where, str(exc), "value_error") from None
