"""Explanations in process (model_server/models/explain.py): base value plus contributions equal
the model's own output for linear and gradient-boosting pipelines, numeric and
categorical; TreeSHAP equals the exact Shapley values of the paper's path-dependent value
function, computed by enumerating every subset; pipelines that cannot be explained are
refused with the reason."""

from __future__ import annotations

import asyncio
import itertools
import math
import threading
from typing import Any

import numpy as np
import pandas as pd
import pytest
from prometheus_client import CollectorRegistry
from sklearn import datasets
from sklearn.decomposition import PCA
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor, RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from threadpoolctl import threadpool_limits

from model_server.config.settings import ServerSettings
from model_server.core.server import InferenceCall, ModelServer
from model_server.errors import ExplanationsBusy, InvalidInput, NotExplainable
from model_server.models import explain
from model_server.models.registry import LoadedModel
from model_server.models.schema import CLASSIFICATION, REGRESSION, Feature, InputSchema
from model_server.monitoring.metrics import Metrics
from training import pipelines, tables
from training.register import table_schema

TOLERANCE = 1e-6

# One OpenMP thread, as the server's explanation thread has.
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def one_thread() -> Any:
    with threadpool_limits(1):
        yield


def numeric_model(name: str, algorithm: str) -> tuple[LoadedModel, np.ndarray]:
    """A built-in data set's pipeline as training builds it, and some of its rows (with
    missing values)."""
    data = getattr(datasets, f"load_{name}")()
    task = REGRESSION if name == "diabetes" else CLASSIFICATION
    pipeline = pipelines.build(task, algorithm, 0).fit(data.data, data.target)
    features = tuple(
        Feature(n, "float64", float(data.data[:, i].min()), float(data.data[:, i].max()))
        for i, n in enumerate(data.feature_names)
    )
    classes = tuple(str(data.target_names[c]) for c in pipeline.classes_) if task == CLASSIFICATION else ()
    rows = np.array(data.data[::37], dtype=np.float64)
    rows[0, 0] = rows[1, 2] = np.nan
    return LoadedModel(f"{name}:{algorithm}", pipeline, InputSchema(task, features, classes)), rows


def own_output(model: LoadedModel, matrix: np.ndarray) -> np.ndarray:
    """What scikit-learn itself answers, in the explanation's space: the decision function
    of a linear classifier, the raw prediction of gradient boosting, else the prediction."""
    pipeline = model.pipeline
    inputs = model.frame(matrix) if model.schema.frame_input else matrix
    transformed = pipeline[:-1].transform(inputs)
    final = pipeline[-1]
    if isinstance(final, HistGradientBoostingClassifier | HistGradientBoostingRegressor):
        out = final._raw_predict(transformed)
    elif model.schema.is_classifier:
        out = final.decision_function(transformed)
    else:
        out = final.predict(transformed)
    return np.asarray(out, dtype=np.float64).reshape(matrix.shape[0], -1)


def assert_adds_up(model: LoadedModel, matrix: np.ndarray) -> explain.Explanation:
    found = explain.explainer_for(model).explain(matrix)
    assert np.abs(found.outputs - own_output(model, matrix)).max() < TOLERANCE
    total = found.base_value[None, :] + found.contributions.sum(axis=2)
    assert np.abs(total - found.outputs).max() < TOLERANCE
    assert found.contributions.shape == (matrix.shape[0], found.outputs.shape[1], len(model.schema.features))
    return found


