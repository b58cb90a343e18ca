"""Names shared by training, the core and the fronts."""

from __future__ import annotations

# The server's name and version, as OIP server metadata and the OpenAPI document give them.
SERVER_NAME = "tabular-model-server"
SERVER_VERSION = "0.1.0"

# The BentoML service class, and the key under `services.<SERVICE_NAME>` in
# configuration.yaml that holds this server's own settings.
SERVICE_NAME = "TabularModelServer"
SETTINGS_KEY = "model_server"


# The built-in data sets of `python -m training NAME` (training/datasets.py and Titanic):
# a missing tag of one of these names is trained by that command.
BUILT_IN_DATA_SETS = ("breast_cancer", "diabetes", "iris", "titanic")

# Key of the input schema inside a stored model's metadata.
SCHEMA_METADATA_KEY = "input_schema"

# Output names, shared by the JSON API and the Open Inference Protocol.
OUTPUT_PREDICT = "predict"
OUTPUT_PREDICT_PROBA = "predict_proba"
# Every answered row's signed id (BYTES), which feedback names (docs/api.md, "Prediction ids").
OUTPUT_PREDICTION_ID = "prediction_id"
# The outputs that answer `explain` (docs/explanations.md).
EXPLAIN_CONTRIBUTIONS = "explain_contributions"  # FP64 [rows, outputs, features]
EXPLAIN_BASE_VALUE = "explain_base_value"  # FP64 [outputs]
EXPLAIN_OUTPUTS = "explain_outputs"  # FP64 [rows, outputs]: the model's output in that space
EXPLAIN_OUTPUT_NAMES = (EXPLAIN_CONTRIBUTIONS, EXPLAIN_BASE_VALUE, EXPLAIN_OUTPUTS)

# HTTP header (and gRPC metadata key) carrying the caller key that keeps a caller on one
# variant of a model (docs/operations.md, "A/B by tag").
KEY_HEADER = "x-request-key"
KEY_HEADER_BYTES = KEY_HEADER.encode()
# The ONNX export that registration checked (training/onnx_export.py): the BentoML
# model's custom object holding it, and the metadata key of what the check found.
ONNX_OBJECT = "onnx_model"
ONNX_METADATA = "onnx"

# A missing category, on every door and for every tag: null in JSON, or this string (the
# only way a BYTES tensor, binary or gRPC, can say it). Each tag's own marker (Feature.missing)
# is what reaches its pipeline.
MISSING_TEXT = ""

# A few real training rows stored with a tag (training/examples.py), which the web page
# offers as examples: the metadata key.
EXAMPLES_METADATA = "examples"
