"""Live quality from outcomes, with 95 % confidence intervals, and A/B verdicts.

Quality of one tag (`live_quality`): accuracy and each class's recall with Wilson score
intervals; log loss, Brier score (binary), mean absolute error with Student t intervals
of the mean; RMSE with the square roots of the t interval of the mean squared error.
These intervals take rows as independent.

A verdict compares two tags on one metric (`compare`) per unit of assignment: the unit
is the caller key when requests carry one (a caller stays on one tag), else the request
(the A/B split draws a tag per request). When every unit holds one row, accuracy is
compared with the two-proportion z test and the other metrics with Welch's t test; when
units hold several rows (rows of one caller or one request are not independent), each
tag's mean is a ratio over units with a cluster-robust variance, and the difference is
tested with Welch's t on the clusters (Welch-Satterthwaite degrees of freedom).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

from model_server.monitoring.outcomes import RECORD

LEVEL = 0.95
ALPHA = 1 - LEVEL
POWER = 0.80
# The normal quantiles come from the standard library; SciPy's Student t is imported where
# it is used, so that a process that never computes a verdict never loads scipy.stats.
Z = NormalDist().inv_cdf(1 - ALPHA / 2)
Z_POWER = NormalDist().inv_cdf(POWER)
EPSILON = 1e-15  # probabilities are clipped to [EPSILON, 1] for the log loss
MIN_UNITS = 30  # per tag, before a verdict is given
# The difference a verdict's power statement is about, unless a margin is given:
# absolute for accuracy and the probability scores, relative to the pooled mean for errors.
DETECTABLE = {"accuracy": 0.05, "log_loss": 0.05, "brier": 0.02}
DETECTABLE_RELATIVE = 0.10
# Which way is better, per metric.
HIGHER_IS_BETTER = {"accuracy": True, "log_loss": False, "brier": False, "mae": False, "squared_error": False}


def wilson(successes: int, n: int) -> list[float] | None:
    """The Wilson score interval of a proportion."""
    if n == 0:
        return None
    p = successes / n
    denominator = 1 + Z * Z / n
    centre = (p + Z * Z / (2 * n)) / denominator
    half = Z / denominator * math.sqrt(p * (1 - p) / n + Z * Z / (4 * n * n))
    return [centre - half, centre + half]


def mean_interval(values: np.ndarray) -> tuple[float | None, list[float] | None]:
    """The mean and its Student t interval (None with fewer than two values)."""
    n = len(values)
    if n == 0:
        return None, None
    mean = float(np.mean(values))
    if n < 2:
        return mean, None
    from scipy import stats

    half = float(stats.t.ppf(1 - ALPHA / 2, n - 1)) * float(np.std(values, ddof=1)) / math.sqrt(n)
    return mean, [mean - half, mean + half]


def row_values(records: np.ndarray, metric: str) -> np.ndarray:
    """Each outcome's contribution to `metric` (its mean over rows is the metric)."""
    if metric == "accuracy":
        return (records["predicted"] == records["truth"]).astype(np.float64)
    if metric == "log_loss":
        return -np.log(np.clip(records["p_true"], EPSILON, 1.0))
    if metric == "brier":
        return (records["p_positive"] - (records["truth"] == 1)) ** 2
    error = records["prediction"] - records["truth_value"]
    return np.abs(error) if metric == "mae" else error**2


def metrics_of(classes: tuple[str, ...]) -> list[str]:
    """The metrics verdicts compare for a model with these classes (none: a regressor)."""
    if not classes:
        return ["mae", "squared_error"]
    return ["accuracy", "log_loss"] + (["brier"] if len(classes) == 2 else [])