@pytest.mark.parametrize(
    ("name", "algorithm", "method", "space", "outputs"),
    [
        ("iris", "logistic_regression", explain.LINEAR, explain.LOGITS, 3),
        ("breast_cancer", "logistic_regression", explain.LINEAR, explain.LOG_ODDS, 1),
        ("diabetes", "ridge", explain.LINEAR, explain.VALUE, 1),
        ("iris", "gradient_boosting", explain.TREE_SHAP, explain.LOGITS, 3),
        ("breast_cancer", "gradient_boosting", explain.TREE_SHAP, explain.LOG_ODDS, 1),
        ("diabetes", "gradient_boosting", explain.TREE_SHAP, explain.VALUE, 1),
    ],
)
def test_numeric_pipelines_add_up_to_the_models_own_output(
    name: str, algorithm: str, method: str, space: str, outputs: int
) -> None:
    model, rows = numeric_model(name, algorithm)
    found = assert_adds_up(model, rows)
    assert (found.method, found.space, found.outputs.shape[1]) == (method, space, outputs)
    if name == "breast_cancer":  # binary: the second class's log-odds
        assert found.classes == (model.schema.classes[1],)
    if method == explain.LINEAR:  # the base is the output at the imputed all-missing row
        assert found.reference == explain.IMPUTED


def test_probabilities_follow_from_the_explained_output() -> None:
    model, rows = numeric_model("iris", "gradient_boosting")
    found = explain.explainer_for(model).explain(rows)
    logits = found.base_value + found.contributions.sum(axis=2)
    softmax = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    assert np.allclose(softmax, model.infer(rows), atol=1e-9)


def test_a_missing_value_contributes_nothing_to_a_linear_model() -> None:
    model, rows = numeric_model("diabetes", "ridge")
    found = explain.explainer_for(model).explain(rows)
    assert found.contributions[0, 0, 0] == 0.0 and found.contributions[1, 0, 2] == 0.0
    assert found.contributions[0, 0, 1] != 0.0


def passengers(rows: int = 300, seed: int = 1) -> tables.Table:
    """A Titanic-like table: two categorical features with gaps, numbers with gaps."""
    rng = np.random.default_rng(seed)
    pclass = rng.choice(["1st", "2nd", "3rd"], rows)
    sex = rng.choice(["female", "male", None], rows, p=[0.45, 0.5, 0.05])
    age = rng.normal(30, 12, rows).round()
    age[rng.random(rows) < 0.15] = np.nan
    fare = rng.gamma(2, 15, rows).round(2)
    score = (sex == "female") * 2 + (pclass == "1st") - np.nan_to_num(age, nan=30) / 30 + rng.normal(0, 0.5, rows)
    frame = pd.DataFrame(
        {"pclass": pclass, "sex": sex, "age": age, "fare": fare, "survived": np.where(score > 0.5, "yes", "no")}
    )
    return tables.from_frame("passengers", frame, "survived", "test")


def table_model(algorithm: str, task: str = CLASSIFICATION) -> tuple[LoadedModel, np.ndarray]:
    table = passengers()
    if task == REGRESSION:
        frame = table.frame.drop(columns=["fare"])
        table = tables.Table(
            table.name, REGRESSION, frame, table.frame["fare"].to_numpy(), table.categorical, "fare", ""
        )
    pipeline = pipelines.build_for_table(table.task, algorithm, 0, table.numeric, table.categorical)
    pipeline.fit(table.frame, table.y)
    schema = table_schema(table, pipeline, table.frame)
    matrix = np.empty((5, len(schema.features)), dtype=object)
    values = {
        "pclass": ["1st", "3rd", "2nd", "3rd", "1st"],
        "sex": ["female", "male", tables.MISSING_CATEGORY, "male", "female"],
        "age": [29.0, np.nan, 4.0, 61.0, 35.0],
        "fare": [80.0, 7.25, 20.0, np.nan, 30.0],
    }
    for i, feature in enumerate(schema.features):
        matrix[:, i] = values[feature.name]
    return LoadedModel(f"passengers:{algorithm}", pipeline, schema), matrix


