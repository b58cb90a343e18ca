"""`python -m scoring` (scoring/cli.py, docs/batch.md); also `spark-submit scoring/__main__.py ...`,
which runs this file by its path."""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run by path (spark-submit): import the project's packages from its root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scoring.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
