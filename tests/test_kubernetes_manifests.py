"""deploy/kubernetes: every manifest is valid against the Kubernetes API schemas (bundled
with kubernetes-validate, so this runs offline), and the pieces fit together and with
the server (ports, probes, selectors, autoscaling)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from model_server.config.routing import Routing
from model_server.config.settings import ServerSettings

MANIFESTS = Path(__file__).resolve().parent.parent / "deploy" / "kubernetes"
# The oldest Kubernetes release the manifests must work on, and the newest bundled.
VERSIONS = ["1.29.0", kubernetes_validate.latest_version()]


def _resources() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(MANIFESTS.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for document in yaml.safe_load_all(path.read_text()):
            if document:
                found[f"{document['kind']}/{document['metadata']['name']}"] = document
    return found


RESOURCES = _resources()
DEPLOYMENT = RESOURCES["Deployment/tabular-model-server"]
SERVICE = RESOURCES["Service/tabular-model-server"]
HPA = RESOURCES["HorizontalPodAutoscaler/tabular-model-server"]
ROUTING = RESOURCES["ConfigMap/tabular-model-server-routing"]
CONTAINER = DEPLOYMENT["spec"]["template"]["spec"]["containers"][0]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("name", sorted(RESOURCES))
def test_manifest_is_valid_against_the_kubernetes_schema(name: str, version: str) -> None:
    # strict: unknown fields (typos such as `readinesProbe`) are errors too.
    kubernetes_validate.validate(RESOURCES[name], version, strict=True)


def test_validator_rejects_a_broken_manifest() -> None:
    broken = yaml.safe_load(yaml.safe_dump(DEPLOYMENT))
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSIONS[-1], strict=True)


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    files = {p.name for p in MANIFESTS.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files
    assert {image["name"] for image in kustomization["images"]} == {CONTAINER["image"].split(":")[0]}


def test_container_ports_match_the_server(project_settings: ServerSettings) -> None:
    ports = {p["name"]: p["containerPort"] for p in CONTAINER["ports"]}
    assert ports == {"http": 3000, "grpc": project_settings.grpc_port}
    env = {e["name"]: e["value"] for e in CONTAINER["env"]}
    assert env["OMP_NUM_THREADS"] == "1"
    assert int(env.get("MODEL_SERVER_GRPC_PORT", project_settings.grpc_port)) == ports["grpc"]


def test_probes_use_bentomls_health_endpoints() -> None:
    assert CONTAINER["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert CONTAINER["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "http"}


def test_resources_are_requested_and_limited() -> None:
    resources = CONTAINER["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"]) and {"cpu", "memory"} <= set(resources["limits"])


def test_pod_runs_as_the_images_non_root_user() -> None:
    security = DEPLOYMENT["spec"]["template"]["spec"]["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] == 1034  # BentoML's `bentoml` user


def test_root_filesystem_is_read_only_with_a_writable_tmp() -> None:
    """The image declares /tmp as its only writable path (container/Dockerfile.template)."""
    assert CONTAINER["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"]: m["name"] for m in CONTAINER["volumeMounts"]}
    volumes = {v["name"]: v for v in DEPLOYMENT["spec"]["template"]["spec"]["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]


def test_service_selects_the_pods_and_names_both_ports() -> None:
    pod_labels = DEPLOYMENT["spec"]["template"]["metadata"]["labels"]
    assert SERVICE["spec"]["selector"].items() <= pod_labels.items()
    assert DEPLOYMENT["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    ports = {p["name"]: (p["port"], p["targetPort"]) for p in SERVICE["spec"]["ports"]}
    assert ports == {"http": (3000, "http"), "grpc": (3001, "grpc")}


def test_autoscaler_scales_the_deployment_on_cpu() -> None:
    assert HPA["apiVersion"] == "autoscaling/v2"
    target = HPA["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", DEPLOYMENT["metadata"]["name"])
    assert [m["resource"]["name"] for m in HPA["spec"]["metrics"]] == ["cpu"]
    assert 1 <= HPA["spec"]["minReplicas"] <= HPA["spec"]["maxReplicas"]


def test_routing_configmap_serves_the_configured_models(project_settings: ServerSettings) -> None:
    """The image holds configuration.yaml's tags; the ConfigMap starts from that routing."""
    routing = Routing.from_text(ROUTING["data"]["routing.yaml"], "routing-configmap.yaml")
    assert routing.revision == 1
    assert routing.models == project_settings.models
    assert routing.tags() == project_settings.tags()