@pytest.mark.parametrize(
    ("algorithm", "task", "method"),
    [
        ("logistic_regression", CLASSIFICATION, explain.LINEAR),
        ("gradient_boosting", CLASSIFICATION, explain.TREE_SHAP),
        ("ridge", REGRESSION, explain.LINEAR),
        ("gradient_boosting", REGRESSION, explain.TREE_SHAP),
    ],
)
def test_categorical_tables_add_up_with_one_contribution_per_input_feature(
    algorithm: str, task: str, method: str
) -> None:
    model, matrix = table_model(algorithm, task)
    found = assert_adds_up(model, matrix)
    assert found.method == method and found.features == tuple(model.schema.names)
    body = found.body()
    assert list(body["contributions"][0]) == model.schema.names  # one-hot columns summed per feature


def test_linear_one_hot_contribution_is_relative_to_the_most_frequent_category() -> None:
    model, matrix = table_model("logistic_regression")
    found = explain.explainer_for(model).explain(matrix)
    sex = model.schema.names.index("sex")
    columns = model.pipeline.named_steps["columns"]
    imputer = columns.named_transformers_["categorical"].named_steps["impute"]
    most_frequent = imputer.statistics_[list(columns.transformers_[1][2]).index("sex")]
    coef = dict(zip(model.pipeline[:-1].get_feature_names_out(), model.pipeline[-1].coef_[0], strict=True))
    assert most_frequent == "female"
    assert found.contributions[0, 0, sex] == pytest.approx(0.0, abs=1e-12)  # row 0: female, the reference
    male = coef["sex_male"] - coef["sex_female"]
    assert found.contributions[1, 0, sex] == pytest.approx(male, abs=1e-12)  # row 1: male
    assert found.contributions[2, 0, sex] == pytest.approx(0.0, abs=1e-12)  # row 2: missing, imputed as female


# Brute force: the path-dependent value function (the paper's Algorithm 1), and Shapley
# values by enumerating every subset of features.


def expected_value(nodes: Any, route: Any, known: set[int], owners: np.ndarray, index: int = 0) -> float:
    """E[f(x) | x_S] of one tree as Algorithm 1 defines it: follow the row where the split's
    feature is known, else weigh both children by their training counts."""
    node = nodes[index]
    if node["is_leaf"]:
        return float(node["value"])
    left, right = int(node["left"]), int(node["right"])
    if int(owners[node["feature_idx"]]) in known:
        return expected_value(nodes, route, known, owners, left if route(node) else right)
    weighted = expected_value(nodes, route, known, owners, left) * float(nodes[left]["count"])
    weighted += expected_value(nodes, route, known, owners, right) * float(nodes[right]["count"])
    return weighted / float(node["count"])


