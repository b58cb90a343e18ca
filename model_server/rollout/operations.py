"""Changing what serves on a running server: the operations behind the admin API, the
OIP model repository extension (REST and gRPC) and the admin CLI.

Every change goes the same way:
  1. refused with 409 when the routing file is managed elsewhere (a mounted ConfigMap);
  2. the name and its proposed routing are validated: the name, tags, weights and shadow
     follow the rules of settings.py (the same as configuration.yaml's and the routing
     file's: finite weights from 0 to 1,000,000 with a positive sum, a shadow that is not
     a variant), and the tags are in the model store and share the input schema of the
     name's other tags (400s naming the field and the rule);
  3. the tags it adds are loaded in this worker and warmed up, off the request path
     (a failed load is a 422 and changes nothing);
  4. the change is written to the routing file with the next revision, under its lock;
  5. this worker swaps to it, the others follow the file (`follow`), and the call
     waits until every worker reports the revision, or answers 202 naming those behind;
  6. one JSON audit line says who, before, after and the revision.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from model_server.config.auth import KeyFingerprints
from model_server.config.routing import Routing, RoutingFile, RoutingFileError, WorkerStatus, replicas_of
from model_server.config.settings import ServedModel, ServerSettings
from model_server.core.server import ModelServer
from model_server.errors import (
    InvalidInput,
    ModelLoadFailed,
    ModelNotFound,
    PromotionRefused,
    RoutingChanged,
    RoutingReadOnly,
    RoutingUnavailable,
    StoreConflict,
    problem,
)
from model_server.models import registry
from model_server.models.registry import MissingModel
from model_server.monitoring import outcome_report, quality
from model_server.rollout.changes import (
    changed,
    margin_field,
    model_name,
    promoted,
    removed,
    reset,
    rolled_back,
    served_model,
    tag_field,
)
from model_server.rollout.store_push import Pushed, store_archive

log = logging.getLogger(__name__)
AUDIT = logging.getLogger("model_server.audit")

# How often each worker looks at the routing file (one stat call), and the longest wait
# before it tries again to serve a routing it failed to serve.
FOLLOW_INTERVAL_S = 0.2
MAX_RETRY_DELAY_S = 30.0


@dataclass
class ChangeResult:
    """What an admin change did: the new revision, the name's routing, and the workers."""

    revision: int
    name: str
    routing: ServedModel | None
    workers: list[dict[str, Any]]
    behind: list[dict[str, Any]] = field(default_factory=list)

    @property
    def status(self) -> int:
        return 202 if self.behind else 200

    def to_json(self) -> dict[str, Any]:
        return {
            "revision": self.revision,
            "model": self.name,
            "routing": None if self.routing is None else self.routing.model_dump(mode="json", exclude_none=True),
            "workers": self.workers,
            "workers_behind": self.behind,
            "replicas": replicas_of(self.workers),
        }


