"""One batch job as both engines run it: what to score with what, its errors and exit
codes, the summary kept in the output's metadata, and the drift report beside it."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from model_server.models.drift_reference import MODERATE, SIGNIFICANT, DriftReference
from model_server.models.scoring import Scorer, ScoringArtifact, Totals
from model_server.monitoring.drift_counts import Window
from model_server.monitoring.drift_report import tag_report

# Exit codes (docs/batch.md).
OK, FAILED, BAD_JOB, TOO_MANY_INVALID = 0, 1, 2, 3
# The key of the job's summary in the output Parquet file's metadata (the local engine);
# the Spark engine writes the same summary as SUMMARY_FILE inside its output folder.
METADATA_KEY = "model_server.scoring"
SUMMARY_FILE = "_scoring.json"
# The drift report: `OUTPUT` + this suffix, beside the output.
DRIFT_SUFFIX = ".drift.json"
# The local engine's rows per batch (and Spark's rows per Arrow batch).
BATCH_ROWS = 65_536


class JobError(Exception):
    """A job that cannot run as asked (missing input, unknown tag, unreadable file,
    missing column): one `error:` line, exit 2, nothing written."""

    exit_code = BAD_JOB


class TooManyInvalid(Exception):
    """More invalid rows than --max-invalid allows: exit 3, nothing written."""

    exit_code = TOO_MANY_INVALID


@dataclass(frozen=True)
class Job:
    """What to score, with which tag, and where the answer goes."""

    name: str  # the model name asked for
    artifact: ScoringArtifact
    input: str
    output: str
    keep: tuple[str, ...] = ()  # input columns copied to the output ("*": every one)
    explain: bool = False
    max_invalid: float = 0.01  # below 1: a share of the rows; from 1: a count of rows
    input_format: str | None = None  # by the files' suffix when None
    overwrite: bool = False
    batch_rows: int = BATCH_ROWS
    progress: bool = False  # a progress line on the terminal (local engine)
    choice: str = ""  # how the tag was chosen, for the summary

    def limit(self, rows: int) -> int:
        """The most invalid rows allowed among `rows`."""
        if self.max_invalid >= 1:
            return int(self.max_invalid)
        # Rounded first: 0.29 is held as 0.28999..., and 0.29 of 100 rows allows 29.
        return math.floor(round(self.max_invalid * rows, 9))


@dataclass
class Outcome:
    """A finished job: its totals and times."""

    job: Job
    engine: str
    totals: Totals
    started: float  # time.time()
    seconds: float
    explanation: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rows_per_second(self) -> float:
        return self.totals.rows / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        """What the output's metadata holds (docs/batch.md, "Output")."""
        artifact, totals = self.job.artifact, self.totals
        summary: dict[str, Any] = {
            "model": self.job.name,
            "tag": artifact.tag,
            "runtime": artifact.runtime,
            "engine": self.engine,
            "input": self.job.input,
            "rows": totals.rows,
            "valid_rows": totals.rows - totals.invalid,
            "invalid_rows": totals.invalid,
            "started_at": _iso(self.started),
            "finished_at": _iso(self.started + self.seconds),
            "seconds": round(self.seconds, 3),
            "rows_per_second": round(self.rows_per_second, 1),
            "unknown_categories": artifact.unknown_categories,
            "labels": artifact.labels,
            **self.extra,
        }
        if self.explanation is not None:
            summary["explanation"] = self.explanation
        return summary

    def check_invalid(self) -> None:
        """TooManyInvalid when the invalid rows exceed the job's limit."""
        limit = self.job.limit(self.totals.rows)
        if self.totals.invalid > limit:
            share = self.totals.invalid / max(1, self.totals.rows)
            raise TooManyInvalid(
                f"{self.totals.invalid:,} of {self.totals.rows:,} rows ({share:.2%}) are invalid, more than "
                f"--max-invalid {self.job.max_invalid:g} allows ({limit:,}); nothing was written"
            )

    def drift_report(self, scorer: Scorer) -> dict[str, Any] | None:
        """The PSI of each feature and of the predictions against the tag's training data,
        as the server's drift answer describes a tag (None without a reference)."""
        reference: DriftReference | None = scorer.reference
        if reference is None or self.totals.drift_counts is None:
            return None
        valid = self.totals.rows - self.totals.invalid
        window = Window(int(self.started * 1000), valid, self.totals.drift_counts)
        answer = tag_report(self.job.artifact.tag, reference, window)
        answer.pop("window", None)
        return {
            "model": self.job.name,
            "input": self.job.input,
            "scored_rows": valid,
            "thresholds": {"moderate": MODERATE, "significant": SIGNIFICANT},
            **answer,
        }

    def lines(self, output: str, drift: dict[str, Any] | None) -> list[str]:
        """What the command prints when the job is done."""
        totals = self.totals
        share = totals.invalid / max(1, totals.rows)
        lines = [
            f"scored {totals.rows:,} rows with {self.job.artifact.tag} ({self.job.artifact.runtime}, {self.engine}) "
            f"in {self.seconds:.1f} s, {self.rows_per_second:,.0f} rows/s; {totals.invalid:,} invalid ({share:.2%}) "
            f"-> {output}"
        ]
        if drift is not None:
            psi = drift["psi"]
            parts = [f"{name} {_psi(value)}" for name, value in psi["features"].items()]
            lines.append(f"drift (PSI against training): {', '.join(parts)}; predictions {_psi(psi['predictions'])}")
        return lines


def summary_text(summary: dict[str, Any]) -> str:
    return json.dumps(summary, sort_keys=False)


def _psi(value: float | None) -> str:
    if value is None:
        return "n/a"
    word = " (significant)" if value > SIGNIFICANT else " (moderate)" if value > MODERATE else ""
    return f"{value:.3f}{word}"


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")


def now() -> float:
    return time.time()
