"""The input of a local job: a CSV or Parquet file, or a folder of part files, read as a
stream of Arrow record batches (constant memory, whatever the input's size).

CSV cells are text, as Spark's CSV reader gives them without schema inference: every
column is read as a string, and an empty cell is null (a missing value). The scoring core
reads a feature's text as the schema says (model_server/models/scoring.py); kept columns
stay text.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from scoring.job import JobError

CSV, PARQUET = "csv", "parquet"
SUFFIXES = {".csv": CSV, ".parquet": PARQUET, ".pq": PARQUET}
# Bytes of CSV read at once (a batch of about 50,000 to 100,000 rows of a narrow table).
CSV_BLOCK_BYTES = 4 << 20
PARQUET_BUFFER_BYTES = 1 << 20


@dataclass(frozen=True)
class Source:
    """The files of one input, in order, and their format and columns."""

    files: tuple[Path, ...]
    format: str
    columns: tuple[str, ...]  # the first file's (every file must have the needed ones)
    rows: int | None  # known for Parquet (its metadata), None for CSV
    schemas: tuple[pa.Schema, ...] = ()  # each Parquet file's, in the order of `files`

    def field(self, name: str) -> pa.Field:
        """A kept column as the output holds it: text for CSV; for Parquet, its type in
        every part, unified (a part where it is all null takes the others' type; int32
        and int64 give int64). JobError when two parts hold it with types that do not mix."""
        if self.format != PARQUET:
            return pa.field(name, pa.string())
        found = _decoded(self.schemas[0].field(name))
        for path, schema in zip(self.files[1:], self.schemas[1:], strict=True):
            other = _decoded(schema.field(name))
            if other.type == found.type:
                continue
            try:
                merged = pa.unify_schemas([pa.schema([found]), pa.schema([other])], promote_options="permissive")
            except (pa.ArrowTypeError, pa.ArrowInvalid):
                raise JobError(
                    f"the column '{name}' is {found.type} in the parts before '{path}' and {other.type} in it; "
                    "a kept column needs one type in every part"
                ) from None
            found = merged.field(name)
        return found

    def batches(self, needed: list[str], batch_rows: int) -> Iterator[pa.RecordBatch]:
        """Every row of every file, in order, with the `needed` columns."""
        for path in self.files:
            try:
                if self.format == PARQUET:
                    yield from parquet_batches(path, needed, batch_rows)
                else:
                    yield from _csv_batches(path, needed)
            except (pa.ArrowException, OSError) as exc:
                raise JobError(f"cannot read '{path}': {_reason(exc)}") from None


def parquet_batches(
    path: Path | str, needed: list[str], batch_rows: int, row_groups: list[int] | None = None
) -> Iterator[pa.RecordBatch]:
    """A Parquet file's rows (or those of `row_groups`), in batches of the `needed` columns.
    Without pre-buffering one column chunk is read at a time: memory stays the same
    whatever the file's size (pre-buffering held about twice as much)."""
    parquet = pq.ParquetFile(path, pre_buffer=False, buffer_size=PARQUET_BUFFER_BYTES)
    yield from parquet.iter_batches(batch_size=batch_rows, row_groups=row_groups, columns=needed)


def open_source(path: str, input_format: str | None = None) -> Source:
    """The files of `path` (a file, or a folder whose part files are read in name order;
    names starting with '_' or '.' are skipped, as Spark's and Arrow's readers skip them).
    JobError when there is nothing to read."""
    where = Path(path)
    if not where.exists():
        raise JobError(f"input '{path}' does not exist")
    if where.is_dir():
        files = sorted(p for p in where.rglob("*") if p.is_file() and not _hidden(p.relative_to(where)))
        if input_format is None:
            files = [p for p in files if p.suffix.lower() in SUFFIXES]
    else:
        files = [where]
    if not files:
        raise JobError(f"input '{path}' holds no .csv or .parquet file")
    formats = {input_format or SUFFIXES.get(p.suffix.lower()) for p in files}
    if None in formats:
        raise JobError(f"input '{files[0]}' is neither .csv nor .parquet; name the format with --input-format")
    if len(formats) > 1:
        raise JobError(f"input '{path}' mixes CSV and Parquet files; score each format apart")
    kind = formats.pop()
    if kind not in (CSV, PARQUET):
        raise JobError(f"the local engine reads csv or parquet, not {kind}; use --engine spark for other formats")
    columns: tuple[str, ...] = ()
    rows = 0
    schemas: list[pa.Schema] = []
    for file in files:
        try:
            if kind == PARQUET:
                metadata = pq.ParquetFile(file).metadata
                schemas.append(metadata.schema.to_arrow_schema())
                names = tuple(schemas[-1].names)
                rows += metadata.num_rows
            else:
                names = _csv_header(file)
        except (pa.ArrowException, OSError) as exc:
            raise JobError(f"cannot read '{file}': {_reason(exc)}") from None
        if not columns:
            columns = names
        elif collections.Counter(names) != collections.Counter(columns):  # a column named twice in one part too
            raise JobError(f"'{file}' has other columns than '{files[0]}'; the parts of one input share their columns")
    return Source(tuple(files), kind, columns, rows if kind == PARQUET else None, tuple(schemas))


def _decoded(field: pa.Field) -> pa.Field:
    """A dictionary-encoded column as its values' type (a pandas category column in one
    part and plain text in another are the same column)."""
    return field.with_type(field.type.value_type) if pa.types.is_dictionary(field.type) else field


def _csv_header(path: Path) -> tuple[str, ...]:
    with pacsv.open_csv(path, read_options=pacsv.ReadOptions(block_size=1 << 16)) as reader:
        return tuple(reader.schema.names)


def _csv_batches(path: Path, needed: list[str]) -> Iterator[pa.RecordBatch]:
    convert = pacsv.ConvertOptions(
        column_types={name: pa.string() for name in needed},
        include_columns=needed,
        null_values=[""],
        strings_can_be_null=True,
        quoted_strings_can_be_null=False,
    )
    with pacsv.open_csv(
        path, read_options=pacsv.ReadOptions(block_size=CSV_BLOCK_BYTES), convert_options=convert
    ) as reader:
        yield from reader


def _hidden(relative: Path) -> bool:
    return any(part.startswith(("_", ".")) for part in relative.parts)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