class Rollout:
    """The admin operations of one worker, over its ModelServer and the shared routing file."""

    def __init__(
        self,
        get_server: Callable[[], ModelServer],
        settings: ServerSettings,
        routing_file: RoutingFile,
        status: WorkerStatus,
        fingerprints: KeyFingerprints | None = None,
    ) -> None:
        self._get_server = get_server
        self.settings = settings
        self.file = routing_file
        self.status = status
        self.fingerprints = fingerprints

    def who(self, credentials: str | None) -> str:
        """Who makes a change, as the audit line and the routing file say it: the admin
        key's fingerprint (auth.KeyFingerprints), never the key."""
        if self.fingerprints is None:  # no admin key configured: the admin routes answer 403
            return "anonymous"
        return self.fingerprints.of(credentials)

    # -- reading ---------------------------------------------------------------------

    def view(self) -> dict[str, Any]:
        """Every served name with its variants, shadow and last change, and the tags in
        the store that could serve it; the revision and what each worker serves."""
        routing = self._get_server().routing
        models = [
            {**routing.describe(name), "stored_tags": self._candidates(name, served)}
            for name, served in routing.models.items()
        ]
        workers = self.status.workers()
        return {
            "revision": routing.revision,
            "routing_file": str(self.file.path),
            "writable": self.file.writable,
            # Why the workers do not serve the file's own routing (it is missing after one
            # existed, or invalid), as this worker last read it; None when they do.
            "routing_file_problem": self.file.problem,
            "workers": workers,
            "replicas": replicas_of(workers),
            "models": models,
        }

    def index(self, ready_only: bool = False) -> list[dict[str, str]]:
        """The OIP repository index: every served name (READY) and every other name in the
        model store (UNAVAILABLE), with the versions that serve it."""
        routing = self._get_server().routing
        entries = [
            {"name": name, "version": ",".join(v.version for v in served.variants), "state": "READY", "reason": ""}
            for name, served in routing.models.items()
        ]
        if not ready_only:
            for name in registry.stored_names():
                if name not in routing.models:
                    entries.append({"name": name, "version": "", "state": "UNAVAILABLE", "reason": "not served"})
        return entries

    # -- the shared store -------------------------------------------------------------

    async def push(self, archive: bytes, force: bool, who: str) -> Pushed:
        """Add the model in `archive` (`bentoml models export`) to the shared store
        (model_server/rollout/store_push.py); served once a routing change names it."""
        store = self.settings.model_store_path()
        if store is None:
            raise StoreConflict(
                "this server has no shared store (shared_store) to push to; add models with `python -m training` "
                "where the server's model store is",
                "no_shared_store",
            )
        serving = set((await self._current()).tags()) | set(self._get_server().routing.tags())
        pushed = await asyncio.to_thread(store_archive, archive, store, serving, force)
        AUDIT.info(
            "model pushed",
            extra={
                "fields": {
                    "action": "push",
                    "tag": pushed.tag,
                    "sha256": pushed.sha256,
                    "bytes": pushed.size,
                    "replaced": pushed.replaced,
                    "by": who,
                    "replica": self.status.replica,
                    "worker": worker_name(),
                }
            },
        )
        return pushed

    # -- changing --------------------------------------------------------------------

    async def set(self, name: str, body: Any, who: str) -> ChangeResult:
        """Serve `name` with the variants and shadow of `body` (adds the name if new)."""
        self._check_writable()
        model_name(name)
        proposed = served_model(body)
        return await self._change("set", name, who, lambda routing: proposed)

    async def remove(self, name: str, who: str) -> ChangeResult:
        """Stop serving `name`; its tags are unloaded once their requests are done."""
        model_name(name)
        return await self._change("remove", name, who, lambda routing: removed(routing, name))

    async def promote(self, name: str, body: Any, who: str) -> ChangeResult:
        """Send all of `name`'s traffic to one tag; the routing before is kept for rollback."""
        self._check_writable()
        model_name(name)
        tag = tag_field(body)
        margin = margin_field(body)
        if margin is not None:
            await asyncio.to_thread(self.guard, name, tag, margin)
        return await self._change("promote", name, who, lambda routing: promoted(routing, name, tag))

    def guard(self, name: str, tag: str, margin: float) -> dict[str, Any]:
        """The verdict that lets `tag` take all of `name`'s traffic: on the primary metric
        (accuracy, or the mean absolute error of a regressor), the candidate against the
        variant with the most weight, not worse by more than `margin` with 95 % confidence.
        PromotionRefused (409, with the figures) when it is worse or undetermined."""
        view = self._get_server().outcome_view(name)
        variants = view.tags[: view.variants]
        candidate = next((entry for entry in variants if entry.tag == tag), None)
        if candidate is None:
            message = f"'{tag}' has no outcomes to judge it by: it is not a variant of '{name}' in this window"
            raise PromotionRefused(message, "undetermined", {"b": tag})
        served = self._get_server().routing.models[name]
        weights = {v.tag: v.weight for v in served.variants}
        others = sorted((e for e in variants if e.tag != tag), key=lambda e: -weights[e.tag])
        if not others:
            raise PromotionRefused(f"'{tag}' is the only variant of '{name}': nothing to compare", "undetermined", {})
        metric = outcome_report.primary_metric(candidate.classes)
        verdict = outcome_report.verdict(view, others[0].tag, tag, metric, margin)
        found, why = quality.not_worse(verdict, margin)
        if found != "not_worse":
            raise PromotionRefused(why, found, verdict)
        log.info("guarded promotion of %s: %s", tag, why)
        return verdict

    async def rollback(self, name: str, who: str) -> ChangeResult:
        """Restore `name`'s routing from before its last change (twice: back again)."""
        model_name(name)
        return await self._change("rollback", name, who, lambda routing: rolled_back(routing, name))

    async def reset(self, who: str) -> ChangeResult:
        """Serve configuration.yaml's routing again, as a new revision."""
        self._check_writable()
        initial = Routing.initial(self.settings)
        server = self._get_server()
        tags = initial.tags()
        try:
            for tag in tags:
                await self._prepare(server, tag, ["models"])
            before, routing = await self._write(lambda current: reset(current, initial))
        except BaseException:
            server.discard_prepared(tags)
            raise
        return await self._finish("reset", "*", who, before.models, routing)

    async def load(self, name: str, config: Any, who: str) -> ChangeResult:
        """The repository extension's load: serve `name` with `config` (the PUT body), else
        as configuration.yaml routes it, else with its newest stored tag."""
        model_name(name)
        if config is not None:
            return await self.set(name, config, who)
        served = self._get_server().routing.models.get(name)
        if served is not None:
            return await self.set(name, served.model_dump(), who)
        configured = self.settings.models.get(name)
        if configured is not None:
            return await self.set(name, configured.model_dump(), who)
        versions = registry.stored_versions(name)
        if not versions:
            raise ModelNotFound(name)
        return await self.set(name, {"variants": [{"tag": versions[-1], "weight": 100}]}, who)

    async def _change(
        self, action: str, name: str, who: str, propose: Callable[[Routing], ServedModel | None]
    ) -> ChangeResult:
        """Check, prepare, write and apply a change of one name's routing, proposed by
        `propose` from the routing in force (the file's, which a worker that lags behind
        may not serve yet)."""
        self._check_writable()
        server = self._get_server()
        before = await self._current()
        proposed = propose(before)
        if proposed == before.models.get(name):
            # Nothing to change (a repository load of a name already served as it is):
            # no new revision, and the rollback target stays what it was.
            return ChangeResult(before.revision, name, proposed, self.status.workers())
        tags = proposed.tags() if proposed is not None else []
        try:
            if proposed is not None:
                self._check_schemas(name, proposed, before)
                for index, tag in enumerate(tags):
                    await self._prepare(server, tag, _tag_location(proposed, index))

            def change(current: Routing) -> Routing:
                # Under the lock: the file may have changed since `before` was read.
                if propose(current) != proposed:
                    raise RoutingChanged(name)
                return changed(current, name, proposed, who)

            written_before, routing = await self._write(change)
        except BaseException:
            server.discard_prepared(tags)
            raise
        return await self._finish(action, name, who, written_before.models, routing)

    async def _current(self) -> Routing:
        """The routing in force: the file's (or the last good one it held, when it is
        missing), else this worker's (before any change)."""
        try:
            current = await asyncio.to_thread(self.file.read)
        except RoutingFileError as exc:
            raise RoutingUnavailable(str(exc)) from None
        if current is None:
            current = (await asyncio.to_thread(self.file.state)).routing
        return current or self._get_server().routing

    async def _write(self, change: Callable[[Routing], Routing]) -> tuple[Routing, Routing]:
        """Write a change to the routing file under its lock: the routing before and after."""
        try:
            return await asyncio.to_thread(self.file.update, change, self._get_server().routing)
        except RoutingFileError as exc:
            raise RoutingUnavailable(str(exc)) from None
        except OSError as exc:
            raise RoutingUnavailable(f"the routing file '{self.file.path}' cannot be written: {exc.strerror}") from None

    async def _finish(
        self, action: str, name: str, who: str, before: dict[str, ServedModel], routing: Routing
    ) -> ChangeResult:
        server = self._get_server()
        try:
            await server.apply(routing, forward_only=True)
        except Exception:
            # Written, but this worker cannot serve it (the store changed under it): the
            # others may; the answer lists this worker as behind instead of failing.
            log.exception("revision %d is written but this worker cannot serve it", routing.revision)
        self.status.report(server.revision, worker_name(), sorted(server.models))
        behind = await self.status.wait_for(routing.revision, self.settings.routing_apply_timeout_s)
        after = routing.models.get(name)
        AUDIT.info(
            "routing change",
            extra={
                "fields": {
                    "action": action,
                    "model": name,
                    "by": who,
                    "worker": worker_name(),
                    "revision": routing.revision,
                    "before": _dump(before.get(name)) if name != "*" else _dump_all(before),
                    "after": _dump(after) if name != "*" else _dump_all(routing.models),
                    "workers_behind": [w["pid"] for w in behind],
                }
            },
        )
        return ChangeResult(routing.revision, name, after, self.status.workers(), behind)

    def _check_writable(self) -> None:
        if not self.file.writable:
            raise RoutingReadOnly(str(self.file.path))

    def _check_schemas(self, name: str, proposed: ServedModel, routing: Routing) -> None:
        """The proposed tags exist and share one schema, and that of the name's served tags."""
        schemas = {}
        for index, tag in enumerate(proposed.tags()):
            try:
                schemas[tag] = registry.stored_schema(tag)
            except MissingModel as exc:
                raise InvalidInput.at(_tag_location(proposed, index), str(exc), "unknown_tag") from None
        served = routing.models.get(name)
        reference = served.tags()[0] if served is not None else proposed.tags()[0]
        if reference not in schemas:
            schemas[reference] = self._get_server().schema_of(reference)
        for index, variant in enumerate(proposed.variants):
            if variant.runtime is not None and variant.runtime not in registry.stored_runtimes(variant.tag):
                raise InvalidInput.at(
                    ["variants", index, "runtime"],
                    registry.no_onnx_export(variant.tag),
                    "no_onnx_export",
                )
        for index, tag in enumerate(proposed.tags()):
            if tag != reference and (message := registry.mismatch(name, reference, tag, schemas)):
                raise InvalidInput.at(_tag_location(proposed, index), message, "schema_mismatch")

    async def _prepare(self, server: ModelServer, tag: str, where: list[Any]) -> None:
        try:
            await server.prepare(tag)
        except MissingModel as exc:
            raise InvalidInput.at(where, str(exc), "unknown_tag") from None
        except Exception as exc:
            log.exception("loading %s failed", tag)
            raise ModelLoadFailed(
                f"'{tag}' could not be loaded or failed its warm-up call ({type(exc).__name__}); nothing was changed",
                [problem(where, str(exc)[:200], "load_failed")],
            ) from None

    def _candidates(self, name: str, served: ServedModel) -> list[str]:
        """Tags of `name` in the store that share the served schema."""
        schema = self._get_server().schema_of(served.tags()[0])
        found = []
        for tag in registry.stored_versions(name):
            try:
                other = registry.stored_schema(tag)
            except MissingModel:
                continue
            if registry.same_inputs(other, schema):
                found.append(tag)
        return found


