"""deploy/kserve: the ServingRuntime and InferenceService are valid against KServe's own
CRD schemas (kept in deploy/kserve/crds/ with the release they come from, so this runs
offline), the pod KServe builds from them is valid against the Kubernetes API schemas,
and the pieces fit together, with the server and with deploy/kubernetes."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from model_server.config.settings import ServerSettings

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = ROOT / "deploy" / "kserve"
CRDS = MANIFESTS / "crds"
# As tests/test_kubernetes_manifests.py: the oldest Kubernetes release to support, and the newest bundled.
VERSIONS = ["1.29.0", kubernetes_validate.latest_version()]
# What KServe's controller and webhook require (pkg/constants, inference_service_validation.go).
KSERVE_CONTAINER = "kserve-container"
ISVC_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
# Fields of a predictor that are KServe's own; the others are the pod's (PodSpec is inlined).
COMPONENT_FIELDS = {"model", "minReplicas", "maxReplicas", "scaleMetric", "scaleTarget"}


def _load(directory: Path) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(directory.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            for document in yaml.safe_load_all(path.read_text()):
                found[document["kind"]] = document
    return found


RESOURCES = _load(MANIFESTS)
RUNTIME = RESOURCES["ServingRuntime"]
ISVC = RESOURCES["InferenceService"]
PREDICTOR = ISVC["spec"]["predictor"]
CONTAINER = next(c for c in RUNTIME["spec"]["containers"] if c["name"] == KSERVE_CONTAINER)
SCHEMAS = {(s["apiVersion"], s["kind"]): s for s in (json.loads(p.read_text()) for p in sorted(CRDS.glob("*.json")))}
KUBERNETES = {f"{r['kind']}/{r['metadata']['name']}": r for r in _load(ROOT / "deploy" / "kubernetes").values()}


def _strict_properties(validator: Any, properties: Any, instance: Any, schema: dict[str, Any]) -> Iterator[Any]:
    """Unknown fields are errors, as with `kubectl apply` (strict field validation), not pruned."""
    yield from jsonschema.Draft4Validator.VALIDATORS["properties"](validator, properties, instance, schema)
    if validator.is_type(instance, "object") and "additionalProperties" not in schema:
        if not schema.get("x-kubernetes-preserve-unknown-fields"):
            for field in sorted(set(instance) - set(properties)):
                yield jsonschema.ValidationError(f"unknown field {field!r}")


def _list_type(validator: Any, list_type: str, instance: Any, schema: dict[str, Any]) -> Iterator[Any]:
    """The API server's check of x-kubernetes-list-type: no two items of a set or map alike."""
    if list_type not in ("map", "set") or not validator.is_type(instance, "array"):
        return
    keys: list[Any] = [json.dumps(item, sort_keys=True) for item in instance]
    if list_type == "map":  # alike by the key fields, defaults filled in
        fields = schema["items"].get("properties", {})
        names = schema.get("x-kubernetes-list-map-keys", [])
        keys = [tuple(item.get(n, fields.get(n, {}).get("default")) for n in names) for item in instance]
    for key in {k for k in keys if keys.count(k) > 1}:
        yield jsonschema.ValidationError(f"duplicate item {key!r} in a list of type {list_type}")


# OpenAPI v3.0 schemas, as in CRDs, are closest to JSON Schema draft 4.
StrictValidator = jsonschema.validators.extend(
    jsonschema.Draft4Validator, {"properties": _strict_properties, "x-kubernetes-list-type": _list_type}
)


def validate_against_crd(resource: dict[str, Any]) -> None:
    schema = SCHEMAS[(resource["apiVersion"], resource["kind"])]["openAPIV3Schema"]
    error = jsonschema.exceptions.best_match(StrictValidator(schema).iter_errors(resource))
    if error is not None:
        raise error


@pytest.mark.parametrize("kind", sorted(RESOURCES))
def test_manifest_is_valid_against_kserves_crd_schema(kind: str) -> None:
    validate_against_crd(RESOURCES[kind])


