"""Live quality and verdicts against reference computations written here (not the
module's): exact accuracy, Wilson and t intervals within 1e-9; a clearly better tag is
found with the right sign; identical tags are called different in at most 5 % of 1,000
seeded runs, with one row per unit and with correlated rows per caller key."""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

from model_server.monitoring.outcomes import RECORD
from model_server.monitoring.quality import Arm, compare, live_quality, not_worse

Z = 1.959963984540054
RUNS = 1000


def classified(rng: np.random.Generator, n: int, accuracy: float, units: np.ndarray | None = None) -> np.ndarray:
    """Binary outcomes: truth at random, right with probability `accuracy` (per row, or per unit's own rate)."""
    records = np.zeros(n, RECORD)
    records["truth"] = rng.integers(0, 2, n)
    right = rng.random(n) < accuracy
    records["predicted"] = np.where(right, records["truth"], 1 - records["truth"])
    confidence = rng.uniform(0.5, 1.0, n)
    records["p_positive"] = np.where(records["predicted"] == 1, confidence, 1 - confidence)
    records["p_true"] = np.where(records["truth"] == 1, records["p_positive"], 1 - records["p_positive"])
    records["unit"] = np.arange(n) if units is None else units
    return records


def test_live_quality_of_a_classifier_matches_the_reference() -> None:
    records = classified(np.random.default_rng(3), 500, 0.8)
    found = live_quality(records, ("died", "survived"))
    right = records["predicted"] == records["truth"]
    k, n = int(right.sum()), len(records)
    assert found["outcomes"] == n and found["accuracy"]["value"] == k / n
    p = k / n
    centre = (p + Z * Z / (2 * n)) / (1 + Z * Z / n)
    half = Z / (1 + Z * Z / n) * math.sqrt(p * (1 - p) / n + Z * Z / (4 * n * n))
    assert np.allclose(found["accuracy"]["interval"], [centre - half, centre + half], atol=1e-9, rtol=0)
    losses = [-math.log(q) for q in records["p_true"]]
    mean = sum(losses) / n
    low, high = stats.t.interval(0.95, n - 1, loc=mean, scale=stats.sem(losses))
    assert abs(found["log_loss"]["value"] - mean) < 1e-9
    assert np.allclose(found["log_loss"]["interval"], [low, high], atol=1e-9, rtol=0)
    briers = [(q - t) ** 2 for q, t in zip(records["p_positive"], records["truth"], strict=True)]
    assert abs(found["brier"]["value"] - sum(briers) / n) < 1e-9
    survived = records["truth"] == 1
    assert found["recall"]["survived"]["value"] == int((right & survived).sum()) / int(survived.sum())


def test_live_quality_of_a_regressor_matches_the_reference() -> None:
    rng = np.random.default_rng(4)
    records = np.zeros(300, RECORD)
    records["truth_value"] = rng.normal(150, 40, 300)
    records["prediction"] = records["truth_value"] + rng.normal(0, 20, 300)
    found = live_quality(records, ())
    errors = [p - t for p, t in zip(records["prediction"], records["truth_value"], strict=True)]
    mae = sum(abs(e) for e in errors) / 300
    mse = sum(e * e for e in errors) / 300
    assert abs(found["mae"]["value"] - mae) < 1e-9 and abs(found["rmse"]["value"] - math.sqrt(mse)) < 1e-9
    low, high = stats.t.interval(0.95, 299, loc=mse, scale=stats.sem([e * e for e in errors]))
    assert np.allclose(found["rmse"]["interval"], [math.sqrt(low), math.sqrt(high)], atol=1e-9, rtol=0)


