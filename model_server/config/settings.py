"""This server's own settings, read from configuration.yaml and validated at start-up.

BentoML's runtime settings and ours share one file: BentoML accepts any keys under
`services.<service name>`, so ours live under `services.TabularModelServer.model_server`.
A bad value fails start-up with a sentence that names the key.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from model_server.constants import SERVICE_NAME, SETTINGS_KEY

ENV_PREFIX = "MODEL_SERVER_"
DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configuration.yaml"


# The one rule for what may serve, used by the settings, the routing file and every admin
# change (docs/api.md, "Names, tags and weights"). A served model name: what a URL path
# segment and a gRPC field carry unchanged.
MODEL_NAME_RULE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# Each part of a stored tag `name:version`: BentoML's own rule (lower case, at most 63
# characters); a tag BentoML would refuse must be a 400 here, never BentoML's error.
TAG_PART_RULE = re.compile(r"^[a-z0-9]([-._a-z0-9]{0,61}[a-z0-9])?$")
# The largest weight of one variant: every weight is finite, so their sum is too.
MAX_WEIGHT = 1_000_000


class SettingsError(Exception):
    """The configuration cannot be used; the message says which key and why."""


def check_model_name(name: str) -> str:
    """`name` when it is a valid served model name, else ValueError saying the rule."""
    if not MODEL_NAME_RULE.fullmatch(name) or ".." in name:
        raise ValueError(
            "a model name must be 1 to 64 characters: letters, digits, '_', '-' or '.', starting with a "
            "letter or digit, without '..'"
        )
    return name


def check_tag(tag: str) -> str:
    """`tag` when it is a stored tag with an explicit version, `name:version`, that BentoML
    accepts as it is; else ValueError saying the rule (echoing the value only when well-formed)."""
    name, _, version = tag.partition(":")
    if _tag_part(name) and version in ("", "latest"):
        raise ValueError(f"'{tag}' must name an explicit version, like 'iris:v1'")
    if not (_tag_part(name) and _tag_part(version)):
        raise ValueError(
            "a tag must be 'name:version', like 'iris:v1': each part 1 to 63 lower-case letters, digits, "
            "'_', '-' or '.', starting and ending with a letter or digit, without '..'"
        )
    return tag


def _tag_part(part: str) -> bool:
    return bool(TAG_PART_RULE.fullmatch(part)) and ".." not in part


ModelName = Annotated[str, AfterValidator(check_model_name)]


class Variant(BaseModel):
    """One stored model tag that serves a model name, and its share of traffic."""

    model_config = ConfigDict(extra="forbid")

    tag: str = Field(description="Model store tag, `name:version`.")
    weight: float = Field(
        default=1.0,
        ge=0,
        le=MAX_WEIGHT,
        allow_inf_nan=False,
        description=f"Relative share of traffic without an explicit version: a finite number from 0 to {MAX_WEIGHT:,}.",
    )
    runtime: Literal["sklearn", "onnx"] | None = Field(
        default=None,
        description="What predicts: 'sklearn', the pipeline, or 'onnx', its export (onnxruntime), which "
        "registration kept only when it matched the pipeline on held-out rows. Unset: 'onnx' where the tag "
        "has such an export, else 'sklearn'.",
    )

    @field_validator("tag")
    @classmethod
    def _explicit_version(cls, tag: str) -> str:
        return check_tag(tag)

    @field_validator("weight", mode="before")
    @classmethod
    def _not_a_boolean(cls, weight: object) -> object:
        if isinstance(weight, bool):  # pydantic would take true for 1.0
            raise ValueError("must be a number, not true or false")
        return weight

    @property
    def version(self) -> str:
        return self.tag.partition(":")[2]


class ServedModel(BaseModel):
    """The variants that answer for one model name."""

    model_config = ConfigDict(extra="forbid")

    variants: list[Variant] = Field(min_length=1, description="Tags serving this name, with weights.")
    shadow: str | None = Field(
        default=None, description="A tag that gets a copy of every request after the caller is answered."
    )
    unknown_categories: Literal["reject", "accept"] = Field(
        default="reject",
        description="A categorical value not seen in training: 'reject' answers 400 naming the allowed "
        "values; 'accept' passes it to the model's encoder and adds a warning to the answer.",
    )

    def tags(self) -> list[str]:
        """The variants' tags, then the shadow's."""
        return [v.tag for v in self.variants] + ([self.shadow] if self.shadow else [])

    @field_validator("variants")
    @classmethod
    def _positive_total(cls, variants: list[Variant]) -> list[Variant]:
        if sum(v.weight for v in variants) <= 0:
            raise ValueError("weights must sum to a positive total")
        versions = [v.version for v in variants]
        if len(set(versions)) != len(versions):
            raise ValueError("each version may appear once")
        return variants

    @field_validator("shadow")
    @classmethod
    def _shadow_is_another_tag(cls, tag: str | None, info: ValidationInfo) -> str | None:
        if tag is None:
            return None
        check_tag(tag)
        if tag in [v.tag for v in info.data.get("variants", [])]:
            raise ValueError(f"'{tag}' is already a variant of this name; a shadow must be another tag")
        return tag


class PredictionCacheSettings(BaseModel):
    """The prediction cache of each served tag (model_server/core/prediction_cache.py)."""

    model_config = ConfigDict(extra="forbid")

    max_entries: int = Field(default=0, ge=0, description="Rows each tag's cache keeps at most; 0 turns it off.")
    max_bytes: int = Field(
        default=64 * 1024 * 1024, gt=0, description="Bytes each tag's cache keeps at most (keys, outputs, overhead)."
    )


class InferenceLogSettings(BaseModel):
    """The inference log: answered rows and the feedback on them, as Parquet files
    (model_server/monitoring/inference_log.py, docs/monitoring.md)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(default=False, description="Whether answered rows are logged at all.")
    directory: str | None = Field(
        default=None,
        description="Where each worker writes its Parquet files; by default `inference-log` in BentoML's home.",
    )
    sample_rate: float = Field(
        default=1.0, ge=0, le=1, description="Share of requests whose rows are logged (drawn per request)."
    )
    rotate_bytes: int = Field(
        default=16 * 1024 * 1024, gt=0, description="A worker's file is closed and a new one started past this size."
    )
    rotate_seconds: float = Field(
        default=60.0,
        gt=0,
        description="A worker's file is closed (and readable) at most this many seconds after its first row.",
    )
    max_bytes: int = Field(
        default=1024 * 1024 * 1024,
        gt=0,
        description="The log's files together stay under this size: the oldest are removed (and counted).",
    )
    queue_rows: int = Field(
        default=100_000,
        gt=0,
        description="Rows waiting for the writer thread, per worker; beyond this, rows are dropped and counted "
        "(model_server_inference_log_dropped_rows), never the request.",
    )
    cloudevents_url: str | None = Field(
        default=None,
        description="Also send each logged request and answer as CloudEvents over HTTP to this URL, in KServe's "
        "logger format (a Knative or Kafka broker).",
    )


