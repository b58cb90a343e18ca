"""The one table of Open Inference Protocol datatypes: each datatype's little-endian
numpy dtype and the field of the gRPC `InferTensorContents` that carries it.

REST and gRPC decode tensors with it, and the OpenAPI document lists its names.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Datatype:
    name: str
    numpy: str  # little-endian numpy dtype of the raw (binary) form
    grpc_contents: str  # field of InferTensorContents holding typed values


NUMERIC = (
    Datatype("FP64", "<f8", "fp64_contents"),
    Datatype("FP32", "<f4", "fp32_contents"),
    Datatype("FP16", "<f2", ""),  # no typed field: raw contents only
    Datatype("INT64", "<i8", "int64_contents"),
    Datatype("INT32", "<i4", "int_contents"),
    Datatype("INT16", "<i2", "int_contents"),
    Datatype("INT8", "i1", "int_contents"),
    Datatype("UINT64", "<u8", "uint64_contents"),
    Datatype("UINT32", "<u4", "uint_contents"),
    Datatype("UINT16", "<u2", "uint_contents"),
    Datatype("UINT8", "u1", "uint_contents"),
)
BY_NAME = {datatype.name: datatype for datatype in NUMERIC}
NUMERIC_NAMES = tuple(datatype.name for datatype in NUMERIC)

# Text: categorical inputs and class-name outputs. Raw BYTES elements are each a 4-byte
# little-endian length and that many bytes.
BYTES = "BYTES"
TEXT = Datatype(BYTES, "object", "bytes_contents")
FP64 = "FP64"
# Every datatype an input tensor may have, by name.
INPUTS = {**BY_NAME, BYTES: TEXT}


@dataclass(frozen=True)
class Limits:
    """The values a numeric datatype holds when they come as JSON numbers or typed gRPC
    contents (raw bytes always fit theirs)."""

    lowest: float
    highest: float
    whole: bool  # whole numbers only (the integer types)


def limits(datatype: Datatype) -> Limits | None:
    """A numeric datatype's limits; None for FP64, which holds any finite number."""
    kind = np.dtype(datatype.numpy)
    if kind == np.float64:
        return None
    if kind.kind == "f":
        largest = float(np.finfo(kind).max)
        return Limits(-largest, largest, False)
    info = np.iinfo(kind)
    # Values are compared as float64, which holds neither 2**63 - 1 nor 2**64 - 1: the
    # highest is then the largest float64 below the type's end, so that what the check
    # takes and what the OpenAPI document allows are the same numbers.
    highest = float(info.max) if float(info.max) == info.max else float(np.nextafter(float(info.max + 1), 0.0))
    return Limits(int(info.min), int(highest), True)


# By name, worked out once: the OIP codec checks every request's values against them.
LIMITS = {datatype.name: limits(datatype) for datatype in NUMERIC}
