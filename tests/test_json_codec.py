"""Strict JSON decoding of request bodies."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model_server.errors import MAX_ECHO, InvalidInput, echo
from model_server.json_codec import decode_json, encode_json


def test_plain_json_decodes() -> None:
    assert decode_json(b'{"instances": [[1, 2.5, null]]}') == {"instances": [[1, 2.5, None]]}


def test_a_body_nested_hundreds_of_levels_deep_with_keys_below_the_top_decodes() -> None:
    """orjson parses up to 1,024 levels; counting the keys of such a body takes no recursion."""
    body = b'{"instances": ' + b"[" * 900 + b"]" * 900 + b', "version": {"a": {"b": [{"c": 1}]}}}'
    value = decode_json(body)
    assert value["version"] == {"a": {"b": [{"c": 1}]}}
    depth, inner = 0, value["instances"]
    while inner:
        depth, inner = depth + 1, inner[0]
    assert depth == 899


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"", "body is empty"),
        (b'{"instances": [[1, 2]', "not valid JSON"),
        (b'{"a": 1, "a": 2}', "key 'a' appears more than once"),
        (b'{"instances": [[NaN]]}', "NaN is not valid JSON"),
        (b'{"instances": [[-Infinity]]}', "-Infinity is not valid JSON"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    ],
)
def test_bad_bodies_are_400_with_reason(body: bytes, words: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        decode_json(body)
    assert words in caught.value.message


@pytest.mark.parametrize(
    ("body", "loc", "words"),
    [
        (rb'{"id": "\ud800"}', ["id"], "holds a lone surrogate (\\ud800)"),
        (rb'{"instances": [{"a": 1}, {"b\udfff": 2}]}', ["instances", 1], "a key holds a lone surrogate (\\udfff)"),
        (rb'{"inputs": [{"data": ["ok", "\uDC00x"]}]}', ["inputs", 0, "data", 1], "(\\udc00)"),
        (rb'{"a": "\ud83d\ude00", "b": "\ud83d"}', ["b"], "(\\ud83d)"),  # a pair, then a lone half
        (rb'"\ud800"', ["body"], "(\\ud800)"),
    ],
)
def test_a_lone_surrogate_is_a_400_naming_where_it_is(body: bytes, loc: list[object], words: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        decode_json(body)
    assert caught.value.detail == [{"loc": loc, "msg": caught.value.detail[0]["msg"], "type": "unicode"}]
    assert words in caught.value.detail[0]["msg"]
    assert "is not Unicode text" in caught.value.message


def test_surrogate_pairs_and_escaped_backslashes_are_text() -> None:
    assert decode_json(rb'{"a": "\ud83d\ude00", "b": "\\ud800"}') == {"a": "\U0001f600", "b": "\\ud800"}


def test_an_answer_never_fails_to_encode() -> None:
    # What decode_json refuses can still reach an answer by another way (a bug); the
    # encoder writes it as its JSON escape instead of raising.
    encoded = encode_json({"id": "a\ud800b", "ok": "\U0001f600é"})
    assert encoded == '{"id":"a\\ud800b","ok":"\U0001f600é"}'.encode()
    assert json.loads(encoded) == {"id": "a\ud800b", "ok": "\U0001f600é"}


def test_an_echoed_key_is_cut_to_max_echo_characters() -> None:
    key = "k" * 1_000_000
    with pytest.raises(InvalidInput) as caught:
        decode_json(f'{{"{key}": 1, "{key}": 2}}'.encode())
    message = caught.value.message
    assert f"key '{'k' * MAX_ECHO}\u2026' (1000000 characters) appears more than once" in message
    assert len(message) < 300


def test_locations_and_echoed_values_are_cut_in_one_place() -> None:
    long = "x" * (MAX_ECHO + 1)
    assert echo("short") == "'short'" and echo("x" * MAX_ECHO) == repr("x" * MAX_ECHO)
    assert echo(long) == f"'{'x' * MAX_ECHO}\u2026' ({MAX_ECHO + 1} characters)"
    assert echo("\u202eevil") == "'\\u202eevil'"  # escapes show direction marks
    error = InvalidInput.at(["instances", 0, long], "is not a feature of this model", "unknown")
    assert error.detail[0]["loc"] == ["instances", 0, "x" * MAX_ECHO + "\u2026"]
    assert error.message == f"invalid input: instances[0]['{'x' * MAX_ECHO}\u2026']: is not a feature of this model"


@pytest.mark.parametrize(
    "body",
    [
        b'{"instances": [{"a": 1, "b": 2}, {"a": 3, "a": 4}]}',  # a duplicate inside a record
        b'{"a" :1, "a": 2}',  # whitespace before the colon
        b'{"a":\n1,"b":{"c":1,"c" \t: 2}}',
        b'{"note": "x\\":", "note": 1}',  # a string that looks like a key end
    ],
)
def test_a_duplicated_key_is_found_at_any_depth_and_spacing(body: bytes) -> None:
    with pytest.raises(InvalidInput) as caught:
        decode_json(body)
    assert "appears more than once" in caught.value.message


def test_strings_that_look_like_keys_are_values() -> None:
    body = b'{"instances": [{"name": "a\\": 1, \\"b\\":"}], "version": "v1"}'
    assert decode_json(body) == json.loads(body)


@settings(max_examples=300, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
        lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4),
        max_leaves=20,
    )
)
def test_decoding_equals_the_json_module(value: object) -> None:
    for body in (json.dumps(value).encode(), json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")):
        try:
            expected = json.loads(body)
        except (UnicodeDecodeError, ValueError):
            with pytest.raises(InvalidInput):
                decode_json(body)
            continue
        assert decode_json(body) == expected


@settings(max_examples=300, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
        lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4),
        max_leaves=20,
    )
)
def test_encoding_equals_the_json_module_and_refuses_what_it_refuses(value: object) -> None:
    try:
        expected = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except ValueError:  # NaN or infinity
        with pytest.raises(ValueError):
            encode_json(value)
        return
    assert json.loads(encode_json(value)) == json.loads(expected.encode("utf-8", "backslashreplace"))


def test_numpy_arrays_encode_as_lists() -> None:
    assert encode_json({"p": np.array([[0.25, 0.75]])}) == b'{"p":[[0.25,0.75]]}'
    with pytest.raises(ValueError):
        encode_json({"p": np.array([np.nan])})