def brute_force(model: Any, x: np.ndarray, owners: np.ndarray, features: int) -> np.ndarray:
    """Exact Shapley values (outputs, features) of the ensemble's path-dependent game."""
    known_cats, f_idx_map = model._bin_mapper.make_known_categories_bitsets()

    def router(predictor: Any) -> Any:
        def route(node: Any) -> bool:  # True: left, the way scikit-learn's predictor goes
            value = x[int(node["feature_idx"])]
            if np.isnan(value):
                return bool(node["missing_go_to_left"])
            if node["is_categorical"]:
                code = int(value)
                bits = predictor.raw_left_cat_bitsets[node["bitset_idx"]]
                known = known_cats[f_idx_map[node["feature_idx"]]]
                if code >= 0 and bits[code // 32] >> (code % 32) & 1:
                    return True
                if code >= 0 and known[code // 32] >> (code % 32) & 1:
                    return False
                return bool(node["missing_go_to_left"])
            return bool(value <= node["num_threshold"])

        return route

    outputs = model.n_trees_per_iteration_
    phi = np.zeros((outputs, features))
    for iteration in model._predictors:
        for k, predictor in enumerate(iteration):
            route = router(predictor)
            for i in range(features):
                others = [f for f in range(features) if f != i]
                for size in range(features):
                    weight = math.factorial(size) * math.factorial(features - size - 1) / math.factorial(features)
                    for subset in itertools.combinations(others, size):
                        with_i = expected_value(predictor.nodes, route, {*subset, i}, owners)
                        without = expected_value(predictor.nodes, route, set(subset), owners)
                        phi[k, i] += weight * (with_i - without)
    return phi


def small_schema(width: int, classes: tuple[str, ...] = ()) -> InputSchema:
    task = CLASSIFICATION if classes else REGRESSION
    return InputSchema(task, tuple(Feature(f"x{i}", "float64", -10, 10) for i in range(width)), classes)


@pytest.mark.parametrize("outputs", [1, 3])
def test_tree_shap_equals_brute_force_shapley_values(outputs: int) -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 4))
    X[rng.random(X.shape) < 0.1] = np.nan  # missing values take the side training sent them
    if outputs == 1:
        y: Any = np.nan_to_num(X[:, 0]) * 2 + np.nan_to_num(X[:, 1]) ** 2 + rng.normal(0, 0.1, 400)
        model: Any = HistGradientBoostingRegressor(max_iter=3, max_depth=4, min_samples_leaf=5, random_state=0)
        classes: tuple[str, ...] = ()
    else:
        y = np.digitize(np.nan_to_num(X[:, 0]) + np.nan_to_num(X[:, 2]), [-0.5, 0.5])
        model = HistGradientBoostingClassifier(max_iter=3, max_depth=4, min_samples_leaf=5, random_state=0)
        classes = ("a", "b", "c")
    model.fit(X, y)
    trees = [(k, p) for iteration in model._predictors for k, p in enumerate(iteration)]
    paths = explain._leaf_paths(trees, np.arange(4))
    assert len(paths.steps_node) > len(paths.segments[0])  # some paths split twice on one feature
    loaded = LoadedModel("tiny:v1", model, small_schema(4, classes))
    rows = np.vstack([X[:9], [[np.nan, 0.3, np.nan, -1.0]]])
    assert len(rows) >= explain.GROUPED_ROWS  # paths handled per length ...
    found = explain.explainer_for(loaded).explain(rows)
    few = explain.explainer_for(loaded).explain(rows[-2:])  # ... and all padded to one length
    for r, x in enumerate(rows):
        want = brute_force(model, x, np.arange(4), 4)
        assert np.abs(found.contributions[r] - want).max() < 1e-9
    assert np.abs(few.contributions - found.contributions[-2:]).max() < 1e-12
    assert np.abs(found.base_value + found.contributions.sum(axis=2) - model._raw_predict(rows)).max() < 1e-9


def test_tree_shap_with_native_categorical_splits_and_an_unknown_category() -> None:
    rng = np.random.default_rng(3)
    codes = rng.integers(0, 5, 500).astype(float)
    other = rng.normal(size=500)
    y = np.isin(codes, [1, 3]) * 2.0 + other + rng.normal(0, 0.1, 500)
    X = np.column_stack([other, codes])
    model = HistGradientBoostingRegressor(
        max_iter=3, max_depth=3, categorical_features=[False, True], min_samples_leaf=5, random_state=0
    ).fit(X, y)
    assert model._preprocessor is not None  # the trees see the categorical column first
    loaded = LoadedModel("cats:v1", model, small_schema(2))
    rows = np.array([[0.2, 1.0], [-1.0, 4.0], [0.5, 7.0], [np.nan, 2.0], [0.1, np.nan]])  # 7: unseen
    found = explain.explainer_for(loaded).explain(rows)
    assert np.abs(found.base_value + found.contributions.sum(axis=2) - model._raw_predict(rows)).max() < 1e-9
    order = np.array([1, 0])  # the preprocessor puts the categorical column first
    for r, x in enumerate(rows):
        want = brute_force(model, model._preprocessor.transform(x[None, :])[0], order, 2)
        assert np.abs(found.contributions[r] - want).max() < 1e-9