@pytest.mark.parametrize(
    ("kind", "path", "value", "message"),
    [
        ("ServingRuntime", ["spec", "containers", 0, "ports", 0, "containerPort"], "3000", "is not of type 'integer'"),
        ("ServingRuntime", ["spec", "containers", 0, "readinesProbe"], {}, "unknown field 'readinesProbe'"),
        ("ServingRuntime", ["spec", "containers", 0, "ports", 1, "containerPort"], 3000, "duplicate item"),
        ("InferenceService", ["spec", "predictor", "minReplicas"], "two", "is not of type 'integer'"),
        ("InferenceService", ["spec", "predictor", "scaleMetric"], "latency", "is not one of"),
        ("InferenceService", ["spec", "predictor"], None, "'predictor' is a required property"),
    ],
)
def test_validation_rejects_a_broken_manifest(kind: str, path: list[Any], value: Any, message: str) -> None:
    broken = copy.deepcopy(RESOURCES[kind])
    parent = broken
    for step in path[:-1]:
        parent = parent[step]
    if value is None:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    with pytest.raises(jsonschema.ValidationError, match=re.escape(message)):
        validate_against_crd(broken)


def test_schemas_name_one_kserve_release_and_their_source() -> None:
    sources = [schema["source"] for schema in SCHEMAS.values()]
    assert {s["release"] for s in sources} == {sources[0]["release"]}
    readme = (CRDS / "README.md").read_text()
    for source in sources:
        assert source["url"] == f"{source['repository']}/blob/{source['commit']}/{source['path']}"
        assert source["release"] in readme and source["commit"] in readme and source["path"] in readme


@pytest.mark.parametrize("version", VERSIONS)
def test_predictor_pod_is_valid_against_the_kubernetes_schema(version: str) -> None:
    # The pod KServe builds: the runtime's containers and volumes, the predictor's pod-level fields.
    spec = {k: v for k, v in PREDICTOR.items() if k not in COMPONENT_FIELDS}
    spec |= {"containers": RUNTIME["spec"]["containers"], "volumes": RUNTIME["spec"]["volumes"]}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "tabular-model-server-predictor"}, "spec": spec}
    kubernetes_validate.validate(pod, version, strict=True)


def test_inference_service_uses_the_runtime() -> None:
    assert ISVC_NAME.match(ISVC["metadata"]["name"])
    model = PREDICTOR["model"]
    assert model["runtime"] == RUNTIME["metadata"]["name"]
    # KServe matches the format by name, and by version when the model gives one.
    wanted = model["modelFormat"]
    assert any(
        f["name"] == wanted["name"] and wanted.get("version") in (None, f.get("version"))
        for f in RUNTIME["spec"]["supportedModelFormats"]
    )
    # Never picked for another InferenceService's sklearn model.
    assert all(f["autoSelect"] is False for f in RUNTIME["spec"]["supportedModelFormats"])
    # The models are in the image: nothing to download.
    assert "storageUri" not in model and "storage" not in model


def test_runtime_speaks_the_open_inference_protocol() -> None:
    assert {"v2", "grpc-v2"} <= set(RUNTIME["spec"]["protocolVersions"])
    assert PREDICTOR["model"]["protocolVersion"] == "v2"


