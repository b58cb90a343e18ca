"""Strict JSON for request and response bodies, shared by every HTTP route."""

from __future__ import annotations

import json
import re
from typing import Any

from model_server.errors import InvalidInput, echo


def decode_json(body: bytes) -> Any:
    """Parse a body, rejecting what the json module would quietly accept.

    Duplicated keys would otherwise keep only the last value; NaN and Infinity are
    not JSON, and a quietly accepted one would reach the model. A lone surrogate
    escape (`"\\ud800"`) is JSON but no Unicode text: it would reach the model, and
    any answer that echoes it could not be encoded as UTF-8.
    """
    if not body:
        raise InvalidInput.at(["body"], "the body is empty; send a JSON object", "empty")
    try:
        value = _DECODER.decode(body.decode("utf-8"))
    except _DuplicateKey as exc:
        raise InvalidInput.at(
            ["body"], f"key {echo(exc.key)} appears more than once in one object", "duplicate"
        ) from None
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
    # Decoded strings hold a surrogate only where the body escaped one; a well-formed pair
    # (an emoji sent as ASCII) decodes to one character, so only the walk below tells.
    if _SURROGATE_ESCAPE.search(body) is not None:
        _refuse_lone_surrogates(value)
    return value


def encode_json(value: Any) -> bytes:
    """A response body: compact UTF-8 JSON; NaN or infinity is a bug, not output.

    A lone surrogate cannot be UTF-8; it is written as its JSON escape (`\\ud800`), so
    no answer fails to encode, whatever it echoes.
    """
    return _ENCODER.encode(value).encode("utf-8", "backslashreplace")


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


def _refuse_lone_surrogates(value: Any) -> None:
    """InvalidInput naming the first string (or key) that holds a lone surrogate."""
    stack: list[tuple[list[Any], Any]] = [([], value)]
    while stack:
        loc, item = stack.pop()
        if isinstance(item, str):
            found = _SURROGATE.search(item)
            if found is not None:
                raise InvalidInput.at(loc or ["body"], _surrogate_message(found.group()), "unicode")
        elif isinstance(item, dict):
            for key in item:
                found = _SURROGATE.search(key)
                if found is not None:
                    raise InvalidInput.at(loc or ["body"], "a key " + _surrogate_message(found.group()), "unicode")
            stack.extend(([*loc, key], child) for key, child in reversed(item.items()))
        elif isinstance(item, list):
            stack.extend(([*loc, i], item[i]) for i in reversed(range(len(item))))


def _surrogate_message(char: str) -> str:
    return (
        f"holds a lone surrogate (\\u{ord(char):04x}), which is not Unicode text; "
        "send text as UTF-8, or escape a character beyond U+FFFF as a surrogate pair"
    )


# A \\uD800-\\uDFFF escape in a body (a cheap test before looking for lone ones), and a
# surrogate in a decoded string.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")
# Built once: json.loads and json.dumps with options build a new codec on every call.
_DECODER = json.JSONDecoder(object_pairs_hook=_unique_keys, parse_constant=_reject_constant)
_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