def test_grouped_one_hot_columns_are_one_player_in_tree_shap() -> None:
    """Every split on a one-hot column of `sex` is a split on `sex`: the Shapley values of
    the input features, not sums over columns."""
    model, matrix = table_model("gradient_boosting")
    explainer = explain.explainer_for(model)
    found = explainer.explain(matrix)
    final = model.pipeline[-1]
    owners = explain._compose([step for _, step in model.pipeline.steps[:-1]], len(model.schema.features))
    transformed = model.pipeline[:-1].transform(model.frame(matrix))
    for r in range(2):
        want = brute_force(final, transformed[r], owners, len(model.schema.features))
        assert np.abs(found.contributions[r] - want).max() < 1e-9


def test_the_explainer_is_built_once_per_loaded_tag() -> None:
    model, rows = numeric_model("iris", "logistic_regression")
    assert model.explainer is None
    first = explain.explainer_for(model)
    assert explain.explainer_for(model) is first and model.explainer is first


@pytest.mark.parametrize(
    ("pipeline", "words"),
    [
        (
            Pipeline([("impute", SimpleImputer()), ("pca", PCA(2)), ("model", LogisticRegression())]),
            "its step PCA makes columns that do not each come from one input feature",
        ),
        (
            Pipeline([("impute", SimpleImputer()), ("model", RandomForestClassifier(n_estimators=3))]),
            "its final estimator RandomForestClassifier is neither a linear model nor HistGradientBoosting",
        ),
    ],
)
def test_a_pipeline_that_cannot_be_explained_is_refused_with_the_reason(pipeline: Pipeline, words: str) -> None:
    data = datasets.load_iris()
    pipeline.fit(data.data, data.target)
    model = LoadedModel("odd:v1", pipeline, small_schema(4, ("a", "b", "c")))
    for _ in range(2):  # the refusal is kept, and given again
        with pytest.raises(NotExplainable) as caught:
            explain.explainer_for(model)
        assert caught.value.status == 422
        assert caught.value.message == f"model 'odd:v1' cannot be explained: {words}"
    assert model.explainer == words


def test_the_json_body_names_the_space_and_each_feature() -> None:
    model, rows = numeric_model("breast_cancer", "logistic_regression")
    body = explain.explainer_for(model).explain(rows[:2]).body()
    assert body["method"] == "linear" and body["space"] == "log_odds" and body["class"] == "benign"
    assert set(body) == {"method", "space", "reference", "class", "base_value", "outputs", "contributions"}
    row = body["contributions"][0]
    assert list(row) == model.schema.names
    assert body["base_value"] + sum(row.values()) == pytest.approx(body["outputs"][0], abs=TOLERANCE)
    iris, rows = numeric_model("iris", "gradient_boosting")
    multi = explain.explainer_for(iris).explain(rows[:1]).body()
    assert multi["classes"] == ["setosa", "versicolor", "virginica"]
    for name in multi["classes"]:
        total = multi["base_value"][name] + sum(multi["contributions"][0][name].values())
        assert total == pytest.approx(multi["outputs"][0][name], abs=TOLERANCE)


# The core's explanation path (model_server/core/server.py): its own thread, its own row limit.


def as_json(rows: np.ndarray) -> list[list[float | None]]:
    return [[None if math.isnan(v) else v for v in row] for row in rows.tolist()]


def core_server(model: LoadedModel, **settings: Any) -> ModelServer:
    config = {"models": {"m": {"variants": [{"tag": model.tag}]}}, **settings}
    return ModelServer(ServerSettings.model_validate(config), {model.tag: model}, Metrics(CollectorRegistry()))


class HeldExplainer:
    """An explainer that answers only once released: an explanation still running."""

    def __init__(self, real: explain.Explainer) -> None:
        self.real, self.started, self.release = real, threading.Event(), threading.Event()

    def explain(self, matrix: np.ndarray) -> explain.Explanation:
        self.started.set()
        assert self.release.wait(30)
        return self.real.explain(matrix)