def live_quality(records: np.ndarray, classes: tuple[str, ...]) -> dict[str, Any]:
    """One tag's live quality over its outcomes (classes empty: a regressor)."""
    n = len(records)
    answer: dict[str, Any] = {"outcomes": n, "level": LEVEL}
    if classes:
        correct = records["predicted"] == records["truth"]
        hits = int(correct.sum())
        answer["accuracy"] = _entry(hits / n if n else None, wilson(hits, n))
        answer["log_loss"] = _entry(*mean_interval(row_values(records, "log_loss")))
        if len(classes) == 2:
            answer["brier"] = _entry(*mean_interval(row_values(records, "brier")))
        recall = {}
        for index, label in enumerate(classes):
            support = records["truth"] == index
            count, found = int(support.sum()), int((correct & support).sum())
            recall[label] = {**_entry(found / count if count else None, wilson(found, count)), "support": count}
        answer["recall"] = recall
    else:
        answer["mae"] = _entry(*mean_interval(row_values(records, "mae")))
        mse, interval = mean_interval(row_values(records, "squared_error"))
        answer["rmse"] = _entry(
            None if mse is None else math.sqrt(mse),
            None if interval is None else [math.sqrt(max(0.0, interval[0])), math.sqrt(max(0.0, interval[1]))],
        )
    return answer


def _entry(value: float | None, interval: list[float] | None) -> dict[str, Any]:
    return {"value": value, "interval": interval}


@dataclass(frozen=True)
class Arm:
    """One tag's outcomes as a verdict reads them: per-row values and their units."""

    tag: str
    values: np.ndarray
    units: np.ndarray

    @classmethod
    def of(cls, tag: str, records: np.ndarray, metric: str) -> Arm:
        return cls(tag, row_values(records, metric), records["unit"])

    def clusters(self) -> tuple[np.ndarray, np.ndarray]:
        """Each unit's sum of values and its row count."""
        _, inverse = np.unique(self.units, return_inverse=True)
        return np.bincount(inverse, weights=self.values), np.bincount(inverse).astype(np.float64)


def compare(a: Arm, b: Arm, metric: str, margin: float | None = None) -> dict[str, Any]:
    """The verdict of `b` against `a` on `metric`: b - a with its 95 % interval and p-value,
    or why there is none yet and about how many units it needs."""
    sums_a, rows_a = a.clusters()
    sums_b, rows_b = b.clusters()
    units = [len(rows_a), len(rows_b)]
    higher = HIGHER_IS_BETTER[metric]
    answer: dict[str, Any] = {
        "a": a.tag,
        "b": b.tag,
        "metric": metric,
        "better": "higher" if higher else "lower",
        "rows": [len(a.values), len(b.values)],
        "units": units,
        "a_value": float(a.values.mean()) if len(a.values) else None,
        "b_value": float(b.values.mean()) if len(b.values) else None,
    }
    clustered = bool(len(rows_a) and rows_a.max() > 1) or bool(len(rows_b) and rows_b.max() > 1)
    detectable = margin if margin else _detectable(metric, a, b)
    needed = _needed_units(metric, a, b, detectable)
    answer.update(detectable_difference=detectable, units_needed_per_tag=needed)
    if min(units) < MIN_UNITS:
        answer.update(
            difference=None,
            interval=None,
            p_value=None,
            test=None,
            significant=False,
            verdict="not enough outcomes yet",
            message=f"not enough outcomes yet: n = {units[0]} and {units[1]} units; about "
            f"{needed if needed is not None else '?'} per tag needed to see a {detectable:.4g} difference in "
            f"{metric} at {POWER:.0%} power",
        )
        return answer
    if clustered:
        difference, se, df = _cluster_robust(sums_a, rows_a, sums_b, rows_b)
        test = "cluster-robust Welch t (units: caller keys or requests)"
    elif metric == "accuracy":
        difference, se, df = _two_proportions(a.values, b.values)
        test = "two-proportion z"
    else:
        difference, se, df = _welch(a.values, b.values)
        test = "Welch t"
    if se > 0:
        from scipy import stats

        statistic = difference / se
        if metric == "accuracy" and not clustered:
            pooled = _pooled_se(a.values, b.values)
            statistic = difference / pooled if pooled > 0 else 0.0
        critical = float(stats.t.ppf(1 - ALPHA / 2, df)) if math.isfinite(df) else Z
        p_value = float(2 * (stats.t.sf(abs(statistic), df) if math.isfinite(df) else stats.norm.sf(abs(statistic))))
        interval = [difference - critical * se, difference + critical * se]
    else:
        p_value, interval = (1.0 if difference == 0 else 0.0), [difference, difference]
    significant = p_value < ALPHA
    better_tag = (b.tag if (difference > 0) == higher else a.tag) if significant else None
    answer.update(
        difference=difference,
        interval=interval,
        p_value=p_value,
        test=test,
        significant=significant,
        verdict=f"{better_tag} is better" if better_tag else "no significant difference",
    )
    answer["message"] = (
        f"{metric}: {b.tag} - {a.tag} = {difference:+.4g} (95 % interval {interval[0]:+.4g} to {interval[1]:+.4g}, "
        f"p = {p_value:.3g}, {test}; {units[0]} and {units[1]} units)"
    )
    return answer