async def follow(server: ModelServer, routing_file: RoutingFile, status: WorkerStatus) -> None:
    """Apply every change of the routing file to this worker, and report the revision.

    Runs for the worker's life. The file is the truth: a routing whose revision went
    down (a ConfigMap set back, a file replaced) is followed too, after a second read
    shows it was not just overtaken by a newer change. A file that disappears after one
    existed, or that cannot be used (invalid, unreadable), leaves the worker on the last
    good routing the file held, as every worker that starts meanwhile serves it too; the
    problem is logged (an unusable file again, less and less often, until it is fixed)
    and shown in the admin API. A routing this worker cannot serve (a tag that fails to
    load) is logged and retried with a growing delay; until then the worker keeps serving
    what it had, and shows as behind in the admin API and the revision gauge.
    """
    worker = worker_name()
    status.report(server.revision, worker, sorted(server.models))
    delay = FOLLOW_INTERVAL_S
    while True:
        await asyncio.sleep(delay)
        try:
            if status.due():  # a fleet's heartbeat: reports older than STALE_S are of dead replicas
                status.report(server.revision, worker, sorted(server.models))
            if not routing_file.changed():
                continue
            state = await asyncio.to_thread(routing_file.state)
            if state.problem is not None:
                log.error("%s This worker serves revision %d.", state.problem, server.revision)
            routing = state.routing
            if routing is not None and routing.revision < server.revision:
                if (await asyncio.to_thread(routing_file.state)).routing != routing:
                    routing_file.forget()  # overtaken meanwhile: look again
                    continue
                log.warning(
                    "the routing file %s went back from revision %d to %d; following it",
                    routing_file.path,
                    server.revision,
                    routing.revision,
                )
            if routing is not None and await server.apply(routing):
                status.report(server.revision, worker, sorted(server.models))
            if state.problem is None or state.missing:
                if state.problem is None and routing is not None:
                    await asyncio.to_thread(routing_file.remember)
                delay = FOLLOW_INTERVAL_S
            else:
                routing_file.forget()  # an unusable file: read it again, less and less often
                delay = min(delay * 2, MAX_RETRY_DELAY_S)
        except asyncio.CancelledError:
            raise
        except Exception:
            routing_file.forget()
            delay = min(delay * 2, MAX_RETRY_DELAY_S)
            log.exception(
                "cannot serve the routing in %s; still serving revision %d, retrying in %.1f s",
                routing_file.path,
                server.revision,
                delay,
            )


def worker_name() -> str:
    """BentoML's index of this worker (`bentoml.server_context`), "0" outside `bentoml serve`."""
    import bentoml

    index = bentoml.server_context.worker_index
    return "0" if index is None else str(index)


def refuse_model_files(parameters: Iterable[str]) -> None:
    """Triton's load can carry model files (`file:...` parameters); here models come only
    from the model store, so such a load is a 400 rather than silently ignored."""
    files = [name for name in parameters if name.startswith("file:")]
    if files:
        raise InvalidInput.at(
            ["parameters", files[0]],
            "model files are not accepted: models come from the model store (train or import them with "
            "`python -m training`), and `config` names their tags",
            "unsupported",
        )


def _tag_location(served: ServedModel, index: int) -> list[Any]:
    return ["variants", index, "tag"] if index < len(served.variants) else ["shadow"]


def _dump(served: ServedModel | None) -> dict[str, Any] | None:
    return None if served is None else served.model_dump(mode="json", exclude_none=True)


def _dump_all(models: dict[str, ServedModel]) -> dict[str, Any]:
    return {name: _dump(served) for name, served in models.items()}
