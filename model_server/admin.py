"""`python -m model_server.admin`: change what serves, on a running server or in a routing file.

Server mode (the default) calls the admin API of a running server (/v1/admin) with an
admin key; the server checks every tag against its model store, loads it in every
worker and answers once all of them serve the change.

File mode (`--routing-file FILE`) edits a routing file, or a Kubernetes ConfigMap
manifest whose data key `routing.yaml` holds one, with no server: for servers that
follow a file they do not write (`routing_file_writable: false`, a mounted ConfigMap).
It makes the same changes as the admin API (model_server/rollout/changes.py), with the
next revision and the routing before kept for rollback, and writes the file back atomically.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import ssl
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import yaml

from model_server.config.routing import Routing, RoutingFile, RoutingFileError
from model_server.config.settings import SettingsError, config_path, load_settings
from model_server.errors import ModelServerError
from model_server.files import write_atomically
from model_server.rollout.changes import changed, promoted, removed, reset, rolled_back, served_model

DEFAULT_URL = "http://127.0.0.1:3000"
URL_ENV = "MODEL_SERVER_URL"
KEY_ENV = "MODEL_SERVER_ADMIN_KEY"
# The data key of a ConfigMap that carries the routing (deploy/kubernetes/routing-configmap.yaml).
CONFIGMAP_KEY = "routing.yaml"


# -- the command line --------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "promote":
        if args.tag and args.tag_option and args.tag != args.tag_option:
            parser.error("promote: give the tag once, as TAG or --tag")
        args.tag = args.tag or args.tag_option
        if not args.tag:
            parser.error("promote: the tag to promote is required (TAG or --tag)")
    try:
        if hasattr(args, "routing_file"):
            return _file_mode(args)
        return _server_mode(args)
    except (ModelServerError, RoutingFileError, SettingsError, CliError) as exc:
        print(f"error: {getattr(exc, 'message', exc)}", file=sys.stderr)
        return 1


class CliError(Exception):
    """A failure to report in one sentence, without a traceback."""


def _parser() -> argparse.ArgumentParser:
    # The options are accepted before or after the command (SUPPRESS keeps the
    # command's parser from overwriting what the main parser read).
    common = argparse.ArgumentParser(add_help=False)
    server = common.add_argument_group("server mode")
    server.add_argument("--url", default=argparse.SUPPRESS, help=f"the server (env {URL_ENV}; default {DEFAULT_URL})")
    server.add_argument(
        "--key",
        default=argparse.SUPPRESS,
        help=f"an admin key of the server (env {KEY_ENV}, which keeps it out of the process list)",
    )
    server.add_argument("--ca-file", default=argparse.SUPPRESS, help="CA certificate(s) to trust for https")
    server.add_argument(
        "--timeout",
        type=float,
        default=argparse.SUPPRESS,
        help="seconds to wait for an answer (default 660: a change waits for every worker, "
        "up to the server's routing_apply_timeout_s)",
    )
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print the whole answer as JSON")
    files = common.add_argument_group("file mode")
    files.add_argument(
        "--routing-file",
        type=Path,
        default=argparse.SUPPRESS,
        help="edit this routing file, or a ConfigMap manifest (kind: ConfigMap) whose data key "
        f"'{CONFIGMAP_KEY}' holds the routing, instead of calling a server",
    )
    files.add_argument(
        "--check-store",
        action="store_true",
        default=argparse.SUPPRESS,
        help="check the tags against the BentoML model store (BENTOML_HOME): present, and one input "
        "schema per name; without it, file mode cannot tell a wrong tag",
    )
    files.add_argument(
        "--config",
        type=Path,
        default=argparse.SUPPRESS,
        help="configuration.yaml whose routing `reset` restores (default: BENTOML_CONFIG, else the project's)",
    )

    parser = argparse.ArgumentParser(
        prog="python -m model_server.admin",
        description="Change which stored tags serve each model name, without a restart.",
        parents=[common],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="By default the commands call a running server's admin API, which checks every tag\n"
        "against its model store. With --routing-file they edit the file and call nothing: the\n"
        "file gets the same change at the next revision, but a tag missing from the model store\n"
        "or with another input schema is only found with --check-store (where this machine has\n"
        "the models), else by the servers: running ones keep serving what they had and log why,\n"
        "and one that starts on such a file stops with that reason.\n"
        "Exit status: 0 done, 1 refused (the reason on stderr), 2 bad usage.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("list", parents=[common], help="what serves each name, as a table")
    setting = commands.add_parser("set", parents=[common], help="serve NAME with these variants (adds NAME if new)")
    setting.add_argument("name")
    setting.add_argument(
        "--variant",
        dest="variants",
        action="append",
        required=True,
        type=_variant,
        metavar="TAG=WEIGHT",
        help="a stored tag and its relative weight, e.g. iris:v3=10 (repeat for each)",
    )
    setting.add_argument("--shadow", metavar="TAG", help="a tag that gets a copy of every request")
    setting.add_argument(
        "--unknown-categories",
        choices=["reject", "accept"],
        help="what a categorical value not seen in training does (default reject); "
        "set replaces the name's whole routing, this included",
    )
    promote = commands.add_parser("promote", parents=[common], help="send all of NAME's traffic to TAG")
    promote.add_argument("name")
    promote.add_argument("tag", nargs="?", help="the tag to promote (or --tag)")
    promote.add_argument("--tag", dest="tag_option", metavar="TAG", help="the tag to promote")
    promote.add_argument(
        "--if-not-worse",
        type=float,
        metavar="MARGIN",
        help="only if live outcomes show TAG not worse than the variant with the most weight by more than "
        "MARGIN (accuracy, or a regressor's mean absolute error) with 95 %% confidence; else refused with "
        "the figures (server mode only)",
    )
    rollback = commands.add_parser("rollback", parents=[common], help="restore NAME's routing before its last change")
    rollback.add_argument("name")
    remove = commands.add_parser("remove", parents=[common], help="stop serving NAME")
    remove.add_argument("name")
    commands.add_parser("reset", parents=[common], help="serve configuration.yaml's routing again")
    push = commands.add_parser(
        "push",
        parents=[common],
        help="add TAG from this machine's model store (BENTOML_HOME) to the server's shared store",
    )
    push.add_argument("tag")
    push.add_argument(
        "--force", action="store_true", help="replace the tag if the shared store has it (refused while it serves)"
    )
    return parser


def _variant(text: str) -> dict[str, Any]:
    tag, separator, weight = text.rpartition("=")
    if not separator or not tag:
        raise argparse.ArgumentTypeError(f"'{text}' is not TAG=WEIGHT, like iris:v3=10")
    try:
        return {"tag": tag, "weight": float(weight)}
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}': the weight '{weight}' is not a number") from None


# -- server mode -------------------------------------------------------------------------


def _server_mode(args: argparse.Namespace) -> int:
    for option in ("check_store", "config"):
        if hasattr(args, option):
            raise CliError(f"--{option.replace('_', '-')} is for file mode (--routing-file) only")
    url = (getattr(args, "url", None) or os.environ.get(URL_ENV) or DEFAULT_URL).rstrip("/")
    key = getattr(args, "key", None) or os.environ.get(KEY_ENV)
    headers = {"authorization": f"Bearer {key}"} if key else {}
    read = getattr(args, "timeout", 660.0)
    timeout = httpx.Timeout(10.0, read=read)
    verify = _trust(getattr(args, "ca_file", None))
    method, path, body = _request(args)
    try:
        with httpx.Client(base_url=url, headers=headers, timeout=timeout, verify=verify) as client:
            if args.command == "push":
                response = _push(client, args.tag, args.force)
            else:
                response = client.request(method, path, json=body)
    except httpx.HTTPError as exc:
        raise CliError(f"cannot reach the server at {url}: {exc}") from None
    answer = _json_or_none(response)
    if response.status_code >= 400:
        message = answer.get("error") if isinstance(answer, dict) else None
        message = message or response.text.strip()[:300] or response.reason_phrase
        hint = f" (give an admin key with --key or {KEY_ENV})" if response.status_code == 401 and not key else ""
        raise CliError(f"{message}{hint} [HTTP {response.status_code}]")
    if answer is None:
        raise CliError(f"{method} {url}{path} answered {response.status_code} with no JSON body")
    if getattr(args, "json", False):
        print(json.dumps(answer, indent=2))
    elif args.command == "list":
        print(render_table(answer))
    elif args.command == "push":
        print(f"{answer['tag']} stored ({answer['bytes']} bytes, sha256 {answer['sha256']}); serve it with `set`")
    else:
        print(render_change(answer))
    if response.status_code == 202:
        behind = ", ".join(
            f"{w['replica'] + ' ' if w.get('replica') else ''}pid {w['pid']} at revision {w['revision']}"
            for w in answer.get("workers_behind", [])
        )
        print(
            f"warning: revision {answer.get('revision')} is written, but some workers did not serve it "
            f"within routing_apply_timeout_s: {behind}",
            file=sys.stderr,
        )
    return 0


def _request(args: argparse.Namespace) -> tuple[str, str, Any]:
    """The admin API call of a command: method, path and JSON body."""
    if args.command == "list":
        return "GET", "/v1/admin/models", None
    if args.command == "reset":
        return "POST", "/v1/admin/reset", None
    if args.command == "push":
        return "POST", "/v1/admin/store", None
    path = f"/v1/admin/models/{quote(args.name, safe='')}"
    if args.command == "set":
        return "PUT", path, _set_body(args)
    if args.command == "promote":
        body: dict[str, Any] = {"tag": args.tag}
        if args.if_not_worse is not None:
            body["if_not_worse"] = args.if_not_worse
        return "POST", f"{path}/promote", body
    if args.command == "rollback":
        return "POST", f"{path}/rollback", None
    return "DELETE", path, None


def _push(client: httpx.Client, tag: str, force: bool) -> httpx.Response:
    """Export `tag` from the local model store (as `bentoml models export` does) and POST it."""
    import tempfile

    import bentoml

    with tempfile.TemporaryDirectory(prefix="model-push-") as folder:
        try:
            path = bentoml.models.export_model(tag, str(Path(folder) / "model.bentomodel"))
        except bentoml.exceptions.NotFound:
            raise CliError(f"'{tag}' is not in this machine's model store (BENTOML_HOME)") from None
        archive = Path(path).read_bytes()
    headers = {"content-type": "application/octet-stream", **({"x-force": "true"} if force else {})}
    return client.post("/v1/admin/store", content=archive, headers=headers)


def _set_body(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {"variants": args.variants, "shadow": args.shadow}
    if args.unknown_categories is not None:
        body["unknown_categories"] = args.unknown_categories
    return body


def _trust(ca_file: str | None) -> ssl.SSLContext | bool:
    if ca_file is None:
        return True
    try:
        return ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise CliError(f"--ca-file '{ca_file}' cannot be used: {exc}") from None


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


# -- file mode ---------------------------------------------------------------------------


def _file_mode(args: argparse.Namespace) -> int:
    for option in ("url", "key", "ca_file", "timeout"):
        if hasattr(args, option):
            raise CliError(f"--{option.replace('_', '-')} is for server mode; --routing-file calls no server")
    if args.command == "push":
        raise CliError("push sends a model to a server's shared store; it has no file mode (--routing-file)")
    if getattr(args, "if_not_worse", None) is not None:
        raise CliError("--if-not-worse needs a running server's outcomes; it is for server mode only")
    document = RoutingDocument(Path(args.routing_file))
    if args.command == "list":
        routing = document.read()
        if routing is None:
            raise CliError(f"'{document.path}' does not exist; `reset` creates it with configuration.yaml's routing")
        view = file_view(routing, document.describe())
        print(json.dumps(view, indent=2) if getattr(args, "json", False) else render_table(view))
        return 0

    name = getattr(args, "name", "*")
    edit = _edit(args, name, "cli:" + _user())
    if getattr(args, "check_store", False):
        edit = _checking_store(edit, None if name == "*" else name)
    routing = document.change(edit, create=args.command == "reset")
    served = routing.models.get(name)
    answer = {
        "revision": routing.revision,
        "model": name,
        "routing": None if served is None else served.model_dump(mode="json", exclude_none=True),
        "routing_file": document.describe(),
    }
    print(json.dumps(answer, indent=2))
    if document.configmap is not None:
        print(
            f"ConfigMap '{document.configmap}' is at revision {routing.revision}; "
            f"roll it out with `kubectl apply -f {document.path}`",
            file=sys.stderr,
        )
    return 0


def _edit(args: argparse.Namespace, name: str, who: str) -> Callable[[Routing], Routing]:
    """The change a command makes to a routing."""
    if args.command == "reset":
        initial = Routing.initial(load_settings(getattr(args, "config", None) or config_path()))
        return lambda routing: reset(routing, initial)
    if args.command == "set":
        proposed = served_model(_set_body(args))  # checked before the file is touched
        return lambda routing: changed(routing, name, proposed, who)
    if args.command == "promote":
        return lambda routing: changed(routing, name, promoted(routing, name, args.tag), who)
    if args.command == "rollback":
        return lambda routing: changed(routing, name, rolled_back(routing, name), who)
    return lambda routing: changed(routing, name, removed(routing, name), who)


class RoutingDocument:
    """A routing file, or a ConfigMap manifest (`kind: ConfigMap`) carrying one under `data.routing.yaml`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.configmap: str | None = None  # the ConfigMap's name, once read

    def read(self) -> Routing | None:
        """The routing, or None when there is no file."""
        loaded = self._load()
        return None if loaded is None else loaded[0]

    def change(self, edit: Callable[[Routing], Routing], create: bool = False) -> Routing:
        """Apply `edit` to the routing and write the result back atomically; only `create`
        makes a missing routing file (from what `edit` makes of an empty routing)."""
        loaded = self._load()
        if loaded is None and not create:
            raise CliError(f"'{self.path}' does not exist; `reset` creates it with configuration.yaml's routing")
        current, text, manifest = loaded or (Routing(revision=0, models={}), "", None)
        if manifest is None:
            # Under the routing file's lock, as a server that writes the same file would.
            return RoutingFile(self.path).update(edit, current)[1]
        routing = edit(current)
        manifest["data"][CONFIGMAP_KEY] = routing.to_text()
        dumped = yaml.dump(manifest, Dumper=_BlockDumper, sort_keys=False)
        write_atomically(self.path, _leading_comments(text) + dumped)
        return routing

    def _load(self) -> tuple[Routing, str, dict[str, Any] | None] | None:
        """The routing, the file's text and the ConfigMap manifest (None for a routing file)."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise CliError(f"'{self.path}' cannot be read: {exc.strerror}") from None
        manifest = self._manifest(text)
        if manifest is None:
            return Routing.from_text(text, str(self.path)), text, None
        return Routing.from_text(manifest["data"][CONFIGMAP_KEY], self.describe()), text, manifest

    def describe(self) -> str:
        if self.configmap is None:
            return str(self.path)
        return f"{self.path} (ConfigMap '{self.configmap}', data key '{CONFIGMAP_KEY}')"

    def _manifest(self, text: str) -> dict[str, Any] | None:
        """The ConfigMap manifest in `text`, or None when `text` is a routing file."""
        try:
            document = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise RoutingFileError(f"'{self.path}' is not one valid YAML document: {exc}") from None
        if not isinstance(document, dict) or "kind" not in document:
            return None
        if document["kind"] != "ConfigMap":
            raise CliError(f"'{self.path}' is a {document['kind']} manifest, not a routing file or a ConfigMap")
        self.configmap = str((document.get("metadata") or {}).get("name", "?"))
        data = document.get("data")
        if not isinstance(data, dict) or not isinstance(data.get(CONFIGMAP_KEY), str):
            raise CliError(f"ConfigMap '{self.configmap}' in '{self.path}' has no data key '{CONFIGMAP_KEY}'")
        return document


def file_view(routing: Routing, where: str) -> dict[str, Any]:
    """What GET /v1/admin/models answers, from a routing alone (no workers, no store)."""
    models = [routing.describe(name) for name in routing.models]
    return {"revision": routing.revision, "routing_file": where, "models": models}


def _checking_store(edit: Callable[[Routing], Routing], name: str | None) -> Callable[[Routing], Routing]:
    """`edit`, refusing a result whose tags (of `name`, or of every name) the model store
    lacks or whose tags of one name take different inputs."""
    from model_server.models import registry  # imports BentoML: only when asked

    def checked(routing: Routing) -> Routing:
        result = edit(routing)
        names = [name] if name is not None else list(result.models)
        for each in names:
            served = result.models.get(each)
            if served is None:
                continue
            try:
                schemas = {tag: registry.stored_schema(tag) for tag in served.tags()}
                registry.check_schemas({each: served}, schemas)
            except (registry.MissingModel, ValueError) as exc:
                raise CliError(f"{exc} (checked against the model store in BENTOML_HOME)") from None
        return result

    return checked


# -- output ------------------------------------------------------------------------------


def render_change(answer: dict[str, Any]) -> str:
    """One line per change: the revision, what the name is now served by, the workers."""
    routing = answer.get("routing")
    if answer.get("model") == "*":
        serves = "configuration.yaml's routing"
    elif routing is None:
        serves = f"{answer.get('model')} is no longer served"
    else:
        shadow = f", shadow {routing['shadow']}" if routing.get("shadow") else ""
        serves = f"{answer.get('model')} -> {_shares(routing['variants'])}{shadow}"
    workers = answer.get("workers", [])
    behind = answer.get("workers_behind", [])
    served_by = f"{len(workers) - len(behind)} of {len(workers)} workers serve it"
    return f"revision {answer.get('revision')}: {serves} ({served_by})"


def render_table(view: dict[str, Any]) -> str:
    """GET /v1/admin/models (or `file_view`) as a table of one line per name."""
    lines = [f"revision {view['revision']}, routing file {view['routing_file']}"]
    if "writable" in view and not view["writable"]:
        lines[0] += " (read-only: change that file, not the server)"
    workers = view.get("workers")
    if workers is not None:
        behind = [w for w in workers if w["revision"] < view["revision"]]
        state = (
            "all serve it"
            if not behind
            else "behind: " + ", ".join(f"pid {w['pid']} at {w['revision']}" for w in behind)
        )
        lines.append(f"{len(workers)} workers, {state}")
    if view.get("routing_file_problem"):
        lines.append(f"problem: {view['routing_file_problem']}")
    header = ["MODEL", "SERVES", "SHADOW", "CHANGED", "BY", "ROLLBACK TO"]
    with_store = any("stored_tags" in m for m in view["models"])
    if with_store:
        header.append("STORED")
    rows = [header]
    for model in view["models"]:
        rollback = model.get("rollback_to")
        changed_in = model["changed_in_revision"]
        row = [
            model["name"],
            _shares(model["variants"]),
            model.get("shadow") or "-",
            f"r{changed_in} {(model.get('changed_at') or '')[:16].replace('T', ' ')}".strip() if changed_in else "-",
            model["changed_by"],
            _shares(rollback["variants"]) if rollback else "-",
        ]
        if with_store:
            row.append(" ".join(t.partition(":")[2] for t in model.get("stored_tags") or []) or "-")
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines.append("")
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    return "\n".join(lines)


def _shares(variants: list[dict[str, Any]]) -> str:
    """`iris:v1 90%, iris:v2 10%`: each variant's share of the traffic without an explicit version."""
    total = sum(float(v["weight"]) for v in variants) or 1.0
    return ", ".join(f"{v['tag']} {100 * float(v['weight']) / total:.3g}%" for v in variants)


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings (the routing inside a ConfigMap) as `|` blocks, readable in a diff."""


def _block_strings(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _block_strings)


def _leading_comments(text: str) -> str:
    """The comment lines a manifest starts with, kept when it is written back."""
    kept = []
    for line in text.splitlines(keepends=True):
        if not line.startswith("#"):
            break
        kept.append(line)
    return "".join(kept)


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