class ServerSettings(BaseModel):
    """Settings of the model server (not of BentoML)."""

    model_config = ConfigDict(extra="forbid")

    models: dict[ModelName, ServedModel] = Field(description="Model name -> variants that serve it.")
    max_rows_per_request: int = Field(default=1000, gt=0, description="Rows one request may carry; more is a 400.")
    max_explained_rows: int = Field(
        default=100,
        gt=0,
        description="Rows one request asking for explanations (`explain`) may carry; more is a 400. "
        "An explanation costs far more than a prediction (docs/explanations.md).",
    )
    max_concurrent_explanations: int = Field(
        default=4,
        gt=0,
        description="Explained requests one worker runs or queues at once; more are a 503 with Retry-After, "
        "so that explanations never pile up behind each other (docs/explanations.md).",
    )
    max_batch_rows: int = Field(default=256, gt=0, description="Rows the batcher joins into one model call at most.")
    max_batch_wait_ms: float = Field(
        default=1.0,
        ge=0,
        le=1000,
        description="Under load, how long a batch may hold its oldest request for more to join (ms); "
        "at low load nothing waits; 0 runs every batch as soon as the model is free.",
    )
    prediction_cache: PredictionCacheSettings = Field(
        default_factory=PredictionCacheSettings,
        description="A per-tag cache of output rows by input row, off by default; emptied when the routing "
        'changes (docs/performance.md, "Prediction cache").',
    )
    inline_call_us: float = Field(
        default=300,
        ge=0,
        description="A batch of up to 64 rows runs on the event loop instead of the model thread while the "
        "model's recent calls took under this many microseconds (a compiled ONNX model; a scikit-learn "
        "pipeline takes longer and keeps its thread); 0 always uses the model thread.",
    )
    numeric_threads: int = Field(
        default=1, gt=0, description="OpenMP/BLAS threads of each model thread (one per worker fits one core)."
    )
    grpc_host: str | None = Field(
        default=None,
        description="Address the OIP gRPC server listens on; by default the HTTP server's (`bentoml serve --host`), "
        "so gRPC is never more exposed than HTTP.",
    )
    grpc_port: int = Field(default=3001, ge=0, lt=65536, description="Port of the OIP gRPC server; 0 disables it.")
    max_body_bytes: int = Field(
        default=2_097_152, gt=0, description="Largest request body (HTTP) or message (gRPC) in bytes; more is a 413."
    )
    body_timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=3600,
        description="Seconds an HTTP request body may take to arrive in full; a slower one is a 408 and the "
        "connection closes. The body is read before the request takes a concurrency slot.",
    )
    body_idle_timeout_s: float = Field(
        default=2.0,
        gt=0,
        le=3600,
        description="Seconds an HTTP request body may pause between two chunks; a longer pause is a 408.",
    )
    header_timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=3600,
        description="Seconds an HTTP request's headers may take to arrive, from the connection's opening or the "
        "request's first byte; then the connection closes (with a 408 once some of the request came).",
    )
    max_concurrent_requests: int = Field(
        default=512,
        gt=0,
        description="Prediction requests in flight per worker, counted once their body has arrived; more are "
        "refused at once with 503 and Retry-After.",
    )
    api_keys_file: str | None = Field(
        default=None,
        description="File with one API key per line; with MODEL_SERVER_API_KEYS, turns authentication on.",
    )
    metrics_require_key: bool = Field(default=False, description="Whether /metrics needs an API key too.")
    max_requests_per_connection: int = Field(
        default=200,
        ge=0,
        description="HTTP keep-alive connection closed after this many requests to /v1 or /v2, so that "
        "clients reconnect and connections spread over the workers again; 0 never closes.",
    )
    access_log: bool = Field(default=True, description="One JSON log line per prediction request (never input values).")
    drift_counting: bool = Field(
        default=True,
        description="Count live inputs and predictions of each tag into its training bins, for GET "
        "/v1/models/{name}/drift and the model_server_feature_psi gauges (docs/monitoring.md).",
    )
    shared_store: str | None = Field(
        default=None,
        description="A folder that every replica of a fleet mounts (a ReadWriteMany volume, NFSv4): it holds "
        "the model store (`models/`, instead of BentoML's home's), the routing file (`routing.yaml`), the "
        "workers' reports (`workers/`) and the audit secret, so that a tag pushed to one replica and a "
        'routing change made on one replica reach every replica (docs/operations.md, "A fleet of replicas").',
    )
    replica_name: str | None = Field(
        default=None,
        description="This replica's name in the workers' reports of a shared store; by default the host name "
        "(a Kubernetes pod's name).",
    )
    max_push_bytes: int = Field(
        default=256 * 1024 * 1024,
        gt=0,
        description="Largest model archive POST /v1/admin/store accepts, in bytes; more is a 413.",
    )
    push_timeout_s: float = Field(
        default=600.0,
        gt=0,
        description="Seconds a model archive pushed to POST /v1/admin/store may take to arrive, in place of "
        "body_timeout_s (a large archive over a slow link); a pause still has body_idle_timeout_s. Later is a 408.",
    )
    tracing: bool = Field(
        default=False,
        description="Export a trace of each sampled request with OpenTelemetry's OTLP/HTTP exporter, configured "
        'by the standard OTEL_* variables (docs/monitoring.md, "Tracing"); off, a request pays one check.',
    )
    tracing_sample_ratio: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Share of requests traced (those whose caller's traceparent is sampled always are); unset: "
        "OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG decide, else every request.",
    )
    routing_file: str | None = Field(
        default=None,
        description="Where changes made on the running server (the admin API) are kept, and read at start-up; "
        "by default `routing.yaml` in the shared store, else in BentoML's home, beside the model store. "
        "Without the file, `models` serves.",
    )
    routing_file_writable: bool = Field(
        default=True,
        description="false when the routing file is managed elsewhere (a mounted ConfigMap): the server follows "
        "it, and the admin API refuses changes with 409.",
    )
    routing_apply_timeout_s: float = Field(
        default=30.0,
        gt=0,
        le=600,
        description="How long an admin change waits for every worker to serve it before answering 202 "
        "with the workers still behind.",
    )
    admin_keys_file: str | None = Field(
        default=None,
        description="File with one admin key per line; with MODEL_SERVER_ADMIN_KEYS, turns the admin API on "
        "(without any admin key it answers 403). Admin keys are separate from the API keys.",
    )
    audit_secret_file: str | None = Field(
        default=None,
        description="File holding the secret that keys the audit log's fingerprints of admin keys "
        "(HMAC-SHA256); by default `audit-secret` in BentoML's home, made (mode 0600) when a server with "
        "admin keys first starts. Give every replica the same file for the same fingerprints.",
    )

    prediction_secret_file: str | None = Field(
        default=None,
        description="File whose first line is the secret that signs prediction ids (HMAC-SHA256); further lines "
        "are previous secrets that still verify (rotation). By default `prediction-secret` in BentoML's home, "
        "made (mode 0600) when absent. Give every replica the same file, so that any replica accepts feedback.",
    )
    outcomes_directory: str | None = Field(
        default=None,
        description="Where workers keep accepted outcomes and replay markers; by default a folder of this "
        "server shared by its workers. A folder every replica mounts makes live quality and replay "
        "protection span replicas (docs/monitoring.md).",
    )
    feedback_max_age_s: float = Field(
        default=30 * 86400.0,
        gt=0,
        description="Feedback on a prediction older than this is refused as expired; replays are recognised "
        "within it (docs/monitoring.md).",
    )
    inference_log: InferenceLogSettings = Field(
        default_factory=InferenceLogSettings,
        description='The inference log, off by default (docs/monitoring.md, "Inference log").',
    )

    def tags(self) -> list[str]:
        """Every tag to load: the variants and the shadows, each once, in order."""
        return tags_of(self.models)

    def routing_path(self) -> Path:
        """The routing file: `routing_file`, else routing.yaml in the shared store, else in BentoML's home."""
        if self.routing_file:
            return Path(self.routing_file)
        return self._home() / "routing.yaml"

    def prediction_secret_path(self) -> Path:
        """The prediction id secrets: `prediction_secret_file`, else prediction-secret in BentoML's home."""
        if self.prediction_secret_file:
            return Path(self.prediction_secret_file)
        return _bentoml_home() / "prediction-secret"

    def inference_log_path(self) -> Path:
        """The inference log's directory: its setting, else inference-log in BentoML's home."""
        if self.inference_log.directory:
            return Path(self.inference_log.directory)
        return _bentoml_home() / "inference-log"

    def audit_secret_path(self) -> Path:
        """The audit secret: `audit_secret_file`, else audit-secret in the shared store, else in
        BentoML's home (a shared store gives every replica the same fingerprints)."""
        if self.audit_secret_file:
            return Path(self.audit_secret_file)
        return self._home() / "audit-secret"

    def model_store_path(self) -> Path | None:
        """The shared model store (`models/` in the shared store), or None: BentoML's own."""
        return Path(self.shared_store) / "models" if self.shared_store else None

    def reports_path(self) -> Path | None:
        """Where the workers of every replica report (`workers/` in the shared store), or
        None: the machine's temporary space (routing.state_directory)."""
        return Path(self.shared_store) / "workers" if self.shared_store else None

    def _home(self) -> Path:
        return Path(self.shared_store) if self.shared_store else _bentoml_home()


