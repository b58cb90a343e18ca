"""Command line of batch scoring (docs/batch.md).

python -m scoring --model titanic --input passengers.parquet --output scored.parquet
python -m scoring --model titanic:v1 --input folder/ --output scored/ --engine spark --master local[2]
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass

from model_server.config.routing import Routing, RoutingFile, RoutingFileError
from model_server.config.settings import ServedModel, SettingsError, check_tag, load_settings
from model_server.errors import NotExplainable
from model_server.models import registry
from model_server.models.onnx_runtime import RUNTIMES
from model_server.models.registry import MissingModel
from model_server.models.schema import REJECT
from model_server.models.scoring import Scorer
from scoring.job import BATCH_ROWS, FAILED, Job, JobError, TooManyInvalid

LOCAL, SPARK = "local", "spark"


@dataclass(frozen=True)
class Choice:
    """The tag that scores, its runtime and unknown-category policy, and why it was chosen."""

    name: str
    tag: str
    runtime: str | None  # None: the tag's default (its ONNX export where it has one)
    unknown_categories: str
    why: str


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        choice = choose(args.model, args.runtime)
        print(f"{choice.name}: scoring with {choice.tag} ({choice.why})", flush=True)
        job = build_job(args, choice)
        if args.engine == SPARK:
            from scoring import spark

            spark.run(job, args.master, dict(_pairs(args.conf)))
        else:
            from scoring import local

            local.run(job)
    except (JobError, TooManyInvalid) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except Exception as exc:
        if type(exc).__name__ != "JobFailed":  # the Spark engine's (scoring/spark.py)
            raise
        print(f"error: {exc}", file=sys.stderr)
        return FAILED
    except KeyboardInterrupt:
        print("error: interrupted; nothing was written", file=sys.stderr)
        return FAILED
    return 0


def parser() -> argparse.ArgumentParser:
    commands = argparse.ArgumentParser(
        prog="python -m scoring",
        description="Score a table with a stored tag: the server's checks and runtime, on one machine or on Spark.",
        epilog="Exit codes: 0 done; 2 the job cannot run (missing input, unknown tag, unreadable file, missing "
        "column), nothing written; 3 more invalid rows than --max-invalid, nothing written; 1 anything else.",
    )
    commands.add_argument(
        "--model",
        required=True,
        help="NAME:VERSION, or NAME for the variant the routing serves with the largest weight (the first of equals)",
    )
    commands.add_argument("--input", required=True, help="a CSV or Parquet file, or a folder of part files")
    commands.add_argument("--output", required=True, help="the Parquet file (local) or folder (spark) to write")
    commands.add_argument("--engine", choices=[LOCAL, SPARK], default=LOCAL, help="default: local")
    commands.add_argument("--master", help="Spark's master URL (local[N], spark://HOST:PORT, yarn, k8s://...)")
    commands.add_argument(
        "--conf", action="append", default=[], metavar="KEY=VALUE", help="a Spark setting (repeatable)"
    )
    commands.add_argument(
        "--keep", nargs="+", default=[], metavar="COL", help="input columns copied to the output ('*': every one)"
    )
    commands.add_argument("--explain", action="store_true", help="each feature's contribution, as the API's")
    commands.add_argument(
        "--max-invalid",
        type=_share_or_count,
        default=0.01,
        help="invalid rows allowed: below 1 a share of the rows, from 1 a count (default: 0.01)",
    )
    commands.add_argument("--runtime", choices=RUNTIMES, help="default: the routing's, else the tag's ONNX export")
    commands.add_argument("--input-format", help="csv or parquet (default: by suffix); any format Spark reads on spark")
    commands.add_argument("--overwrite", action="store_true", help="replace an existing output")
    commands.add_argument(
        "--batch-rows", type=_positive, default=BATCH_ROWS, help=f"rows per batch (default: {BATCH_ROWS})"
    )
    return commands


def choose(model: str, runtime: str | None) -> Choice:
    """The tag for `model`: NAME:VERSION as given, or for NAME the variant the routing serves
    with the largest weight (configuration.yaml, or the routing file a running server
    follows). JobError when it cannot be chosen."""
    name, _, version = model.partition(":")
    served = _served(name, required=not version)
    if version:
        try:
            tag = check_tag(model)
        except ValueError as exc:
            raise JobError(f"--model {model!r}: {exc}") from None
        variant = next((v for v in served.variants if v.tag == tag), None) if served else None
        return Choice(
            name,
            tag,
            runtime or (variant.runtime if variant else None),
            served.unknown_categories if served else REJECT,
            "the version asked for",
        )
    assert served is not None
    best = max(served.variants, key=lambda v: v.weight)  # max keeps the first of equal weights
    total = sum(v.weight for v in served.variants)
    return Choice(
        name,
        best.tag,
        runtime or best.runtime,
        served.unknown_categories,
        f"the routing's variant with the largest weight, {best.weight:g} of {total:g}",
    )


def build_job(args: argparse.Namespace, choice: Choice) -> Job:
    """The job: the tag's artifact from the model store (JobError for an unknown tag, a
    runtime it lacks, or explanations it cannot give)."""
    try:
        artifact = registry.scoring_artifact(
            choice.tag, choice.runtime, choice.unknown_categories, with_pipeline=args.explain
        )
    except MissingModel as exc:
        raise JobError(str(exc)) from None
    except ValueError as exc:
        raise JobError(f"{exc}") from None
    if args.explain:
        try:
            Scorer(artifact, explain=True)
        except NotExplainable as exc:
            raise JobError(exc.message) from None
    return Job(
        name=choice.name,
        artifact=artifact,
        input=args.input,
        output=args.output,
        keep=tuple(args.keep),
        explain=args.explain,
        max_invalid=args.max_invalid,
        input_format=args.input_format,
        overwrite=args.overwrite,
        batch_rows=args.batch_rows,
        progress=sys.stderr.isatty(),
        choice=choice.why,
    )


def _served(name: str, required: bool) -> ServedModel | None:
    """What the routing serves for `name` (None when it serves nothing by that name)."""
    try:
        settings = load_settings()
        routing = RoutingFile(settings.routing_path()).serving(Routing.initial(settings))
    except (SettingsError, RoutingFileError) as exc:
        if required:
            raise JobError(f"{exc} Name a version instead: --model {name}:VERSION") from None
        return None
    served = routing.models.get(name)
    if served is None and required:
        stored = registry.stored_versions(name)
        hint = f" (stored: {', '.join(stored)})" if stored else ""
        raise JobError(f"model '{name}' is not served by the routing; name a version: --model {name}:VERSION{hint}")
    return served


def _share_or_count(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value < math.inf:
        raise argparse.ArgumentTypeError("must be a finite number, 0 or more")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def _pairs(items: list[str]) -> list[tuple[str, str]]:
    pairs = []
    for item in items:
        key, equals, value = item.partition("=")
        if not equals or not key:
            raise JobError(f"--conf {item!r} is not KEY=VALUE")
        pairs.append((key, value))
    return pairs
