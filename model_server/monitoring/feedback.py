"""Feedback by prediction id: each item checked on its own, never all or nothing.

An item is `{"id": ..., "truth": ...}`. Its result: `accepted` (counted in the current
window), `duplicate` (this id was fed back before, to any worker), `invalid_id` (not a
valid id of this server, or of another model name), `invalid_truth` (not a class of the
tag, or not a finite number for a regressor), `expired` (older than feedback_max_age_s),
or `outside_window` (valid, but predicted under an earlier routing: logged, not counted).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from model_server.json_codec import finite_number
from model_server.monitoring.outcomes import RECORD, OutcomeStore
from model_server.monitoring.prediction_ids import BINARY, REGRESSION, InvalidId, PredictionId, PredictionIds

ACCEPTED, DUPLICATE, INVALID_ID, INVALID_TRUTH, EXPIRED, OUTSIDE_WINDOW = (
    "accepted",
    "duplicate",
    "invalid_id",
    "invalid_truth",
    "expired",
    "outside_window",
)
STATUSES = (ACCEPTED, DUPLICATE, INVALID_ID, INVALID_TRUTH, EXPIRED, OUTSIDE_WINDOW)


@dataclass(frozen=True)
class Judged:
    """One feedback item's result, and (when its id was valid) what the id said and the truth."""

    status: str
    message: str | None = None
    prediction: PredictionId | None = None
    truth: Any = None

    def body(self, index: int) -> dict[str, Any]:
        entry: dict[str, Any] = {"index": index, "status": self.status}
        if self.prediction is not None:
            entry["tag"] = self.prediction.tag
        if self.message:
            entry["message"] = self.message
        return entry


def judge(
    items: list[Any],
    name: str,
    ids: PredictionIds,
    store: OutcomeStore,
    window: int,
    classes_of: Callable[[str], tuple[str, ...] | None],
    max_age_s: float,
) -> list[Judged]:
    """Check every item, count the accepted ones into `store` (one write per tag), and say
    what became of each. `classes_of(tag)` gives a tag's classes (() for a regressor, None
    when the tag is unknown here)."""
    now_ms = time.time() * 1000
    results: list[Judged] = []
    accepted: dict[str, list[tuple[Any, ...]]] = {}
    for item in items:
        if not isinstance(item, dict) or "id" not in item:
            results.append(Judged(INVALID_ID, "each item must be an object with 'id' and 'truth'"))
            continue
        try:
            prediction = ids.verify(item["id"])
        except InvalidId as exc:
            results.append(Judged(INVALID_ID, f"id {exc}"))
            continue
        if prediction.name != name:
            results.append(Judged(INVALID_ID, f"id is a prediction of model '{prediction.name}', not '{name}'"))
            continue
        if now_ms - prediction.time_ms > max_age_s * 1000:
            results.append(Judged(EXPIRED, f"the prediction is older than {max_age_s:g} s (feedback_max_age_s)"))
            continue
        classes = classes_of(prediction.tag)
        if classes is None:
            results.append(Judged(INVALID_ID, f"tag '{prediction.tag}' is not in this server's model store"))
            continue
        if "truth" not in item:
            results.append(Judged(INVALID_TRUTH, "'truth' is required", prediction))
            continue
        truth, problem = _truth(item["truth"], prediction, classes)
        if problem is not None:
            results.append(Judged(INVALID_TRUTH, problem, prediction))
            continue
        if not store.first_time(prediction.digest, prediction.time_ms):
            results.append(Judged(DUPLICATE, "this id was fed back before; it counts once", prediction, truth))
            continue
        if prediction.window != window:
            results.append(
                Judged(OUTSIDE_WINDOW, "predicted under an earlier routing: logged, not counted", prediction, truth)
            )
            continue
        accepted.setdefault(prediction.tag, []).append(_record(prediction, truth))
        results.append(Judged(ACCEPTED, None, prediction, truth))
    for tag, rows in accepted.items():
        store.add(tag, np.array(rows, dtype=RECORD))
    return results


def _truth(value: Any, prediction: PredictionId, classes: tuple[str, ...]) -> tuple[Any, str | None]:
    """The truth as a class index (classifiers) or a number (regressors), or what is wrong."""
    if prediction.kind == REGRESSION:
        number = finite_number(value)
        if number is None:
            return None, "truth must be a finite number (this model is a regressor)"
        return number, None
    label = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(label, str) or label not in classes:
        shown = ", ".join(classes[:20])
        return None, f"truth must be one of the classes of '{prediction.tag}': {shown}"
    return classes.index(label), None


def _record(prediction: PredictionId, truth: Any) -> tuple[Any, ...]:
    nan = math.nan
    if prediction.kind == REGRESSION:
        return (prediction.unit, prediction.keyed, -1, -1, nan, nan, prediction.value, truth, prediction.time_ms)
    positive = prediction.probabilities[1] if prediction.kind == BINARY else nan
    p_true = prediction.probabilities[truth]
    predicted = prediction.predicted
    return (prediction.unit, prediction.keyed, predicted, truth, p_true, positive, nan, nan, prediction.time_ms)
