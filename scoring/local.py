"""The local engine (the default): one process streams the input's record batches through
the scoring core and writes one Parquet file, in constant memory whatever the input's size.

Reading, scoring and writing overlap: a reader thread decodes the next batches, one scoring
thread per core scores them (Arrow, numpy and onnxruntime release the GIL), and a writer
thread compresses them in input order. The file is written under a temporary name beside the
output and renamed once the job has passed its checks; a failed job leaves nothing.
"""

from __future__ import annotations

import collections
import contextlib
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

from model_server.files import write_atomically
from model_server.models.scoring import (
    CONTRIBUTION_PREFIX,
    ERROR,
    PREDICTION,
    PROBABILITY_PREFIX,
    TAG,
    ScoredBatch,
    Scorer,
    Totals,
)
from scoring.job import DRIFT_SUFFIX, METADATA_KEY, Job, JobError, Outcome, now, summary_text
from scoring.sources import Source, open_source

T = TypeVar("T")
ENGINE = "local"
# Batches decoded ahead of the scorer, and scored batches waiting for the writer.
QUEUE_DEPTH = 2


def run(job: Job, threads: int | None = None, report: Callable[[str], None] = print) -> Outcome:
    """Score the job's input into its output file; JobError or TooManyInvalid leave nothing."""
    source = open_source(job.input, job.input_format)
    needed, keep = columns_of(job, source.columns)
    refuse_nested(job, source)
    output = Path(job.output)
    check_output(output, job.overwrite)
    scorers = _Scorers(job, threads or os.cpu_count() or 1)
    scorer = scorers.first
    schema = pa.schema([*(source.field(name) for name in keep), *scorer.output_fields()])
    temporary = output.with_name(f".{output.name}.tmp-{os.getpid()}")
    started, clock, cpu = now(), time.perf_counter(), time.process_time()
    totals = Totals()
    progress = Progress(source.rows, sys.stderr) if job.progress else None
    try:
        with pq.ParquetWriter(temporary, schema, compression="snappy") as writer:
            with _Writer(writer) as background:
                for scored in scorers.map(_ahead(source.batches(needed, job.batch_rows)), keep):
                    totals.add(scored)
                    background.put(_as_output(scored.batch, schema))
                    if progress is not None:
                        progress.update(totals)
            outcome = Outcome(job, ENGINE, totals, started, time.perf_counter() - clock, scorer.explanation_facts())
            outcome.extra["cpu_seconds"] = round(time.process_time() - cpu, 3)  # every thread's
            outcome.check_invalid()
            writer.add_key_value_metadata({METADATA_KEY: summary_text(outcome.summary())})
        if progress is not None:
            progress.done()
        drift = outcome.drift_report(scorer)
        drift_path = Path(str(output) + DRIFT_SUFFIX)
        if drift is not None:
            write_atomically(drift_path, summary_text(drift) + "\n", durable=False)
        else:  # a report beside the output describes it, not the output it replaces
            drift_path.unlink(missing_ok=True)
        os.replace(temporary, output)
    except BaseException:
        if progress is not None:
            progress.done()
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        raise
    for line in outcome.lines(str(output), drift):
        report(line)
    return outcome