def test_deployment_mode_exposes_both_ports() -> None:
    # Knative would allow one container port; Standard mode is a Deployment and a Service.
    assert ISVC["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Standard"


def test_container_ports_match_the_server(project_settings: ServerSettings) -> None:
    ports = [(p["name"], p["containerPort"]) for p in CONTAINER["ports"]]
    # KServe's Service sends port 80 to the first port, and marks ports named *grpc* as h2c.
    assert ports == [("http", 3000), ("grpc", project_settings.grpc_port)]
    env = {e["name"]: e["value"] for e in CONTAINER["env"]}
    assert int(env["MODEL_SERVER_GRPC_PORT"]) == project_settings.grpc_port
    assert env["MODEL_SERVER_GRPC_HOST"] == "0.0.0.0"


def test_probes_use_bentomls_health_endpoints() -> None:
    assert CONTAINER["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert CONTAINER["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "http"}
    assert CONTAINER["startupProbe"]["httpGet"] == {"path": "/livez", "port": "http"}


def test_image_is_what_make_image_builds() -> None:
    script = (ROOT / "container" / "build_image.sh").read_text()
    match = re.search(r'IMAGE_REPOSITORY="\$\{IMAGE_REPOSITORY:-([^}]+)\}"', script)
    assert match, "container/build_image.sh no longer names its default image repository"
    assert CONTAINER["image"] == f"{match.group(1)}:latest"
    kustomization = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    assert [image["name"] for image in kustomization["images"]] == [match.group(1)]
    assert set(kustomization["resources"]) == {p.name for p in MANIFESTS.glob("*.yaml")} - {"kustomization.yaml"}


# The plain Deployment's routing follows a mounted ConfigMap (several replicas, one
# routing); under KServe each revision of the InferenceService is one routing, and
# KServe's canary moves traffic between revisions, so the runtime has no such mount.
ROUTING_ENV = {"MODEL_SERVER_ROUTING_FILE", "MODEL_SERVER_ROUTING_FILE_WRITABLE"}
ROUTING_VOLUME = "routing"


def _without_routing(container: dict[str, Any]) -> dict[str, Any]:
    return container | {
        "env": [e for e in container["env"] if e["name"] not in ROUTING_ENV],
        "volumeMounts": [m for m in container["volumeMounts"] if m["name"] != ROUTING_VOLUME],
    }


def test_pod_is_the_plain_kubernetes_deployments() -> None:
    # One set of env, resources, probes and security settings for both ways to deploy.
    pod = KUBERNETES["Deployment/tabular-model-server"]["spec"]["template"]["spec"]
    assert CONTAINER == _without_routing(pod["containers"][0]) | {"name": KSERVE_CONTAINER}
    assert RUNTIME["spec"]["volumes"] == [v for v in pod["volumes"] if v["name"] != ROUTING_VOLUME]
    assert PREDICTOR["securityContext"] == pod["securityContext"]
    assert PREDICTOR["securityContext"]["runAsNonRoot"] is True
    assert PREDICTOR["terminationGracePeriodSeconds"] == pod["terminationGracePeriodSeconds"]


def test_autoscaling_is_the_plain_kubernetes_hpas() -> None:
    hpa = KUBERNETES["HorizontalPodAutoscaler/tabular-model-server"]["spec"]
    assert ISVC["metadata"]["annotations"]["serving.kserve.io/autoscalerClass"] == "hpa"
    assert (PREDICTOR["minReplicas"], PREDICTOR["maxReplicas"]) == (hpa["minReplicas"], hpa["maxReplicas"])
    [metric] = hpa["metrics"]
    assert PREDICTOR["scaleMetric"] == metric["resource"]["name"] == "cpu"
    assert PREDICTOR["scaleTarget"] == metric["resource"]["target"]["averageUtilization"]


# The shared-store InferenceService (deploy/kserve/shared-store): the store on a PVC.
SHARED_ISVC = _load(MANIFESTS / "shared-store")["InferenceService"]
SHARED_MODEL = SHARED_ISVC["spec"]["predictor"]["model"]
KUBERNETES_SHARED_CLAIM = yaml.safe_load((ROOT / "deploy" / "kubernetes" / "shared-store" / "pvc.yaml").read_text())


def test_shared_store_inference_service_is_valid_against_kserves_crd_schema() -> None:
    validate_against_crd(SHARED_ISVC)
    kustomization = yaml.safe_load((MANIFESTS / "shared-store" / "kustomization.yaml").read_text())
    assert kustomization["resources"] == ["inferenceservice.yaml"]


def test_shared_store_reads_the_fleets_claim_read_write_at_kserves_model_path() -> None:
    claim = KUBERNETES_SHARED_CLAIM["metadata"]["name"]
    assert re.fullmatch(rf"pvc://{claim}/[a-z0-9-]+", SHARED_MODEL["storageUri"])
    # KServe mounts a pvc:// storageUri at /mnt/models, read-only unless told otherwise.
    assert SHARED_ISVC["metadata"]["annotations"]["storage.kserve.io/readonly"] == "false"
    env = {e["name"]: e for e in SHARED_MODEL["env"]}
    assert env["MODEL_SERVER_SHARED_STORE"]["value"] == "/mnt/models"
    assert env["MODEL_SERVER_ADMIN_KEYS"]["valueFrom"]["secretKeyRef"]["name"] == "tabular-model-server-admin-keys"
    assert {n.removeprefix("MODEL_SERVER_").lower() for n in env} - {"admin_keys"} <= set(ServerSettings.model_fields)


def test_shared_store_predictor_is_the_plain_ones_but_for_the_store() -> None:
    plain = {k: v for k, v in PREDICTOR.items() if k != "model"}
    assert {k: v for k, v in SHARED_ISVC["spec"]["predictor"].items() if k != "model"} == plain
    assert {k: v for k, v in SHARED_MODEL.items() if k not in ("storageUri", "env")} == PREDICTOR["model"]
