"""The admin CLI (model_server/admin.py): file mode on a routing file and on a ConfigMap
manifest, in process; and against real servers as a subprocess, as an operator runs it:
one that takes admin changes, and one that follows a read-only, ConfigMap-like mount."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import kubernetes_validate
import pytest
import yaml

from model_server.admin import KEY_ENV, URL_ENV, RoutingDocument, main
from model_server.config.routing import Routing, RoutingFile, RoutingFileError, state_directory
from model_server.config.settings import ServedModel, ServerSettings
from model_server.local_server import ONE_WORKER, RunningServer, start_server

if TYPE_CHECKING:
    from tests.conftest import AdminServerFactory

ROOT = Path(__file__).resolve().parent.parent
CONFIGMAP = ROOT / "deploy" / "kubernetes" / "routing-configmap.yaml"
CONFIGMAP_ROUTING = yaml.safe_load(CONFIGMAP.read_text())["data"]["routing.yaml"]
ROW = [5.1, 3.5, 1.4, 0.2]
KEY = "admin-cli-test-key"


def routing_in(path: Path) -> Routing:
    routing = RoutingDocument(path).read()
    assert routing is not None
    return routing


def iris(*variants: tuple[str, float]) -> ServedModel:
    return ServedModel.model_validate({"variants": [{"tag": t, "weight": w} for t, w in variants]})


CONFIGURED_IRIS = iris(("iris:v1", 90), ("iris:v2", 10))


@pytest.fixture(params=["routing-file", "configmap"])
def routing_path(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """A routing file made by `reset`, or a copy of the ConfigMap manifest; both at revision 1."""
    if request.param == "configmap":
        path = tmp_path / "routing-configmap.yaml"
        shutil.copy(CONFIGMAP, path)
    else:
        path = tmp_path / "routing.yaml"
        assert main(["--routing-file", str(path), "reset", "--config", str(ROOT / "configuration.yaml")]) == 0
    assert routing_in(path).revision == 1
    return path


def run(path: Path, *command: str) -> int:
    return main(["--routing-file", str(path), *command])


def test_set_promote_rollback_remove_grow_the_revision_and_keep_the_previous_routing(
    routing_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert run(routing_path, "promote", "iris", "iris:v2") == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["revision"] == 2 and answer["model"] == "iris"
    assert answer["routing"]["variants"] == [{"tag": "iris:v2", "weight": 100.0}]
    routing = routing_in(routing_path)
    assert routing.models["iris"] == iris(("iris:v2", 100))
    change = routing.changes["iris"]
    assert (change.revision, change.previous, change.by.startswith("cli:")) == (2, CONFIGURED_IRIS, True)

    assert run(routing_path, "set", "iris", "--variant", "iris:v1=50", "--variant", "iris:v2=50") == 0
    routing = routing_in(routing_path)
    assert routing.revision == 3
    assert routing.models["iris"] == iris(("iris:v1", 50), ("iris:v2", 50))
    assert routing.changes["iris"].previous == iris(("iris:v2", 100))

    assert run(routing_path, "rollback", "iris") == 0
    routing = routing_in(routing_path)
    assert (routing.revision, routing.models["iris"]) == (4, iris(("iris:v2", 100)))
    assert run(routing_path, "rollback", "iris") == 0  # twice: back again
    assert routing_in(routing_path).models["iris"] == iris(("iris:v1", 50), ("iris:v2", 50))

    assert (
        run(routing_path, "set", "breast_cancer", "--variant", "breast_cancer:v2=1", "--shadow", "breast_cancer:v1")
        == 0
    )
    assert routing_in(routing_path).models["breast_cancer"] == ServedModel.model_validate(
        {"variants": [{"tag": "breast_cancer:v2", "weight": 1}], "shadow": "breast_cancer:v1"}
    )

    assert run(routing_path, "remove", "diabetes") == 0
    routing = routing_in(routing_path)
    assert routing.revision == 7 and "diabetes" not in routing.models
    assert run(routing_path, "rollback", "diabetes") == 0
    routing = routing_in(routing_path)
    assert routing.revision == 8 and routing.models["diabetes"].tags() == ["diabetes:v1"]

    # The other names were never touched.
    assert routing.models["titanic"] == Routing.from_text(CONFIGMAP_ROUTING, "configmap").models["titanic"]
    assert set(routing.changes) == {"iris", "breast_cancer", "diabetes"}


def test_reset_serves_the_configuration_again(routing_path: Path, project_settings: ServerSettings) -> None:
    assert run(routing_path, "promote", "iris", "iris:v2") == 0
    assert run(routing_path, "reset", "--config", str(ROOT / "configuration.yaml")) == 0
    routing = routing_in(routing_path)
    assert (routing.revision, routing.models, routing.changes) == (3, project_settings.models, {})


BAD_CHANGES = [
    pytest.param(
        ["set", "iris", "--variant", "iris:v1=-1"],
        "variants[0]['weight']: Input should be greater than or equal to 0",
        id="negative-weight",
    ),
    pytest.param(
        ["set", "iris", "--variant", "iris:v1=0", "--variant", "iris:v2=0"],
        "weights must sum to a positive total",
        id="zero-total",
    ),
    pytest.param(
        ["set", "iris", "--variant", "iris:v1=1", "--variant", "iris:v1=2"], "each version may appear once", id="twice"
    ),
    pytest.param(["set", "iris", "--variant", "iris:latest=1"], "must name an explicit version", id="latest"),
    pytest.param(["promote", "iris", "iris"], "must name an explicit version", id="promote-no-version"),
    # Issue 23: the rules of settings.py hold in file mode too (docs/api.md, "Names, tags and weights").
    pytest.param(
        ["set", "iris", "--variant", "iris:v1=inf"], "variants[0]['weight']: Input should be a finite number", id="inf"
    ),
    pytest.param(
        ["set", "iris", "--variant", "iris:v1=1e308", "--variant", "iris:v2=1e308"],
        "variants[0]['weight']: Input should be less than or equal to 1000000",
        id="overflowing-total",
    ),
    pytest.param(["set", "a..b", "--variant", "iris:v1=1"], "name: a model name must be", id="name-dotdot"),
    pytest.param(["set", "i" * 65, "--variant", "iris:v1=1"], "name: a model name must be", id="name-too-long"),
    pytest.param(["promote", "iris", "iris:../../x"], "tag: a tag must be 'name:version'", id="promote-bad-tag"),
    pytest.param(
        ["set", "iris", "--variant", "iris:v1\u200f=1"], "variants[0]['tag']: a tag must be", id="tag-rtl-mark"
    ),
    pytest.param(
        ["set", "iris", "--variant", "iris:v1=1", "--shadow", "iris:v1"],
        "shadow: 'iris:v1' is already a variant of this name; a shadow must be another tag",
        id="shadow-is-a-variant",
    ),
    pytest.param(["promote", "nope", "nope:v1"], "model 'nope' is not served here", id="promote-unknown"),
    pytest.param(["rollback", "iris"], "'iris' has no earlier routing to roll back to", id="nothing-to-roll-back"),
    pytest.param(["remove", "nope"], "model 'nope' is not served here", id="remove-unknown"),
]


@pytest.mark.parametrize(("command", "message"), BAD_CHANGES)
def test_a_bad_change_is_refused_with_the_servers_message_and_the_file_unchanged(
    routing_path: Path, command: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    before = routing_path.read_bytes()
    capsys.readouterr()
    assert run(routing_path, *command) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("error: ") and message in err
    assert routing_path.read_bytes() == before


def test_a_weight_that_is_not_a_number_is_a_usage_error(routing_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = routing_path.read_bytes()
    with pytest.raises(SystemExit) as raised:
        run(routing_path, "set", "iris", "--variant", "iris:v1=ninety")
    assert raised.value.code == 2
    assert "'iris:v1=ninety': the weight 'ninety' is not a number" in capsys.readouterr().err
    assert routing_path.read_bytes() == before


def test_configmap_keeps_its_header_and_stays_a_valid_manifest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "routing-configmap.yaml"
    shutil.copy(CONFIGMAP, path)
    path.chmod(0o644)
    assert run(path, "promote", "iris", "iris:v2") == 0
    assert "kubectl apply -f" in capsys.readouterr().err
    header = [line for line in CONFIGMAP.read_text().splitlines() if line.startswith("#")]
    assert path.read_text().splitlines()[: len(header)] == header
    manifest = yaml.safe_load(path.read_text())
    original = yaml.safe_load(CONFIGMAP.read_text())
    assert {k: v for k, v in manifest.items() if k != "data"} == {k: v for k, v in original.items() if k != "data"}
    assert list(manifest["data"]) == ["routing.yaml"]
    kubernetes_validate.validate(manifest, kubernetes_validate.latest_version(), strict=True)
    # The routing stays a readable block in the manifest, so a diff shows what changed.
    assert "  routing.yaml: |\n    revision: 2\n" in path.read_text()
    assert path.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left


def test_a_missing_file_is_made_only_by_reset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "typo.yaml"
    assert run(path, "promote", "iris", "iris:v2") == 1
    assert "does not exist; `reset` creates it" in capsys.readouterr().err
    assert not path.exists()


def test_other_manifests_and_broken_files_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    deployment = tmp_path / "deployment.yaml"
    shutil.copy(ROOT / "deploy" / "kubernetes" / "deployment.yaml", deployment)
    assert run(deployment, "promote", "iris", "iris:v2") == 1
    assert "is a Deployment manifest, not a routing file or a ConfigMap" in capsys.readouterr().err
    broken = tmp_path / "routing.yaml"
    broken.write_text("revision: 1\nmodels:\n  iris:\n    variants: []\n")
    assert run(broken, "promote", "iris", "iris:v2") == 1
    assert "'models.iris.variants' is invalid" in capsys.readouterr().err


def test_a_deleted_routing_file_leaves_its_last_routing_and_no_revision_is_used_twice(
    tmp_path: Path, project_settings: ServerSettings
) -> None:
    """Issue 23, item 10: every worker that starts after the file is gone serves what the
    file last held, and the next change writes a revision above every one it held."""
    path = tmp_path / "routing.yaml"
    config = str(ROOT / "configuration.yaml")
    assert run(path, "reset", "--config", config) == 0
    assert run(path, "promote", "iris", "iris:v2") == 0
    assert run(path, "set", "iris", "--variant", "iris:v1=50", "--variant", "iris:v2=50") == 0
    last = routing_in(path)
    assert last.revision == 3
    path.unlink()

    starting = RoutingFile(path)  # what a worker that starts now reads
    state = starting.state()
    assert (state.routing, state.missing) == (last, True)
    assert state.problem is not None and "is missing, but it existed (up to revision 3)" in state.problem
    assert starting.problem == state.problem  # what GET /v1/admin/models shows
    assert starting.serving(Routing.initial(project_settings)) == last

    assert run(path, "reset", "--config", config) == 0  # writes the file again, above revision 3
    restored = routing_in(path)
    assert (restored.revision, restored.models) == (4, project_settings.models)
    assert RoutingFile(path).state().problem is None

    # A file set back by hand (a lower revision) is served, but no change reuses a revision.
    RoutingFile(path).replace(last.model_copy(update={"revision": 1}))
    assert run(path, "promote", "iris", "iris:v2") == 0
    promoted = routing_in(path)
    assert promoted.revision == 5 and promoted.changes["iris"].revision == 5


def test_an_invalid_routing_file_leaves_the_last_good_routing(tmp_path: Path, project_settings: ServerSettings) -> None:
    """Issue 23, item 1: a weight that is not finite, written into the file by hand."""
    initial = Routing.initial(project_settings)
    fresh = tmp_path / "fresh.yaml"
    fresh.write_text(initial.to_text().replace("weight: 90.0", "weight: .inf"))
    with pytest.raises(RoutingFileError, match=r"'models.iris.variants.0.weight' is invalid: Input should be a finite"):
        RoutingFile(fresh).serving(initial)  # never held a good routing: start-up stops

    path = tmp_path / "routing.yaml"
    assert run(path, "reset", "--config", str(ROOT / "configuration.yaml")) == 0
    good = routing_in(path)
    for bad in (".inf", "1e309", "'Infinity'", ".nan", "-1"):
        path.write_text(good.to_text().replace("weight: 90.0", f"weight: {bad}"))
        state = RoutingFile(path).state()
        assert state.routing == good and not state.missing, bad
        assert state.problem is not None and "'models.iris.variants.0.weight' is invalid" in state.problem
        assert "Serving the last good routing it held (revision 1)" in state.problem
        assert RoutingFile(path).serving(initial) == good


def test_a_read_only_routing_file_keeps_its_last_good_routing_in_the_status_directory(
    tmp_path: Path, project_settings: ServerSettings
) -> None:
    """A mounted ConfigMap's directory cannot be written: the workers keep it beside their reports."""
    path = tmp_path / "routing.yaml"
    RoutingFile(path).replace(Routing.initial(project_settings).model_copy(update={"revision": 7}))
    follower = RoutingFile(path, writable=False)
    try:
        follower.remember()  # what a worker does once it serves the file
        assert (state_directory(path) / "last-good-routing").exists()
        (tmp_path / ".routing.yaml.last-good").unlink()  # only the read-only memory is left
        path.unlink()
        state = RoutingFile(path, writable=False).state()
        assert state.missing and state.routing is not None and state.routing.revision == 7
    finally:
        shutil.rmtree(state_directory(path), ignore_errors=True)