def test_a_clearly_better_tag_is_significant_with_the_right_sign() -> None:
    rng = np.random.default_rng(5)
    worse, better = classified(rng, 600, 0.70), classified(rng, 600, 0.85)
    verdict = compare(Arm.of("t:v1", worse, "accuracy"), Arm.of("t:v2", better, "accuracy"), "accuracy")
    assert verdict["significant"] and verdict["difference"] > 0 and verdict["verdict"] == "t:v2 is better"
    assert verdict["test"] == "two-proportion z" and verdict["interval"][0] > 0
    # The reference: the difference and its unpooled interval, the pooled z test's p-value.
    pa, pb = worse["predicted"] == worse["truth"], better["predicted"] == better["truth"]
    d = pb.mean() - pa.mean()
    se = math.sqrt(pa.mean() * (1 - pa.mean()) / 600 + pb.mean() * (1 - pb.mean()) / 600)
    assert abs(verdict["difference"] - d) < 1e-12
    assert np.allclose(verdict["interval"], [d - Z * se, d + Z * se], atol=1e-9, rtol=0)
    pooled = (pa.sum() + pb.sum()) / 1200
    z = d / math.sqrt(pooled * (1 - pooled) * (2 / 600))
    assert abs(verdict["p_value"] - 2 * stats.norm.sf(abs(z))) < 1e-9
    # Log loss by Welch's t: scipy's own test agrees.
    loss = compare(Arm.of("t:v1", worse, "log_loss"), Arm.of("t:v2", better, "log_loss"), "log_loss")
    reference = stats.ttest_ind(-np.log(better["p_true"]), -np.log(worse["p_true"]), equal_var=False)
    assert loss["test"] == "Welch t" and abs(loss["p_value"] - reference.pvalue) < 1e-9
    assert not_worse(verdict, 0.01)[0] == "not_worse"
    flipped = compare(Arm.of("t:v2", better, "accuracy"), Arm.of("t:v1", worse, "accuracy"), "accuracy")
    found, why = not_worse(flipped, 0.01)
    assert found == "worse" and why.startswith("worse by more than 0.01: accuracy")


def test_identical_tags_are_not_significant_in_at_least_95_percent_of_runs() -> None:
    significant = {"accuracy": 0, "log_loss": 0, "clustered": 0}
    for seed in range(RUNS):
        rng = np.random.default_rng(seed)
        a, b = classified(rng, 400, 0.8), classified(rng, 400, 0.8)
        for metric in ("accuracy", "log_loss"):
            significant[metric] += compare(Arm.of("a", a, metric), Arm.of("b", b, metric), metric)["significant"]
        # 50 callers per tag, 8 rows each, each caller with an accuracy of its own: rows of
        # one caller are correlated, and the unit is the caller.
        arms = []
        for _ in range(2):
            rates = np.repeat(rng.beta(4, 1, 50), 8)
            records = classified(rng, 400, 0.0, units=np.repeat(np.arange(50), 8))
            right = rng.random(400) < rates
            records["predicted"] = np.where(right, records["truth"], 1 - records["truth"])
            arms.append(records)
        verdict = compare(Arm.of("a", arms[0], "accuracy"), Arm.of("b", arms[1], "accuracy"), "accuracy")
        assert verdict["test"].startswith("cluster-robust")
        significant["clustered"] += verdict["significant"]
    print(f"significant in {significant} of {RUNS} seeded runs")
    assert all(count <= 0.05 * RUNS for count in significant.values()), significant


def test_too_few_units_say_how_many_are_needed() -> None:
    rng = np.random.default_rng(6)
    verdict = compare(
        Arm.of("a", classified(rng, 10, 0.8), "accuracy"), Arm.of("b", classified(rng, 12, 0.8), "accuracy"), "accuracy"
    )
    assert verdict["verdict"] == "not enough outcomes yet" and verdict["interval"] is None
    assert verdict["message"].startswith("not enough outcomes yet: n = 10 and 12 units")
    # About (1.96 + 0.84)^2 * (0.16 + 0.16) / 0.05^2, from the variance seen so far.
    assert 300 < verdict["units_needed_per_tag"] < 2000
    found, why = not_worse(verdict, 0.02)
    assert found == "undetermined" and why.startswith("undetermined: not enough outcomes yet")
