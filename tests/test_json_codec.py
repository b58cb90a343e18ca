"""Strict JSON decoding of request bodies."""

from __future__ import annotations

import pytest

from model_server.errors import InvalidInput
from model_server.json_codec import decode_json


def test_plain_json_decodes() -> None:
    assert decode_json(b'{"instances": [[1, 2.5, null]]}') == {"instances": [[1, 2.5, None]]}


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