def tags_of(models: dict[str, ServedModel]) -> list[str]:
    """Every tag that `models` names: the variants and the shadows, each once, in order."""
    tags: list[str] = []
    for served in models.values():
        for tag in served.tags():
            if tag not in tags:
                tags.append(tag)
    return tags


def config_path() -> Path:
    """The file BentoML reads (BENTOML_CONFIG), else the project's configuration.yaml."""
    return Path(os.environ.get("BENTOML_CONFIG") or DEFAULT_CONFIG)


def load_settings(path: Path | None = None) -> ServerSettings:
    """Read and validate the settings block, or raise SettingsError with a plain sentence."""
    path = path or config_path()
    try:
        document = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise SettingsError(f"Configuration file '{path}' cannot be read: {exc.strerror}.") from None
    except yaml.YAMLError as exc:
        raise SettingsError(f"Configuration file '{path}' is not valid YAML: {exc}") from None
    block = _dig(document, ["services", SERVICE_NAME, SETTINGS_KEY])
    where = f"services.{SERVICE_NAME}.{SETTINGS_KEY}"
    if block is None:
        raise SettingsError(f"Configuration '{where}' is missing in '{path}', and has no default.")
    if not isinstance(block, dict):
        raise SettingsError(f"Configuration '{where}' in '{path}' must be a mapping.")
    block = {**block, **_environment_overrides()}
    try:
        return ServerSettings.model_validate(block)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join([where, *(str(p) for p in first["loc"])])
        raise SettingsError(f"Configuration '{key}' in '{path}' is invalid: {first['msg']}.") from None