def test_check_store_refuses_a_tag_the_store_lacks(routing_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = routing_path.read_bytes()
    assert run(routing_path, "--check-store", "promote", "iris", "iris:v404") == 1
    assert "'iris:v404' is not in the model store" in capsys.readouterr().err
    assert routing_path.read_bytes() == before


def test_list_shows_each_name_and_what_rollback_restores(
    routing_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(routing_path, "promote", "iris", "iris:v2") == 0
    capsys.readouterr()
    assert run(routing_path, "list") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"revision 2, routing file {routing_path}")
    rows = {line.split()[0]: line for line in lines[2:]}
    assert rows["MODEL"].split() == ["MODEL", "SERVES", "SHADOW", "CHANGED", "BY", "ROLLBACK", "TO"]
    assert "iris:v2 100%" in rows["iris"] and rows["iris"].endswith("iris:v1 90%, iris:v2 10%")
    assert rows["breast_cancer"].split()[:4] == ["breast_cancer", "breast_cancer:v1", "100%", "breast_cancer:v2"]


def test_modes_do_not_mix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--routing-file", str(tmp_path / "r.yaml"), "--key", "k", "list"]) == 1
    assert "--key is for server mode" in capsys.readouterr().err
    assert main(["--url", "http://127.0.0.1:9", "--check-store", "list"]) == 1
    assert "--check-store is for file mode" in capsys.readouterr().err


# -- against real servers --------------------------------------------------------------


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m model_server.admin ...` as an operator runs it."""
    clean = {k: v for k, v in os.environ.items() if k not in (URL_ENV, KEY_ENV)}
    return subprocess.run(
        [sys.executable, "-m", "model_server.admin", *args],
        cwd=ROOT,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def predict_iris(server: RunningServer) -> httpx.Response:
    response = httpx.post(f"{server.url}/v1/models/iris/predict", json={"instances": [ROW]}, timeout=30)
    assert response.status_code == 200, response.text
    return response


def view(server: RunningServer) -> dict[str, Any]:
    response = httpx.get(f"{server.url}/v1/admin/models", headers={"authorization": f"Bearer {KEY}"}, timeout=30)
    assert response.status_code == 200, response.text
    return dict(response.json())


def wait_for_revision(server: RunningServer, revision: int, timeout: float = 30, count: int = 2) -> dict[str, Any]:
    """The admin view once all `count` workers serve `revision`."""
    deadline = time.monotonic() + timeout
    while True:
        current = view(server)
        workers = current["workers"]
        if current["revision"] == revision and len(workers) == count and {w["revision"] for w in workers} == {revision}:
            return current
        assert time.monotonic() < deadline, f"workers still at {workers} after {timeout} s"
        time.sleep(0.1)


def project(manifest: Path, mount: Path, version: int) -> None:
    """What the kubelet does with a ConfigMap mounted as a directory: each data key is a
    symlink through `..data`, which is swapped in one rename to a new directory."""
    data = yaml.safe_load(manifest.read_text())["data"]
    target = mount / f"..version_{version}"
    target.mkdir()
    for key, value in data.items():
        (target / key).write_text(value)
    (mount / "..data_tmp").symlink_to(target.name)
    os.replace(mount / "..data_tmp", mount / "..data")
    for key in data:
        if not (mount / key).is_symlink():
            (mount / key).symlink_to(f"..data/{key}")


@pytest.fixture
def admin_server(admin_server_factory: AdminServerFactory) -> Iterator[RunningServer]:
    with admin_server_factory(KEY) as running:
        yield running


@pytest.mark.integration
def test_cli_promotes_lists_and_rolls_back_on_a_running_server(admin_server: RunningServer) -> None:
    url = admin_server.url
    # Both workers have loaded (a change made while one still loads would wait for it).
    wait_for_revision(admin_server, 0)
    promoted = cli("--url", url, "--key", KEY, "promote", "iris", "iris:v2")
    assert promoted.returncode == 0, promoted.stderr
    assert promoted.stdout == "revision 1: iris -> iris:v2 100% (2 of 2 workers serve it)\n"
    for _ in range(20):
        response = predict_iris(admin_server)
        assert (response.headers["x-model-tag"], response.json()["tag"]) == ("iris:v2", "iris:v2")

    listed = cli("list", env={URL_ENV: url, KEY_ENV: KEY})  # the same, from the environment
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].startswith("revision 1, routing file ") and lines[0].endswith("routing.yaml")
    assert lines[1] == "2 workers, all serve it"
    rows = {line.split()[0]: line for line in lines[3:]}
    assert rows["iris"].split()[:3] == ["iris", "iris:v2", "100%"]
    assert "r1 " in rows["iris"] and " key:" in rows["iris"] and KEY not in listed.stdout
    assert "iris:v1 90%, iris:v2 10%" in rows["iris"]
    assert {"v1", "v2"} <= set(rows["iris"].rpartition("iris:v2 10%")[2].split())  # stored tags
    assert rows["titanic"].split()[1:5] == ["titanic:v1", "100%", "-", "-"]

    rolled_back = cli("--url", url, "--key", KEY, "rollback", "iris", "--json")
    assert rolled_back.returncode == 0, rolled_back.stderr
    answer = json.loads(rolled_back.stdout)
    assert (answer["revision"], answer["model"], answer["workers_behind"]) == (2, "iris", [])
    assert [w["revision"] for w in answer["workers"]] == [2, 2]
    assert answer["routing"]["variants"] == [{"tag": "iris:v1", "weight": 90.0}, {"tag": "iris:v2", "weight": 10.0}]
    assert predict_iris(admin_server).headers["x-routing-revision"] == "2"

    for args in (["list"], ["promote", "iris", "iris:v2"]):
        refused = cli("--url", url, "--key", "wrong-key", *args)
        assert refused.returncode == 1 and refused.stdout == ""
        assert refused.stderr.strip() == (
            "error: unauthorized: send 'Authorization: Bearer <key>' with a valid admin key [HTTP 401]"
        )
    unknown = cli("--url", url, "--key", KEY, "promote", "iris", "iris:v404")
    assert unknown.returncode == 1 and "'iris:v404' is not in the model store" in unknown.stderr
    assert "[HTTP 400]" in unknown.stderr
    assert view(admin_server)["revision"] == 2


@pytest.mark.integration
def test_read_only_server_refuses_admin_writes_and_follows_the_file(
    trained_default_models: list[str], tmp_path: Path
) -> None:
    manifest = tmp_path / "routing-configmap.yaml"
    shutil.copy(CONFIGMAP, manifest)
    mount = tmp_path / "mount"
    mount.mkdir()
    project(manifest, mount, 1)
    env = {
        "MODEL_SERVER_ADMIN_KEYS": KEY,
        "MODEL_SERVER_ROUTING_FILE": str(mount / "routing.yaml"),
        "MODEL_SERVER_ROUTING_FILE_WRITABLE": "false",
        **ONE_WORKER,  # what every worker of a server does with the file is tests/test_rollout.py's
    }
    server = start_server(ROOT / "configuration.yaml", env)
    try:
        # It serves the ConfigMap's routing, as it stands in the repository.
        wait_for_revision(server, 1, count=1)
        assert predict_iris(server).headers["x-routing-revision"] == "1"
        refused = cli("--url", server.url, "--key", KEY, "promote", "iris", "iris:v2")
        assert refused.returncode == 1
        assert "managed outside it" in refused.stderr and "[HTTP 409]" in refused.stderr
        listed = cli("--url", server.url, "--key", KEY, "list")
        assert "(read-only: change that file, not the server)" in listed.stdout.splitlines()[0]

        # The Kubernetes way: edit the manifest, apply it, and the kubelet swaps the mount.
        edited = cli("--routing-file", str(manifest), "--check-store", "promote", "iris", "iris:v2")
        assert edited.returncode == 0, edited.stderr
        project(manifest, mount, 2)
        iris_now = next(m for m in wait_for_revision(server, 2, count=1)["models"] if m["name"] == "iris")
        assert iris_now["variants"] == [{"tag": "iris:v2", "weight": 100.0}]
        for _ in range(20):
            response = predict_iris(server)
            assert (response.headers["x-model-tag"], response.headers["x-routing-revision"]) == ("iris:v2", "2")

        # Or the file itself, where the server follows a plain file.
        edited = cli("--routing-file", str(mount / "routing.yaml"), "rollback", "iris")
        assert edited.returncode == 0, edited.stderr
        iris_now = next(m for m in wait_for_revision(server, 3, count=1)["models"] if m["name"] == "iris")
        assert iris_now["variants"] == [{"tag": "iris:v1", "weight": 90.0}, {"tag": "iris:v2", "weight": 10.0}]
        assert predict_iris(server).headers["x-routing-revision"] == "3"
    finally:
        server.stop()
