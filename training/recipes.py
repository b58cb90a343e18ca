"""Which algorithm each default tag is trained with, so that `configuration.yaml` can
name a tag and set-up can train it when the model store lacks it."""

from __future__ import annotations

DEFAULT_SEED = 42

# tag -> algorithm. v1 and v2 of each model really differ, for A/B comparisons.
DEFAULT_RECIPES = {
    "iris:v1": "logistic_regression",
    "iris:v2": "gradient_boosting",
    "breast_cancer:v1": "logistic_regression",
    "breast_cancer:v2": "gradient_boosting",
    "diabetes:v1": "ridge",
    "diabetes:v2": "gradient_boosting",
    "titanic:v1": "gradient_boosting",
    "titanic:v2": "logistic_regression",
}
