"""Trains the default models into the test run's seed store, in the background.

    BENTOML_HOME=SEED python -m tests.seed_store

`make test` starts this from the first test process (tests/conftest.py) before the
parallel test processes start, so that training (about a minute of one core) overlaps
with the unit tests, which need no models, instead of holding up the first test that
needs them. It holds the seed store's lock while it trains; a test process that needs
the models waits for the lock, then copies them (or trains what is still missing, if
this failed). `started` marks that the lock is held.
"""

from __future__ import annotations

import fcntl
import os
import sys
from pathlib import Path

LOCK = ".lock"
STARTED = ".training-started"


def main() -> int:
    seed = Path(os.environ["BENTOML_HOME"])
    seed.mkdir(parents=True, exist_ok=True)
    with (seed / LOCK).open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        (seed / STARTED).touch()
        from model_server.config.settings import load_settings
        from training.recipes import DEFAULT_RECIPES, DEFAULT_SEED
        from training.register import tag_exists, train_and_register

        root = Path(__file__).resolve().parent.parent
        for tag in load_settings(root / "configuration.yaml").tags():
            if tag_exists(tag):
                continue
            name, version = tag.split(":")
            command = f"python -m training {name} --version {version} --algorithm {DEFAULT_RECIPES[tag]}"
            train_and_register(name, version, DEFAULT_RECIPES[tag], DEFAULT_SEED, command=command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
