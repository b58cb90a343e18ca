"""`python -m scoring`: see scoring/cli.py and docs/batch.md."""

from __future__ import annotations

import sys

from scoring.cli import main

if __name__ == "__main__":
    sys.exit(main())