def columns_of(job: Job, columns: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """The input columns to read (features, then kept ones) and the kept ones; JobError
    naming a missing feature or kept column, or a kept column named like an output column."""
    features = job.artifact.schema.names
    missing = [name for name in features if name not in columns]
    if missing:
        raise JobError(
            f"the input lacks the column{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))} "
            f"of {job.artifact.tag} (its features: {', '.join(features)})"
        )
    keep = list(dict.fromkeys(columns)) if "*" in job.keep else list(dict.fromkeys(job.keep))
    absent = [name for name in keep if name not in columns]
    if absent:
        raise JobError(f"--keep names {', '.join(map(repr, absent))}, which the input lacks")
    clash = [name for name in keep if name in _output_names(job)]
    if clash:
        raise JobError(f"--keep {', '.join(map(repr, clash))} clashes with an output column of the same name")
    needed = list(dict.fromkeys([*features, *keep]))
    counts = collections.Counter(columns)
    repeated = [name for name in needed if counts[name] > 1]
    if repeated:
        raise JobError(f"the input has {counts[repeated[0]]} columns named '{repeated[0]}'; rename or remove one")
    return needed, keep


def refuse_nested(job: Job, source: Source) -> None:
    """JobError naming a feature that a Parquet input holds as lists, structs, maps or
    bytes: a model takes one number or text per row, so every row would be invalid."""
    for schema in source.schemas:
        for name in job.artifact.schema.names:
            kind = schema.field(name).type
            if pa.types.is_nested(kind) or any(is_bytes(kind) for is_bytes in BYTES_TYPES):
                raise JobError(nested_feature(job, name, str(kind)))


BYTES_TYPES = (pa.types.is_binary, pa.types.is_large_binary, pa.types.is_fixed_size_binary, pa.types.is_binary_view)


def nested_feature(job: Job, name: str, kind: str) -> str:
    """The refusal of a feature column of lists, structs, maps or bytes (`kind`: its type)."""
    return f"the column '{name}' is {kind}, not one number or text per row as the features of {job.artifact.tag} are"


def _output_names(job: Job) -> set[str]:
    schema = job.artifact.schema
    names = {PREDICTION, TAG, ERROR} | {PROBABILITY_PREFIX + c for c in schema.classes}
    if job.explain:  # per feature, and per class and feature: clashes are unlikely but possible
        names |= {CONTRIBUTION_PREFIX + n for n in schema.names}
        names |= {f"{CONTRIBUTION_PREFIX}{c}_{n}" for c in schema.classes for n in schema.names}
    return names


def _as_output(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """A scored batch with the output's types; JobError when a kept value does not fit the
    type its column has across the parts (an integer beyond 2**53 where parts unified to
    double)."""
    if batch.schema == schema:
        return batch
    try:
        return batch.cast(schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise JobError(f"a kept column cannot be written as its type across the input's parts: {exc}") from None


def check_output(output: Path, overwrite: bool) -> None:
    """JobError when the output exists (without --overwrite, or as a folder, which a file
    does not replace) or its folder does not."""
    if output.is_dir():
        raise JobError(f"output '{output}' is a folder; the local engine writes one Parquet file: name a file")
    if output.exists() and not overwrite:
        raise JobError(f"output '{output}' exists; pass --overwrite to replace it")
    if not output.parent.is_dir():
        raise JobError(f"the folder of output '{output}' does not exist")


class Progress:
    """One line on the terminal, rewritten a few times a second: rows, share, rows/s."""

    def __init__(self, total: int | None, stream: Any) -> None:
        self.total, self.stream = total, stream
        self.started = self.shown = time.perf_counter()

    def update(self, totals: Totals) -> None:
        moment = time.perf_counter()
        if moment - self.shown < 0.25:
            return
        self.shown = moment
        rate = totals.rows / max(moment - self.started, 1e-9)
        if self.total:
            share = totals.rows / self.total
            bar = "#" * int(share * 30)
            line = f"[{bar:<30}] {share:6.1%} {totals.rows:,}/{self.total:,} rows"
        else:
            line = f"{totals.rows:,} rows"
        self.stream.write(f"\r{line}  {rate:,.0f} rows/s  {totals.invalid:,} invalid ")
        self.stream.flush()

    def done(self) -> None:
        self.stream.write("\r\033[K")
        self.stream.flush()


class _Scorers:
    """Batches scored by several threads at once, each with its own scorer (its own ONNX
    session of one thread), answered in input order: the model's run, and most of the
    checks, release the GIL, so every core scores."""

    def __init__(self, job: Job, threads: int) -> None:
        self.job = job
        self.threads = max(1, threads)
        self.first = Scorer(job.artifact, job.explain)
        self._local = threading.local()
        self._local.scorer = self.first

    def _scorer(self) -> Scorer:
        scorer = getattr(self._local, "scorer", None)
        if scorer is None:
            scorer = self._local.scorer = Scorer(self.job.artifact, self.job.explain)
        return scorer

    def map(self, batches: Iterator[pa.RecordBatch], keep: list[str]) -> Iterator[ScoredBatch]:
        if self.threads == 1:
            for batch in batches:
                yield self.first.score(batch, keep)
            return
        with ThreadPoolExecutor(self.threads, thread_name_prefix="scoring") as pool:
            running: collections.deque[Future[ScoredBatch]] = collections.deque()
            try:
                for batch in batches:
                    running.append(pool.submit(lambda b: self._scorer().score(b, keep), batch))
                    if len(running) > self.threads:
                        yield running.popleft().result()
                while running:
                    yield running.popleft().result()
            finally:
                for waiting in running:
                    waiting.cancel()


def _ahead(batches: Iterator[T]) -> Iterator[T]:
    """`batches`, produced by a thread up to QUEUE_DEPTH ahead of the consumer."""
    waiting: queue.Queue[tuple[str, Any]] = queue.Queue(QUEUE_DEPTH)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in batches:
                if stop.is_set():
                    return
                waiting.put(("item", item))
            waiting.put(("end", None))
        except BaseException as exc:  # handed to the consumer, which raises it
            waiting.put(("error", exc))

    thread = threading.Thread(target=produce, name="scoring-reader", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = waiting.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        with contextlib.suppress(queue.Empty):
            while True:
                waiting.get_nowait()


class _Writer:
    """Writes record batches to a ParquetWriter from a thread, QUEUE_DEPTH behind."""

    def __init__(self, writer: pq.ParquetWriter) -> None:
        self.writer = writer
        self.waiting: queue.Queue[pa.RecordBatch | None] = queue.Queue(QUEUE_DEPTH)
        self.failure: BaseException | None = None
        self.thread = threading.Thread(target=self._write, name="scoring-writer", daemon=True)

    def __enter__(self) -> _Writer:
        self.thread.start()
        return self

    def put(self, batch: pa.RecordBatch) -> None:
        if self.failure is not None:
            raise self.failure
        self.waiting.put(batch)

    def __exit__(self, *exc: object) -> None:
        self.waiting.put(None)
        self.thread.join()
        if self.failure is not None and exc[0] is None:
            raise self.failure

    def _write(self) -> None:
        while (batch := self.waiting.get()) is not None:
            if self.failure is None:
                try:
                    self.writer.write_batch(batch)
                except BaseException as exc:
                    self.failure = exc