def test_routing_configmap_is_mounted_as_a_directory_and_followed_read_only() -> None:
    volumes = {v["name"]: v for v in DEPLOYMENT["spec"]["template"]["spec"]["volumes"]}
    [mount] = [m for m in CONTAINER["volumeMounts"] if volumes[m["name"]].get("configMap")]
    assert volumes[mount["name"]]["configMap"]["name"] == ROUTING["metadata"]["name"]
    # A subPath mount is a copy made at start: it never receives the ConfigMap's updates.
    assert "subPath" not in mount and "subPathExpr" not in mount
    assert mount["readOnly"] is True
    # The kubelet projects each data key as a file of that name in the mounted directory.
    assert "items" not in volumes[mount["name"]]["configMap"]
    env = {e["name"]: e["value"] for e in CONTAINER["env"]}
    assert Path(env["MODEL_SERVER_ROUTING_FILE"]) == Path(mount["mountPath"]) / "routing.yaml"
    assert env["MODEL_SERVER_ROUTING_FILE_WRITABLE"] == "false"


# The shared-store variant (deploy/kubernetes/shared-store): a fleet on one ReadWriteMany volume.
SHARED_DIR = MANIFESTS / "shared-store"
SHARED: dict[str, dict[str, Any]] = {}
for _path in sorted(SHARED_DIR.glob("*.yaml")):
    if _path.name != "kustomization.yaml":
        for _document in yaml.safe_load_all(_path.read_text()):
            SHARED[f"{_document['kind']}/{_document['metadata']['name']}"] = _document
SHARED_DEPLOYMENT = SHARED["Deployment/tabular-model-server"]
SHARED_POD = SHARED_DEPLOYMENT["spec"]["template"]["spec"]
SHARED_CONTAINER = SHARED_POD["containers"][0]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("name", sorted(SHARED))
def test_shared_store_manifest_is_valid_against_the_kubernetes_schema(name: str, version: str) -> None:
    kubernetes_validate.validate(SHARED[name], version, strict=True)


def test_shared_store_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((SHARED_DIR / "kustomization.yaml").read_text())
    assert set(kustomization["resources"]) == {p.name for p in SHARED_DIR.glob("*.yaml")} - {"kustomization.yaml"}


def test_every_replica_mounts_one_read_write_many_store_where_the_setting_points() -> None:
    [claim] = [r for r in SHARED.values() if r["kind"] == "PersistentVolumeClaim"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert SHARED_DEPLOYMENT["spec"]["replicas"] >= 2
    volumes = {v["name"]: v for v in SHARED_POD["volumes"]}
    [mount] = [m for m in SHARED_CONTAINER["volumeMounts"] if "persistentVolumeClaim" in volumes[m["name"]]]
    assert volumes[mount["name"]]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert not mount.get("readOnly") and "subPath" not in mount
    env = {e["name"]: e for e in SHARED_CONTAINER["env"]}
    assert env["MODEL_SERVER_SHARED_STORE"]["value"] == mount["mountPath"]
    assert env["MODEL_SERVER_REPLICA_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    # Admin writes are allowed: no read-only routing file, no ConfigMap.
    assert "MODEL_SERVER_ROUTING_FILE_WRITABLE" not in env and "MODEL_SERVER_ROUTING_FILE" not in env
    assert not any("configMap" in v for v in volumes.values())


def test_shared_store_settings_are_server_settings_and_the_admin_key_comes_from_a_secret() -> None:
    env = {e["name"]: e for e in SHARED_CONTAINER["env"] if e["name"].startswith("MODEL_SERVER_")}
    fields = set(ServerSettings.model_fields)
    assert {name.removeprefix("MODEL_SERVER_").lower() for name in env} <= fields
    volumes = {v["name"]: v for v in SHARED_POD["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in SHARED_CONTAINER["volumeMounts"]}
    keys_file = Path(env["MODEL_SERVER_ADMIN_KEYS_FILE"]["value"])
    assert "secret" in volumes[mounts[str(keys_file.parent)]]


def test_the_admin_service_stays_inside_the_cluster() -> None:
    admin = SHARED["Service/tabular-model-server-admin"]
    assert admin["spec"]["type"] == "ClusterIP"
    labels = SHARED_DEPLOYMENT["spec"]["template"]["metadata"]["labels"]
    assert admin["spec"]["selector"].items() <= labels.items()


def test_shared_store_pod_is_the_configmap_variants_but_for_routing_and_store() -> None:
    """One set of probes, resources and security settings for both ways to run a fleet."""
    for key in ("readinessProbe", "livenessProbe", "startupProbe", "resources", "securityContext", "ports", "image"):
        assert SHARED_CONTAINER[key] == CONTAINER[key], key
    assert SHARED_POD["securityContext"] == DEPLOYMENT["spec"]["template"]["spec"]["securityContext"]
