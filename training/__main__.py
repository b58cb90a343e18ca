"""Command line of training and registration.

python -m training iris --version v2 --algorithm gradient_boosting    a built-in data set
python -m training --data churn.csv --target churned --name churn     the user's own table
python -m training --from-log DIR --name churn --version v3           the inference log and its feedback
python -m training import model.skops --sample rows.csv --name churn  a pipeline fitted elsewhere
python -m training --configured                                       every configured tag the store lacks
python -m training refresh iris:v1                                    add the ONNX export and drift reference
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import bentoml

from model_server.config.settings import SettingsError, load_settings
from model_server.models.registry import how_to_register
from model_server.models.schema import CLASSIFICATION, REGRESSION

from . import datasets, from_log, importer, pipelines, tables
from .recipes import DEFAULT_RECIPES, DEFAULT_SEED
from .refresh import RefreshError, refresh
from .register import TagExists, TrainingResult, register_imported, tag_exists, train_and_register

BUILT_IN = sorted([*datasets.LOADERS, "titanic"])
# The forms that are not options of the main parser; each has its own --help.
SUBCOMMANDS = """subcommands (python -m training SUBCOMMAND --help):
  import MODEL_FILE --sample FILE --name NAME [--target COL] [--trust-pickle]
                        register a scikit-learn estimator or Pipeline fitted elsewhere
  refresh NAME:VERSION [--rows FILE]
                        add the ONNX export and the drift reference to a tag stored before them"""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = shlex.join(["python", "-m", "training", *argv])
    try:
        if argv[:1] == ["import"]:
            return _import(_import_parser().parse_args(argv[1:]), command)
        if argv[:1] == ["refresh"]:
            return _refresh(_refresh_parser().parse_args(argv[1:]))
        args = _parser().parse_args(argv)
        if args.configured:
            return _train_configured(args.seed)
        if args.data or args.from_log:
            if args.data and args.from_log:
                _parser().error("give --data or --from-log, not both")
            if args.from_log:
                if not args.name:
                    _parser().error("--from-log needs --name")
                target = args.target or from_log.TARGET
                frame, logged_task = from_log.joined(Path(args.from_log), args.name, target)
                source = f"log:{Path(args.from_log).name}"
            else:
                if not args.target or not args.name:
                    _parser().error("--data needs --target and --name")
                frame, target, logged_task = tables.read_file(Path(args.data)), args.target, None
                source = f"file:{Path(args.data).name}"
            table = tables.from_frame(
                args.name,
                frame,
                target,
                source,
                categorical=_names(args.categorical),
                numeric=_names(args.numeric),
                drop=_names(args.drop),
                task=args.task or logged_task,
                require_values=not args.from_log,
            )
            tables.refuse_one_class(table)
            print(tables.describe(table, task_given=args.task is not None))
            ids = tables.id_like(table)
            if ids:
                print(tables.id_warning(ids), file=sys.stderr)
            name, task = args.name, table.task
        elif args.model:
            table, name = None, args.model
            task = CLASSIFICATION if args.model == "titanic" else datasets.LOADERS[args.model][1]
        else:
            _parser().error("name a built-in data set, pass --data FILE, or pass --configured")
        algorithm = args.algorithm or pipelines.ALGORITHMS[task][0]
        result = train_and_register(name, args.version, algorithm, args.seed, args.force, command, table)
    except (TagExists, SettingsError, ValueError, OSError, bentoml.exceptions.BentoMLException) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"saved {result.tag}")
    print(json.dumps(result.metrics, indent=2, sort_keys=True))
    print(result.onnx_summary())
    return 0


def _import(args: argparse.Namespace, command: str) -> int:
    estimator = importer.load_estimator(Path(args.model_file), trust_pickle=args.trust_pickle)
    sample = tables.read_file(Path(args.sample))
    checked = importer.check_on_sample(
        estimator, sample, args.name, args.target, _names(args.categorical), _names(args.numeric), args.task
    )
    known = importer.encoder_categories(estimator)
    print(tables.describe(checked.table, args.task is not None, known, has_target=checked.labels is not None))
    result = register_imported(args.name, args.version, checked, args.force, command, Path(args.model_file).name)
    print(f"saved {result.tag}")
    print(json.dumps(result.metrics, indent=2, sort_keys=True))
    print(result.onnx_summary())
    return 0


def _refresh(args: argparse.Namespace) -> int:
    try:
        result = refresh(args.tag, Path(args.rows) if args.rows else None, args.force)
    except bentoml.exceptions.NotFound:
        print(f"error: '{args.tag}' is not in the model store", file=sys.stderr)
        return 2
    if result is None:
        print(f"{args.tag} already has an ONNX verdict and a drift reference (--force checks again)")
        return 0
    onnx = TrainingResult(tag=result.tag, metrics={}, onnx=result.onnx).onnx_summary()
    print(f"refreshed {result.tag} with rows from {result.rows_from}")
    print(onnx)
    print(f"drift reference: {'stored' if result.drift_reference else 'not stored'}")
    return 0


def _refresh_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training refresh",
        description="Add the ONNX export and the drift reference to a tag stored before registration made them.",
    )
    parser.add_argument("tag", help="the stored tag, name:version")
    parser.add_argument("--rows", help="CSV or Parquet rows with the schema's columns (needed unless built-in data)")
    parser.add_argument("--force", action="store_true", help="check and store again even when both are present")
    return parser


def _train_configured(seed: int) -> int:
    settings = load_settings()
    for tag in settings.tags():
        if tag_exists(tag):
            # Stored before registration made exports and drift references: add them when
            # its data set is built in (a user's own file needs `refresh --rows`).
            try:
                refreshed = refresh(tag)
            except RefreshError as exc:
                print(f"present {tag} (not refreshed: {exc})")
                continue
            print(f"present {tag}" if refreshed is None else f"present {tag}, refreshed: {refreshed.rows_from}")
            continue
        if tag not in DEFAULT_RECIPES:
            print(
                f"error: '{tag}' is configured but not in the store, and has no default recipe; {how_to_register(tag)}",
                file=sys.stderr,
            )
            return 2
        name, version = tag.split(":")
        result = train_and_register(name, version, DEFAULT_RECIPES[tag], seed)
        print(
            f"saved {result.tag}: "
            + ", ".join(
                f"{k}={'null' if v is None else format(v, '.4f')}"
                for k, v in sorted(result.metrics.items())
                if k.startswith("holdout")
            )
        )
    return 0


def _names(text: str | None) -> list[str]:
    return [name.strip() for name in (text or "").split(",") if name.strip()]


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--version", default="v1", help="version part of the tag (default: v1)")
    parser.add_argument("--force", action="store_true", help="replace the tag if it is already in the store")
    parser.add_argument("--task", choices=[CLASSIFICATION, REGRESSION], help="override the inferred task")
    parser.add_argument("--categorical", help="comma-separated columns to treat as categorical")
    parser.add_argument("--numeric", help="comma-separated columns to treat as numeric")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training",
        description=__doc__.splitlines()[0],
        epilog=SUBCOMMANDS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", nargs="?", choices=BUILT_IN, help="built-in data set (and model name) to train")
    _common(parser)
    parser.add_argument("--data", help="the user's own CSV or Parquet file to train on")
    parser.add_argument(
        "--from-log",
        metavar="DIR",
        help="train on the inference log in DIR: the logged rows of --name joined with their feedback",
    )
    parser.add_argument("--target", help="with --data: the column to predict (with --from-log: its name, 'truth')")
    parser.add_argument("--name", help="with --data or --from-log: the model name")
    parser.add_argument(
        "--drop", metavar="COL[,COL...]", help="with --data: comma-separated columns to leave out (ids)"
    )
    parser.add_argument(
        "--algorithm",
        choices=sorted({a for algs in pipelines.ALGORITHMS.values() for a in algs}),
        help="estimator; default: logistic_regression for classifiers, ridge for regression",
    )
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"random seed (default: {DEFAULT_SEED})")
    parser.add_argument("--configured", action="store_true", help="train every configured tag the store lacks")
    return parser


def _import_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training import", description="Register a scikit-learn estimator or Pipeline fitted elsewhere."
    )
    parser.add_argument("model_file", help="a .skops file, or a pickle (.pkl, .joblib) with --trust-pickle")
    parser.add_argument("--sample", required=True, help="CSV or Parquet rows with the model's input columns")
    parser.add_argument("--name", required=True, help="the model name")
    parser.add_argument("--target", help="the sample's label column: metrics are recorded when present")
    parser.add_argument(
        "--trust-pickle", action="store_true", help="load a pickle, which runs any code it holds: only your own"
    )
    _common(parser)
    return parser


if __name__ == "__main__":
    sys.exit(main())
