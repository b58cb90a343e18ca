"""Per-prediction explanations: each input feature's contribution to one answer.

Two exact methods, both in the model's output space before its link function (the
log-odds of a binary classifier, the logits of a multi-class one, the value of a
regressor), so that for every row `base_value + sum(contributions) == output`:

- linear: for a linear final estimator (LogisticRegression, Ridge, ...), the
  contribution of a transformed column j is coef_j * (z_j - r_j), where z is the row
  after the pipeline's transforms and r the reference row: an input with every feature
  missing, as the pipeline's imputers fill it in (the training median of each numeric
  feature, the most frequent category of each categorical one). The base value is the
  model's output at r. A pipeline without imputers takes r = 0 in the transformed space
  (the base value is then the intercept). Columns made from one input feature (the
  one-hot columns of a category) are summed into that feature.
- tree_shap: for HistGradientBoosting, exact path-dependent TreeSHAP (Lundberg, Erion
  and Lee, 2018, "Consistent individualized feature attribution for tree ensembles",
  Algorithm 2) with the training sample counts of the nodes as cover. The players are the
  input features: every split on a column made from feature i is a split on i. The base
  value is the cover-weighted mean output over the training sample. Written from the
  paper, vectorised over rows and over every root-to-leaf path of the ensemble.

The work that depends only on the model (the column-to-feature map, the paths of every
tree) is done once per loaded tag, on its first explanation (`explainer_for`).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from model_server.errors import NotExplainable
from model_server.models.schema import InputSchema

LINEAR = "linear"
TREE_SHAP = "tree_shap"
# Output spaces.
LOG_ODDS = "log_odds"  # binary classifiers: log(p / (1 - p)) of the second class
LOGITS = "logits"  # multi-class: the probabilities are the softmax of these
DECISION = "decision_function"  # linear classifiers whose probabilities are not its sigmoid or softmax
VALUE = "value"  # regressors: the predicted value
LOG_VALUE = "log_value"  # regressors with a log link (Poisson, gamma): the log of the prediction
# References of the base value.
IMPUTED = "imputed_missing"
ZERO = "transformed_zero"
COVER = "training_cover"
# Rows explained at once by TreeSHAP: bounds its memory (rows x paths x depth floats).
TREE_CHUNK_ELEMENTS = 500_000
# From this many rows on, TreeSHAP handles the paths of each length apart (less padding).
GROUPED_ROWS = 8
# A linear model's own output and ours must agree this closely at build time.
LINEAR_CHECK = 1e-8


@dataclass(frozen=True)
class Explanation:
    """Contributions of each feature to `rows` answers, in the model's output space.

    `outputs` has one column per explained output: the second class's log-odds for a
    binary classifier, each class's logit for a multi-class one, the value of a regressor.
    """

    method: str
    space: str
    reference: str
    features: tuple[str, ...]
    classes: tuple[str, ...]  # the class of each output column; () for a regressor
    base_value: np.ndarray  # (outputs,)
    outputs: np.ndarray  # (rows, outputs): the model's own output in `space`
    contributions: np.ndarray  # (rows, outputs, features)

    def body(self) -> dict[str, Any]:
        """The JSON form: per row, {feature: contribution}; per class when there are several."""
        body: dict[str, Any] = {"method": self.method, "space": self.space, "reference": self.reference}
        names = self.features
        if len(self.classes) > 1:
            body["classes"] = list(self.classes)
            body["base_value"] = dict(zip(self.classes, self.base_value.tolist(), strict=True))
            body["outputs"] = [dict(zip(self.classes, row, strict=True)) for row in self.outputs.tolist()]
            body["contributions"] = [
                {c: dict(zip(names, values, strict=True)) for c, values in zip(self.classes, row, strict=True)}
                for row in self.contributions.tolist()
            ]
            return body
        if self.classes:
            body["class"] = self.classes[0]
        body["base_value"] = float(self.base_value[0])
        body["outputs"] = self.outputs[:, 0].tolist()
        body["contributions"] = [dict(zip(names, row[0], strict=True)) for row in self.contributions.tolist()]
        return body


class Explainer:
    """Explains rows of one loaded tag: its transforms, the feature of each transformed
    column, and the method for its final estimator."""

    def __init__(
        self,
        to_input: Callable[[np.ndarray], Any],
        transform: Callable[[Any], Any],
        method: _Method,
        schema: InputSchema,
    ) -> None:
        self._to_input = to_input
        self._transform = transform
        self._method = method
        self._schema = schema

    def explain(self, matrix: np.ndarray) -> Explanation:
        """The explanation of every row of a validated matrix (the core's rows)."""
        transformed = self._transform(self._to_input(matrix))
        outputs, base, contributions = self._method.explain(transformed)
        return Explanation(
            method=self._method.name,
            space=self._method.space,
            reference=self._method.reference,
            features=tuple(self._schema.names),
            classes=self._method.classes,
            base_value=base,
            outputs=outputs,
            contributions=contributions,
        )


def explainer_for(model: Any) -> Explainer:
    """The explainer of a loaded tag (registry.LoadedModel), built on first use and kept
    on the model; NotExplainable names the tag and the reason when there is none."""
    explainer = model.explainer
    if explainer is None:
        try:
            explainer = build(model.tag, model.fitted(), model.schema, model.frame)
        except NotExplainable as exc:
            explainer = exc.reason  # refused once, refused every time, without rebuilding
        model.explainer = explainer
    if isinstance(explainer, str):
        raise NotExplainable(model.tag, explainer)
    return explainer


def build(tag: str, pipeline: Any, schema: InputSchema, frame: Callable[[np.ndarray], Any]) -> Explainer:
    """An explainer for `pipeline` (NotExplainable naming `tag` and the reason)."""
    # scikit-learn and SciPy are imported on the first explanation, not with the module:
    # they are two seconds of CPU that `bentoml serve`'s own process would spend for nothing.
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from sklearn.pipeline import Pipeline

    to_input: Callable[[np.ndarray], Any] = frame if schema.frame_input else _identity
    if isinstance(pipeline, Pipeline):
        steps = [step for _, step in pipeline.steps[:-1] if step is not None and step != "passthrough"]
        final = pipeline.steps[-1][1]
        chain: Any = pipeline[:-1] if steps else None
    else:
        steps, final, chain = [], pipeline, None
    width = len(schema.features)
    try:
        owners = _compose(steps, width)
    except _Unmappable as exc:
        raise NotExplainable(
            tag, f"its step {exc.step} makes columns that do not each come from one input feature"
        ) from None

    def transform(inputs: Any) -> Any:
        return chain.transform(inputs) if chain is not None else inputs

    classes = tuple(schema.classes)
    method: _Method
    if isinstance(final, HistGradientBoostingClassifier | HistGradientBoostingRegressor):
        method = _TreeShap(final, owners, width, classes)
    elif hasattr(final, "coef_") and hasattr(final, "intercept_"):
        method = _Linear.build(tag, final, owners, width, classes, transform, to_input, schema)
    else:
        raise NotExplainable(
            tag, f"its final estimator {type(final).__name__} is neither a linear model nor HistGradientBoosting"
        )
    return Explainer(to_input, transform, method, schema)


class _Method(Protocol):
    """What an explanation method gives: linear (exact) or TreeSHAP."""

    name: str
    space: str
    reference: str
    classes: tuple[str, ...]

    def explain(self, transformed: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(outputs (rows, k), base value (k,), contributions (rows, k, features))."""
        ...


class _Linear(_Method):
    """Exact contributions of a linear model, relative to a reference row."""

    name = LINEAR

    def __init__(
        self,
        model: Any,
        owners: np.ndarray,
        width: int,
        classes: tuple[str, ...],
        space: str,
        reference: np.ndarray,
        reference_name: str,
    ) -> None:
        coef = np.atleast_2d(np.asarray(model.coef_, dtype=np.float64))
        self._model = model
        self._coef = coef  # (k, columns)
        self._intercept = np.broadcast_to(np.asarray(model.intercept_, dtype=np.float64), (coef.shape[0],)).copy()
        self._group = _grouping(owners, width)  # (columns, features)
        self._reference = reference
        self.space = space
        self.reference = reference_name
        self.classes = classes[1:] if len(classes) == 2 else classes

    @classmethod
    def build(
        cls,
        tag: str,
        model: Any,
        owners: np.ndarray,
        width: int,
        classes: tuple[str, ...],
        transform: Callable[[Any], Any],
        to_input: Callable[[np.ndarray], Any],
        schema: InputSchema,
    ) -> _Linear:
        coef = np.atleast_2d(np.asarray(model.coef_, dtype=np.float64))
        columns = len(owners)
        if coef.shape[1] != columns:
            raise NotExplainable(tag, f"its linear model takes {coef.shape[1]} columns, its transforms make {columns}")
        if not classes and coef.shape[0] != 1:
            raise NotExplainable(tag, "its linear model predicts several targets")
        reference, reference_name = _reference_row(schema, to_input, transform, columns)
        space = VALUE
        if classes:
            space = LOG_ODDS if len(classes) == 2 else LOGITS
        explainer = cls(model, owners, width, classes, space, reference, reference_name)
        # The model's own answer on the reference row must be ours: else it is not linear
        # in these columns (a GLM's link, say), and contributions would not add up.
        row = reference[None, :]
        own = _linear_output(model, row, bool(classes))
        if not np.allclose(own, row @ explainer._coef.T + explainer._intercept, rtol=LINEAR_CHECK, atol=LINEAR_CHECK):
            raise NotExplainable(tag, f"the output of its {type(model).__name__} is not linear in its inputs")
        if space in (LOGITS, LOG_ODDS):
            # Log-odds or logits only when the probabilities are their sigmoid or softmax
            # (not, say, a modified Huber loss); else the decision function, named as such.
            probes = row if space == LOGITS else _probes(row, explainer._coef[0], float(explainer._intercept[0]))
            decision = _linear_output(model, probes, True)
            expected = _softmax(decision) if space == LOGITS else _sigmoid_pair(decision)
            predict_proba = getattr(model, "predict_proba", None)
            probabilities = np.asarray(predict_proba(probes)) if callable(predict_proba) else None
            if probabilities is None or not np.allclose(expected, probabilities, atol=1e-9):
                explainer.space = DECISION
        return explainer

    def explain(self, transformed: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        z = _dense(transformed)
        outputs = _linear_output(self._model, transformed, bool(self.classes))
        base = self._coef @ self._reference + self._intercept
        shifted = (z - self._reference)[:, None, :] * self._coef[None, :, :]  # (rows, k, columns)
        return outputs, base, shifted @ self._group


def _linear_output(model: Any, rows: Any, classifier: bool) -> np.ndarray:
    """The model's own output as (rows, k): its decision function or its prediction."""
    out = np.asarray(model.decision_function(rows) if classifier else model.predict(rows), dtype=np.float64)
    return out.reshape(out.shape[0], -1)


def _reference_row(
    schema: InputSchema, to_input: Callable[[np.ndarray], Any], transform: Callable[[Any], Any], columns: int
) -> tuple[np.ndarray, str]:
    """The transformed row of an all-missing input (what the imputers fill in), or zeros
    when the pipeline cannot take missing values."""
    if schema.has_categorical:
        row = np.empty((1, len(schema.features)), dtype=object)
        for i, feature in enumerate(schema.features):
            row[0, i] = (np.nan if feature.missing is None else feature.missing) if feature.is_categorical else np.nan
    else:
        row = np.full((1, len(schema.features)), np.nan)
    try:
        reference = _dense(transform(to_input(row)))[0]
    except Exception:  # no imputer: the pipeline refuses missing values
        return np.zeros(columns), ZERO
    if reference.shape != (columns,) or not np.isfinite(reference).all():
        return np.zeros(columns), ZERO
    return reference, IMPUTED


class _TreeShap(_Method):
    """Path-dependent TreeSHAP over every leaf path of a HistGradientBoosting ensemble.

    For one leaf, with its path's distinct features k (each with z_k, the share of the
    training sample that follows the path's splits on k, and o_k, 1 when the row follows
    them all, else 0), Algorithm 2's EXTEND builds the weights of the leaf's value over
    subsets by size, and UNWIND removes one feature to give its Shapley weight; the
    feature's share of the leaf is value * (o_k - z_k) * that weight. Summing the leaves
    of every tree gives the paper's result. Paths are padded to one length with features
    that have z = o = 1, which take no share and change no other share (null players).
    """

    name = TREE_SHAP
    reference = COVER

    def __init__(self, model: Any, owners: np.ndarray, width: int, classes: tuple[str, ...]) -> None:
        self._model = model
        self._preprocessor = getattr(model, "_preprocessor", None)
        if self._preprocessor is not None:  # native categorical features: columns reordered
            owners = owners[_hgb_preprocessor_order(self._preprocessor, len(owners))]
        outputs = int(model.n_trees_per_iteration_)
        self.classes = classes[1:] if len(classes) == 2 else classes
        if classes:
            self.space = LOG_ODDS if outputs == 1 else LOGITS
        else:
            self.space = VALUE if type(model._loss.link).__name__ == "IdentityLink" else LOG_VALUE
        known, f_idx_map = model._bin_mapper.make_known_categories_bitsets()
        self._known, self._f_idx_map = known, f_idx_map
        trees = [(k, predictor) for iteration in model._predictors for k, predictor in enumerate(iteration)]
        self._nodes = _NodeTable(trees)
        paths = _leaf_paths(trees, owners)
        # Paths of one length at a time: the work per path grows with its length squared,
        # and most paths are far shorter than the longest.
        self._groups = [(np.flatnonzero(paths.lengths == n), int(n)) for n in np.unique(paths.lengths)]
        self._zero = paths.zero  # (paths, depth + 1)
        self._segments = paths.segments
        self._steps_node, self._steps_left = paths.steps_node, paths.steps_left
        self._values = paths.values  # (paths,)
        baseline = np.asarray(model._baseline_prediction, dtype=np.float64).reshape(-1)
        reach = self._zero.prod(axis=1)  # the share of the training sample reaching each leaf
        self._base = baseline + np.bincount(paths.output, weights=self._values * reach, minlength=outputs)
        # Each path element's (output, feature) cell in the answer, as one sparse map.
        from scipy import sparse

        cells = (paths.output[:, None] * width + paths.feature).reshape(-1)
        count = cells.size
        self._scatter = sparse.csr_matrix((np.ones(count), (np.arange(count), cells)), shape=(count, outputs * width))
        self._outputs, self._width = outputs, width

    def explain(self, transformed: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # The model's own raw output (it applies its categorical encoder itself).
        outputs = np.asarray(self._model._raw_predict(transformed), dtype=np.float64)
        x = _dense(transformed if self._preprocessor is None else self._preprocessor.transform(transformed))
        paths, slots = self._zero.shape
        chunk = max(1, TREE_CHUNK_ELEMENTS // (paths * slots))
        parts = [self._contributions(x[start : start + chunk]) for start in range(0, x.shape[0], chunk)]
        contributions = np.concatenate(parts).reshape(x.shape[0], self._outputs, self._width)
        return outputs, self._base.copy(), contributions

    def _contributions(self, x: np.ndarray) -> np.ndarray:
        rows = x.shape[0]
        left = self._nodes.goes_left(x, self._known, self._f_idx_map)  # (rows, internal nodes)
        followed = left[:, self._steps_node] == self._steps_left  # (rows, steps)
        one = np.ones((rows, self._zero.size))
        starts, cells = self._segments
        if starts.size:
            one[:, cells] = np.logical_and.reduceat(followed, starts, axis=1)
        one = one.reshape(rows, *self._zero.shape)  # (rows, paths, depth + 1)
        if rows < GROUPED_ROWS:  # few rows: numpy's per-call overhead dominates, one call does
            shares = _path_shares(self._zero, one, self._zero.shape[1] - 1)
        else:
            shares = np.zeros_like(one)  # (rows, paths, depth + 1)
            for group, length in self._groups:
                slots = length + 1
                shares[:, group, :slots] = _path_shares(self._zero[group, :slots], one[:, group, :slots], length)
        shares *= self._values[None, :, None]
        return np.asarray(shares.reshape(rows, -1) @ self._scatter)


def _path_shares(zero: np.ndarray, one: np.ndarray, depth: int) -> np.ndarray:
    """Each path element's share of its leaf (before the leaf value), for every row:
    (o - z) times the element's weight once UNWIND has taken it out of the path.

    Slot 0 of every path is the root's empty element (z = o = 1), as in the paper."""
    rows, paths, slots = one.shape
    # EXTEND, slot by slot: weight[i] is the weight of the leaf over subsets of size i.
    weight = np.zeros((rows, paths, slots))
    weight[:, :, 0] = 1.0
    for size in range(1, slots):
        z = zero[None, :, size, None]
        o = one[:, :, size, None]
        subset = np.arange(size + 1)
        old = weight[:, :, : size + 1].copy()
        new = z * old * ((size - subset) / (size + 1))
        new[:, :, 1:] += o * old[:, :, :size] * (subset[1:] / (size + 1))
        weight[:, :, : size + 1] = new
    # UNWIND each element (slot e) and sum the weights left: vectorised over elements.
    last = slots - 1
    z = np.broadcast_to(zero[None, :, :], one.shape)
    o = one
    carry = np.broadcast_to(weight[:, :, last, None], one.shape).copy()
    total = np.zeros(one.shape)
    followed = o != 0
    safe_o = np.where(followed, o, 1.0)
    safe_z = np.where(z != 0, z, 1.0)
    for i in range(last - 1, -1, -1):
        w_i = weight[:, :, i, None]
        taken = carry * (last + 1) / ((i + 1) * safe_o)
        carry = np.where(followed, w_i - taken * z * (last - i) / (last + 1), carry)
        unfollowed = np.where(z != 0, w_i / safe_z * (last + 1) / (last - i), 0.0)
        total += np.where(followed, taken, unfollowed)
    shares = total * (o - z)
    shares[:, :, 0] = 0.0
    return shares


@dataclass(frozen=True)
class _Paths:
    """Every root-to-leaf path of an ensemble, with one element per distinct feature."""

    depth: int  # elements per path after padding (slot 0, the root's, not counted)
    zero: np.ndarray  # (paths, depth + 1): z of each element
    feature: np.ndarray  # (paths, depth + 1): the input feature of each element
    output: np.ndarray  # (paths,): the output (class) of the path's tree
    values: np.ndarray  # (paths,): the leaf value
    lengths: np.ndarray  # (paths,): the path's elements before padding
    steps_node: np.ndarray  # (steps,): the internal node of each split on a path ...
    steps_left: np.ndarray  # (steps,): ... and whether the path goes left there
    segments: tuple[np.ndarray, np.ndarray]  # runs of steps per element, and the element's flat cell


@dataclass(frozen=True)
class _Element:
    """One distinct feature on a root-to-leaf path: z, the share of the training sample that
    follows the path's splits on it, and those splits (global node index, goes left)."""

    feature: int
    zero: float
    steps: tuple[tuple[int, bool], ...]


def _leaf_paths(trees: list[tuple[int, Any]], owners: np.ndarray) -> _Paths:
    leaves: list[tuple[int, float, tuple[_Element, ...]]] = []  # (output, leaf value, path)
    offset = 0
    for k, predictor in trees:
        nodes = predictor.nodes
        stack: list[tuple[int, tuple[_Element, ...]]] = [(0, ())]
        while stack:
            index, elements = stack.pop()
            node = nodes[index]
            if node["is_leaf"]:
                leaves.append((k, float(node["value"]), elements))
                continue
            split_on = int(owners[node["feature_idx"]])
            cover = float(node["count"])
            for child, went_left in ((int(node["left"]), True), (int(node["right"]), False)):
                share = float(nodes[child]["count"]) / cover if cover else 0.0
                step = (offset + index, went_left)
                seen = [e for e in elements if e.feature == split_on]
                if seen:  # a feature split on higher up stays one element (the paper's UNWIND + EXTEND)
                    merged = _Element(split_on, seen[0].zero * share, (*seen[0].steps, step))
                    path = tuple(merged if e.feature == split_on else e for e in elements)
                else:
                    path = (*elements, _Element(split_on, share, (step,)))
                stack.append((child, path))
        offset += len(nodes)
    depth = max((len(e) for _, _, e in leaves), default=0)
    slots = depth + 1
    count = len(leaves)
    zero = np.ones((count, slots))
    feature = np.zeros((count, slots), dtype=np.intp)
    steps_node: list[int] = []
    steps_left: list[bool] = []
    starts: list[int] = []
    cells: list[int] = []
    for p, (_, _, elements) in enumerate(leaves):
        for e, element in enumerate(elements, start=1):
            zero[p, e], feature[p, e] = element.zero, element.feature
            starts.append(len(steps_node))
            cells.append(p * slots + e)
            for node, left in element.steps:
                steps_node.append(node)
                steps_left.append(left)
    return _Paths(
        depth=depth,
        zero=zero,
        feature=feature,
        output=np.array([k for k, _, _ in leaves], dtype=np.intp),
        values=np.array([v for _, v, _ in leaves]),
        lengths=np.array([len(e) for _, _, e in leaves], dtype=np.intp),
        steps_node=np.array(steps_node, dtype=np.intp),
        steps_left=np.array(steps_left, dtype=bool),
        segments=(np.array(starts, dtype=np.intp), np.array(cells, dtype=np.intp)),
    )


class _NodeTable:
    """Every node of an ensemble in one table, to route many rows at once the way
    scikit-learn's predictor does (missing values, numeric and categorical splits)."""

    def __init__(self, trees: list[tuple[int, Any]]) -> None:
        nodes: Any = np.concatenate([p.nodes for _, p in trees])  # a fitted ensemble has trees
        self.feature = nodes["feature_idx"].astype(np.intp)
        self.threshold = nodes["num_threshold"]
        self.missing_left = nodes["missing_go_to_left"].astype(bool)
        self.categorical = nodes["is_categorical"].astype(bool)
        # Categorical splits: the row of the node's tree's bitsets, made global.
        bitsets: list[np.ndarray] = []
        rows: list[np.ndarray] = []
        base = 0
        for _, predictor in trees:
            raw = predictor.raw_left_cat_bitsets
            bitsets.append(raw)
            rows.append(predictor.nodes["bitset_idx"].astype(np.intp) + base)
            base += raw.shape[0]
        self.bitset_row = np.concatenate(rows)
        self.bitsets = np.concatenate(bitsets)

    def goes_left(self, x: np.ndarray, known: np.ndarray, f_idx_map: np.ndarray) -> np.ndarray:
        """(rows, nodes): whether each row goes left at each node (leaves: anything)."""
        values = x[:, self.feature]
        missing = np.isnan(values)
        with np.errstate(invalid="ignore"):
            left = np.where(missing, self.missing_left[None, :], values <= self.threshold[None, :])
        if self.categorical.any():
            cols = np.flatnonzero(self.categorical)
            v = values[:, cols]
            bad = np.isnan(v) | (v < 0)
            code = np.where(bad, 0, v).astype(np.intp)
            in_left = _in_bitset(self.bitsets, self.bitset_row[cols][None, :], code)
            in_known = _in_bitset(known, f_idx_map[self.feature[cols]].astype(np.intp)[None, :], code)
            # Unknown categories and negative codes go where missing values go.
            unknown = bad | (~in_left & ~in_known)
            left[:, cols] = np.where(unknown, self.missing_left[cols][None, :], in_left)
        return left


def _in_bitset(bitsets: np.ndarray, row: np.ndarray, code: np.ndarray) -> np.ndarray:
    word = bitsets[row, code // 32]
    return ((word >> (code % 32).astype(np.uint32)) & 1).astype(bool)


def _hgb_preprocessor_order(preprocessor: Any, width: int) -> np.ndarray:
    """HistGradientBoosting's own encoder of native categorical features puts them first:
    the input column of each column its trees see."""
    order = np.empty(width, dtype=np.intp)
    for name, _, columns in preprocessor.transformers_:
        part = preprocessor.output_indices_[name]
        indices = np.arange(width)[columns] if not isinstance(columns, str) else np.arange(0)
        order[part] = indices
    return order


class _Unmappable(Exception):
    def __init__(self, step: Any) -> None:
        super().__init__(type(step).__name__)
        self.step = type(step).__name__


def _compose(steps: list[Any], width: int) -> np.ndarray:
    """The input feature of each column after `steps`."""
    owners = np.arange(width)
    for step in steps:
        owners = owners[_owners(step, len(owners))]
    return owners


def _owners(step: Any, width: int) -> np.ndarray:
    """For each column `step` makes, the one of its `width` input columns it comes from."""
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline

    if step is None or (isinstance(step, str) and step == "passthrough"):
        return np.arange(width)
    if isinstance(step, Pipeline):
        return _compose([s for _, s in step.steps if s is not None and s != "passthrough"], width)
    if isinstance(step, ColumnTransformer):
        total = sum(s.stop - s.start for s in step.output_indices_.values())
        owners = np.full(total, -1, dtype=np.intp)
        inputs = getattr(step, "_transformer_to_input_indices", {})
        for name, transformer, _ in step.transformers_:
            part = step.output_indices_[name]
            if part.stop == part.start or (isinstance(transformer, str) and transformer == "drop"):
                continue
            columns = np.asarray(inputs[name], dtype=np.intp)
            owners[part] = columns[_owners(transformer, len(columns))]
        if (owners < 0).any():
            raise _Unmappable(step)
        return owners
    # One transformer: name its inputs with markers, and find one marker in each output name.
    markers = np.array([f"\x1e{i}\x1e" for i in range(width)], dtype=object)
    unfitted_names = copy.copy(step)
    unfitted_names.__dict__.pop("feature_names_in_", None)
    try:
        names = unfitted_names.get_feature_names_out(markers)
    except Exception:
        raise _Unmappable(step) from None
    found = [set(re.findall("\x1e(\\d+)\x1e", str(name))) for name in names]
    if any(len(markers_in) != 1 for markers_in in found):
        raise _Unmappable(step)
    return np.array([int(markers_in.pop()) for markers_in in found], dtype=np.intp)


def _grouping(owners: np.ndarray, width: int) -> np.ndarray:
    """(columns, features): 1 where a column comes from a feature."""
    group = np.zeros((len(owners), width))
    group[np.arange(len(owners)), owners] = 1.0
    return group


def _dense(values: Any) -> np.ndarray:
    from scipy import sparse

    if sparse.issparse(values):
        values = values.toarray()
    return np.asarray(values, dtype=np.float64)


def _sigmoid_pair(values: np.ndarray) -> np.ndarray:
    """The two class probabilities a binary decision function's sigmoid gives."""
    with np.errstate(over="ignore"):
        positive = 1.0 / (1.0 + np.exp(-values[:, 0]))
    return np.column_stack([1.0 - positive, positive])


# Decision values at which a binary model's probabilities are compared with the sigmoid:
# where a sigmoid and, say, a clipped modified Huber differ, unlike saturated values.
PROBE_DECISIONS = np.array([-2.0, -0.5, 0.5, 2.0])


def _probes(reference: np.ndarray, coef: np.ndarray, intercept: float) -> np.ndarray:
    """Transformed rows, moved from the reference row along the coefficients, whose
    decision values are PROBE_DECISIONS (the reference row alone when all are zero)."""
    norm = float(coef @ coef)
    if norm == 0:
        return reference
    start = float(reference[0] @ coef) + intercept
    return reference + np.outer((PROBE_DECISIONS - start) / norm, coef)


def _softmax(values: np.ndarray) -> np.ndarray:
    shifted = np.exp(values - values.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def _identity(values: Any) -> Any:
    return values
