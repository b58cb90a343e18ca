"""The routing changes the admin API and CLI share, as pure functions (model_server/rollout/changes.py)."""

from __future__ import annotations

import pytest

from model_server.config.routing import Routing
from model_server.config.settings import ServedModel
from model_server.errors import InvalidInput, ModelNotFound
from model_server.rollout import changes

INITIAL = Routing.model_validate(
    {
        "revision": 0,
        "models": {"iris": {"variants": [{"tag": "iris:v1", "weight": 90}, {"tag": "iris:v2", "weight": 10}]}},
    }
)


def test_a_change_raises_the_revision_and_keeps_the_routing_before_for_rollback() -> None:
    canary = changes.served_model({"variants": [{"tag": "iris:v1", "weight": 50}, {"tag": "iris:v2", "weight": 50}]})
    after = changes.changed(INITIAL, "iris", canary, who="key-1")
    assert after.revision == 1 and after.models["iris"] == canary
    assert after.changes["iris"].previous == INITIAL.models["iris"] and after.changes["iris"].by == "key-1"
    assert INITIAL.revision == 0 and INITIAL.models["iris"] != canary  # the routing itself is not changed


def test_promote_puts_all_traffic_on_one_tag_and_drops_its_shadow() -> None:
    shadowed = changes.changed(
        INITIAL, "iris", changes.served_model({"variants": [{"tag": "iris:v1"}], "shadow": "iris:v2"}), "k"
    )
    promoted = changes.promoted(shadowed, "iris", "iris:v2")
    assert [(v.tag, v.weight) for v in promoted.variants] == [("iris:v2", 100)] and promoted.shadow is None


def test_rolling_back_twice_returns_to_the_change() -> None:
    first = changes.changed(INITIAL, "iris", changes.promoted(INITIAL, "iris", "iris:v2"), "k")
    back = changes.changed(first, "iris", changes.rolled_back(first, "iris"), "k")
    assert back.models["iris"] == INITIAL.models["iris"] and back.revision == 2
    again = changes.changed(back, "iris", changes.rolled_back(back, "iris"), "k")
    assert again.models["iris"] == first.models["iris"] and again.revision == 3


def test_nothing_to_roll_back_and_unknown_names_are_refused() -> None:
    with pytest.raises(InvalidInput) as caught:
        changes.rolled_back(INITIAL, "iris")
    assert caught.value.detail[0]["type"] == "nothing_to_roll_back"
    with pytest.raises(ModelNotFound):
        changes.rolled_back(INITIAL, "wine")
    with pytest.raises(ModelNotFound):
        changes.removed(INITIAL, "wine")


def test_remove_then_reset_serves_the_configuration_again_at_a_new_revision() -> None:
    gone = changes.changed(INITIAL, "iris", changes.removed(INITIAL, "iris"), "k")
    assert "iris" not in gone.models and gone.changes["iris"].previous == INITIAL.models["iris"]
    reset = changes.reset(gone, INITIAL)
    assert reset.models == INITIAL.models and reset.revision == 2 and reset.changes == {}


def test_a_malformed_routing_names_the_field() -> None:
    with pytest.raises(InvalidInput) as caught:
        changes.served_model({"variants": [{"tag": "iris:v1", "weight": "heavy"}]})
    assert caught.value.detail[0]["loc"][:3] == ["variants", 0, "weight"]
    assert isinstance(changes.served_model({"variants": [{"tag": "iris:v1"}]}), ServedModel)