def load_tls(path: Path | None = None) -> tuple[Path, Path] | None:
    """Certificate and key from BentoML's own `ssl` block of the service, when enabled.

    HTTP (BentoML) and gRPC (this server) read the same block, so one setting turns TLS
    on for both: `services.TabularModelServer.ssl: {enabled: true, certfile, keyfile}`.
    """
    path = path or config_path()
    block = _dig(yaml.safe_load(path.read_text()) or {}, ["services", SERVICE_NAME, "ssl"])
    if not isinstance(block, dict) or not block.get("enabled"):
        return None
    where = f"services.{SERVICE_NAME}.ssl"
    if not block.get("certfile") or not block.get("keyfile"):
        raise SettingsError(f"Configuration '{where}' enables TLS but lacks 'certfile' or 'keyfile'.")
    files = Path(block["certfile"]), Path(block["keyfile"])
    for file in files:
        if not file.is_file():
            raise SettingsError(f"Configuration '{where}' names '{file}', which is not a readable file.")
    return files


def _environment_overrides() -> dict[str, str]:
    """MODEL_SERVER_<KEY> overrides a top-level scalar key (env, then file, then default).

    By hand rather than pydantic-settings: these few lines do it, where BaseSettings would
    need its sources reordered (it puts the file's values above the environment) and one
    more dependency in the image."""
    overrides = {}
    for name, field in ServerSettings.model_fields.items():
        value = os.environ.get(ENV_PREFIX + name.upper())
        if value is not None and field.annotation in (int, str, float, bool, str | None, float | None):
            overrides[name] = value
    return overrides


def _dig(document: Any, keys: list[str]) -> Any:
    for key in keys:
        if not isinstance(document, dict):
            return None
        document = document.get(key)
    return document


def _bentoml_home() -> Path:
    return Path(os.environ.get("BENTOML_HOME") or str(Path.home() / "bentoml"))
