"""Strict JSON for request and response bodies, shared by every HTTP route."""

from __future__ import annotations

import json
import math
import re
from typing import Any

import orjson

from model_server.errors import InvalidInput, echo


def decode_json(body: bytes) -> Any:
    """Parse a body, rejecting what the json module would quietly accept.

    Duplicated keys would otherwise keep only the last value; NaN and Infinity are
    not JSON, and a quietly accepted one would reach the model. A lone surrogate
    escape (`"\\ud800"`) is JSON but no Unicode text: it would reach the model, and
    any answer that echoes it could not be encoded as UTF-8.

    orjson parses a body about three times as fast as the json module but keeps the last
    of duplicated keys, so its result is taken only when the body provably has none:
    every key in the text is a string followed by a colon, so the colons that follow a
    quote (`_KEY_END`, which may also match inside a string) are at least as many as the
    keys written, and these at least as many as the keys parsed; when the count equals
    the keys parsed, no key was dropped. orjson also reads an integer beyond 64 bits as a
    float, so a body with 19 digits in a row is not given to it. Any other body (one
    orjson refuses, one with a surrogate escape or a `":` inside a string) takes the json
    module's exact path below, which says what is wrong.
    """
    if not body:
        raise InvalidInput.at(["body"], "the body is empty; send a JSON object", "empty")
    if _NOT_FOR_ORJSON.search(body) is None:
        try:
            value = orjson.loads(body)
        except orjson.JSONDecodeError:
            pass
        else:
            written = len(_KEY_END.findall(body))
            if written == 0 or (type(value) is dict and written == len(value)) or written == _keys(value):
                return value
    return _decode_exactly(body)


def finite_number(value: Any) -> float | None:
    """A parsed JSON number as a finite float; None for anything else: a bool, text, null,
    NaN or an infinity, or an integer too large for a float (JSON allows any size)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _keys(value: Any) -> int:
    """How many keys the objects in a parsed value hold, at any depth (walked with a list,
    not by recursion: orjson parses bodies nested up to 1,024 levels deep)."""
    keys, waiting = 0, [value]
    while waiting:
        container = waiting.pop()
        if type(container) is dict:
            keys += len(container)
            container = container.values()
        waiting.extend(child for child in container if type(child) in _CONTAINERS)
    return keys


_CONTAINERS = (dict, list)


def _decode_exactly(body: bytes) -> Any:
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
    no answer fails to encode, whatever it echoes. orjson writes nearly every answer (and
    numpy arrays as they are); what it refuses (a lone surrogate, an integer beyond 64
    bits) and any answer where it may have written NaN or infinity as `null` go through
    the json module, which writes the former and refuses the latter.
    """
    try:
        encoded = orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)
    except TypeError:
        return _encode_exactly(value)
    return _encode_exactly(value) if b"null" in encoded else encoded


def _encode_exactly(value: Any) -> bytes:
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


def _as_list(value: Any) -> Any:
    """numpy arrays and scalars for the json module, as orjson writes them."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON")


def _surrogate_message(char: str) -> str:
    return (
        f"holds a lone surrogate (\\u{ord(char):04x}), which is not Unicode text; "
        "send text as UTF-8, or escape a character beyond U+FFFF as a surrogate pair"
    )


# A \\uD800-\\uDFFF escape in a body (a cheap test before looking for lone ones), and a
# surrogate in a decoded string.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")
# What orjson does not read as the json module does: a surrogate escape, a long number.
_NOT_FOR_ORJSON = re.compile(rb"\\u[dD][89a-fA-F]|[0-9]{19}")
# The end of a key: a quote, optional whitespace, a colon (also found inside some strings).
_KEY_END = re.compile(rb'"[ \t\n\r]*:')
# Built once: json.loads and json.dumps with options build a new codec on every call.
_DECODER = json.JSONDecoder(object_pairs_hook=_unique_keys, parse_constant=_reject_constant)
_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"), default=_as_list)