def not_worse(verdict: dict[str, Any], margin: float) -> tuple[str, str]:
    """Whether `b` (the candidate) is, with 95 % confidence, not worse than `a` by more
    than `margin` (the interval's bad end within the margin): "not_worse", "worse" (the
    whole interval beyond the margin) or "undetermined"; and a sentence with the figures."""
    interval = verdict.get("interval")
    if interval is None:
        return "undetermined", f"undetermined: {verdict['message']}"
    # The difference turned so that positive is better for the candidate.
    low, high = (interval[0], interval[1]) if verdict["better"] == "higher" else (-interval[1], -interval[0])
    if low > -margin:
        return "not_worse", f"not worse by more than {margin:g}: {verdict['message']}"
    if high < -margin:
        return "worse", f"worse by more than {margin:g}: {verdict['message']}"
    return "undetermined", f"undetermined at a margin of {margin:g}: {verdict['message']}"


def _two_proportions(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """Difference of proportions and its unpooled standard error (normal: infinite df)."""
    pa, pb = float(a.mean()), float(b.mean())
    se = math.sqrt(pa * (1 - pa) / len(a) + pb * (1 - pb) / len(b))
    return pb - pa, se, math.inf


def _pooled_se(a: np.ndarray, b: np.ndarray) -> float:
    """The standard error under the hypothesis of one proportion (the z test's)."""
    p = float((a.sum() + b.sum()) / (len(a) + len(b)))
    return math.sqrt(p * (1 - p) * (1 / len(a) + 1 / len(b)))


def _welch(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    va, vb = float(np.var(a, ddof=1)) / len(a), float(np.var(b, ddof=1)) / len(b)
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1)) if va + vb > 0 else math.inf
    return float(b.mean() - a.mean()), se, df


def _cluster_variance(sums: np.ndarray, rows: np.ndarray) -> tuple[float, float]:
    """A ratio mean over clusters and its cluster-robust variance (with G / (G - 1))."""
    g = len(rows)
    mean = float(sums.sum() / rows.sum())
    variance = g / (g - 1) * float(((sums - mean * rows) ** 2).sum()) / float(rows.sum()) ** 2
    return mean, variance


def _cluster_robust(
    sums_a: np.ndarray, rows_a: np.ndarray, sums_b: np.ndarray, rows_b: np.ndarray
) -> tuple[float, float, float]:
    mean_a, va = _cluster_variance(sums_a, rows_a)
    mean_b, vb = _cluster_variance(sums_b, rows_b)
    ga, gb = len(rows_a), len(rows_b)
    df = (va + vb) ** 2 / (va**2 / (ga - 1) + vb**2 / (gb - 1)) if va + vb > 0 else math.inf
    return mean_b - mean_a, math.sqrt(va + vb), df


def _detectable(metric: str, a: Arm, b: Arm) -> float:
    if metric in DETECTABLE:
        return DETECTABLE[metric]
    pooled = np.concatenate([a.values, b.values])
    return DETECTABLE_RELATIVE * float(pooled.mean()) if len(pooled) else math.nan


def _needed_units(metric: str, a: Arm, b: Arm, difference: float) -> int | None:
    """Units per tag for a two-sided 5 % test to see `difference` with 80 % power, from
    the variance per unit seen so far (a proportion of 0.5 for accuracy before any)."""
    variances = []
    for arm in (a, b):
        sums, rows = arm.clusters()
        if len(rows) >= 2:
            _, variance = _cluster_variance(sums, rows)
            variances.append(variance * len(rows))
    if len(variances) < 2:
        if metric != "accuracy":
            return None
        variances = [0.25, 0.25]
    if not difference or not math.isfinite(difference) or sum(variances) == 0:
        return None
    return math.ceil((Z + Z_POWER) ** 2 * sum(variances) / difference**2)


def empty_records() -> np.ndarray:
    return np.zeros(0, RECORD)
