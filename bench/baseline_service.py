"""The baseline: the plain recipe from BentoML's documentation, on the same model.

One `@bentoml.service`, the model declared at class scope, one `batchable=True` ndarray
API, default settings. The benchmark runs it with OMP_NUM_THREADS=1 like our server,
so the comparison is about serving, not about a thread setting.
"""

from __future__ import annotations

import bentoml
import numpy as np

BENCH_TAG = "breast_cancer:v2"


@bentoml.service
class BaselineClassifier:
    """breast_cancer gradient boosting behind BentoML's standard batching API."""

    bento_model = bentoml.models.BentoModel(BENCH_TAG)

    def __init__(self) -> None:
        self.model = bentoml.sklearn.load_model(self.bento_model)

    @bentoml.api(batchable=True)
    def classify(self, input: np.ndarray) -> np.ndarray:
        return self.model.predict_proba(input)
