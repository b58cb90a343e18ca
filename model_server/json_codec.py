"""Strict JSON for request and response bodies, shared by every HTTP route."""

from __future__ import annotations

import json
from typing import Any

from .errors import InvalidInput


def decode_json(body: bytes) -> Any:
    """Parse a body, rejecting what the json module would quietly accept.

    Duplicated keys would otherwise keep only the last value; NaN and Infinity are
    not JSON, and a quietly accepted one would reach the model.
    """
    if not body:
        raise InvalidInput.at(["body"], "the body is empty; send a JSON object", "empty")
    try:
        return _DECODER.decode(body.decode("utf-8"))
    except _DuplicateKey as exc:
        raise InvalidInput.at(["body"], f"key '{exc.key}' appears more than once in one object", "duplicate") from None
    except _NonFiniteConstant as exc:
        raise InvalidInput.at(
            ["body"], f"{exc.token} is not valid JSON; send null for a missing value", "finite"
        ) from None
    except UnicodeDecodeError:
        raise InvalidInput.at(["body"], "the body is not UTF-8 text", "json") from None
    except (json.JSONDecodeError, RecursionError) as exc:
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else "nested too deeply"
        where = f" at line {exc.lineno} column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else ""
        raise InvalidInput.at(["body"], f"the body is not valid JSON: {reason}{where}", "json") from None
    except ValueError:
        # Python refuses integers of more than 4,300 digits (int_max_str_digits).
        raise InvalidInput.at(["body"], "the body holds a number with too many digits", "json") from None


def encode_json(value: Any) -> bytes:
    """A response body: compact UTF-8 JSON; NaN or infinity is a bug, not output."""
    return _ENCODER.encode(value).encode("utf-8")


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        self.key = key


class _NonFiniteConstant(ValueError):
    def __init__(self, token: str) -> None:
        self.token = token


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return result


def _reject_constant(token: str) -> Any:
    raise _NonFiniteConstant(token)


# Built once: json.loads and json.dumps with options build a new codec on every call.
_DECODER = json.JSONDecoder(object_pairs_hook=_unique_keys, parse_constant=_reject_constant)
_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
