"""Command line: `python -m training iris --version v2 --algorithm gradient_boosting`.

`python -m training --configured` trains every tag that configuration.yaml serves and
the model store lacks, with the recipe in training/recipes.py.
"""

from __future__ import annotations

import argparse
import json
import sys

from model_server.settings import SettingsError, load_settings

from . import datasets, pipelines
from .recipes import DEFAULT_RECIPES, DEFAULT_SEED
from .register import TagExists, _exists, train_and_register


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.configured:
            return _train_configured(args.seed)
        if not args.model:
            _parser().error("name a model, or pass --configured")
        task = datasets.LOADERS[args.model][1]
        algorithm = args.algorithm or pipelines.ALGORITHMS[task][0]
        result = train_and_register(args.model, args.version, algorithm, args.seed, args.force)
    except (TagExists, SettingsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"saved {result.tag}")
    print(json.dumps(result.metrics, indent=2, sort_keys=True))
    return 0


def _train_configured(seed: int) -> int:
    settings = load_settings()
    for tag in settings.tags():
        if _exists(tag):
            print(f"present {tag}")
            continue
        if tag not in DEFAULT_RECIPES:
            print(
                f"error: '{tag}' is configured but not in the store, and has no default recipe; "
                f"train it with `python -m training {tag.split(':')[0]} --version {tag.split(':')[1]} --algorithm ...`",
                file=sys.stderr,
            )
            return 2
        name, version = tag.split(":")
        result = train_and_register(name, version, DEFAULT_RECIPES[tag], seed)
        print(
            f"saved {result.tag}: "
            + ", ".join(f"{k}={v:.4f}" for k, v in sorted(result.metrics.items()) if k.startswith("holdout"))
        )
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", choices=sorted(datasets.LOADERS), help="model (and data set) to train")
    parser.add_argument("--version", default="v1", help="version part of the tag (default: v1)")
    parser.add_argument(
        "--algorithm",
        choices=sorted({a for algs in pipelines.ALGORITHMS.values() for a in algs}),
        help="estimator; default: logistic_regression for classifiers, ridge for regression",
    )
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"random seed (default: {DEFAULT_SEED})")
    parser.add_argument("--force", action="store_true", help="replace the tag if it is already in the store")
    parser.add_argument("--configured", action="store_true", help="train every configured tag the store lacks")
    return parser


if __name__ == "__main__":
    sys.exit(main())