def test_plain_predictions_never_wait_for_an_explanation() -> None:
    model, rows = numeric_model("breast_cancer", "gradient_boosting")
    held = HeldExplainer(explain.explainer_for(model))
    model.explainer = held
    server = core_server(model)

    async def scenario() -> None:
        explaining = asyncio.create_task(server.infer(InferenceCall("m", instances=as_json(rows), explain=True)))
        await asyncio.to_thread(held.started.wait, 30)
        plain = await asyncio.wait_for(server.infer(InferenceCall("m", instances=as_json(rows[:2]))), 10)
        assert plain.explanation is None and not explaining.done()
        held.release.set()
        explained = await explaining
        assert explained.explanation is not None and explained.output.shape == (len(rows), 2)
        assert np.array_equal(explained.output, model.infer(rows))

    try:
        asyncio.run(scenario())
    finally:
        server.close()


def test_the_core_refuses_more_rows_than_max_explained_rows() -> None:
    model, rows = numeric_model("diabetes", "ridge")
    server = core_server(model, max_explained_rows=2)
    try:
        with pytest.raises(InvalidInput) as caught:
            asyncio.run(server.infer(InferenceCall("m", instances=as_json(rows[:3]), explain=True)))
        assert caught.value.message == (
            "invalid input: instances: holds 3 rows; at most 2 can be explained in one request (max_explained_rows)"
        )
        explained = asyncio.run(server.infer(InferenceCall("m", instances=as_json(rows[:2]), explain=True)))
        assert explained.explanation is not None and explained.explanation.contributions.shape == (2, 1, 10)
    finally:
        server.close()


def test_explanations_beyond_max_concurrent_explanations_are_refused_at_once() -> None:
    model, rows = numeric_model("breast_cancer", "gradient_boosting")
    held = HeldExplainer(explain.explainer_for(model))
    model.explainer = held
    server = core_server(model, max_concurrent_explanations=1)

    async def scenario() -> None:
        one_row = InferenceCall("m", instances=as_json(rows[:1]), explain=True)
        running = asyncio.create_task(server.infer(one_row))
        await asyncio.to_thread(held.started.wait, 30)
        with pytest.raises(ExplanationsBusy) as caught:
            await server.infer(one_row)
        assert caught.value.status == 503 and (b"retry-after", b"1") in caught.value.http_headers()
        assert "max_concurrent_explanations" in caught.value.message
        held.release.set()
        assert (await running).explanation is not None
        # The slot is free again.
        assert (await server.infer(one_row)).explanation is not None

    try:
        asyncio.run(scenario())
    finally:
        server.close()


def test_a_binary_linear_model_whose_probabilities_are_not_a_sigmoid_is_explained_in_its_decision_function() -> None:
    """SGD with a modified Huber loss is linear, but its probabilities are not the sigmoid
    of its decision function: the space is named decision_function, not log_odds."""
    from sklearn.linear_model import SGDClassifier
    from sklearn.preprocessing import StandardScaler

    data = datasets.load_breast_cancer()
    features = tuple(
        Feature(n, "float64", float(data.data[:, i].min()), float(data.data[:, i].max()))
        for i, n in enumerate(data.feature_names)
    )
    for estimator, space in (
        (SGDClassifier(loss="modified_huber", random_state=0), explain.DECISION),
        (LogisticRegression(max_iter=5000), explain.LOG_ODDS),
    ):
        steps = [("impute", SimpleImputer()), ("scale", StandardScaler()), ("model", estimator)]
        pipeline = Pipeline(steps).fit(data.data, data.target)
        model = LoadedModel("sgd:v1", pipeline, InputSchema(CLASSIFICATION, features, ("malignant", "benign")))
        explanation = assert_adds_up(model, np.asarray(data.data[:5], dtype=np.float64))
        assert explanation.space == space
