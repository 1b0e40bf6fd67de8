"""json_codec: what orjson reads and writes is what the json module reads and writes."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from legion import json_codec

values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5) | st.integers(), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(values)
def test_dumps_writes_the_value_json_writes(value):
    assert json.loads(json_codec.dumps(value)) == json.loads(json.dumps(value))


@settings(max_examples=300, deadline=None)
@given(values, st.booleans())
def test_loads_reads_what_json_reads(value, ascii_only):
    text = json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    try:
        expected = json.loads(text)
    except ValueError:
        with pytest.raises(ValueError):
            json_codec.loads(text)
        return
    found = json_codec.loads(text)
    assert found == expected and json.dumps(found) == json.dumps(expected)  # ints stay ints, floats floats


def test_integers_past_64_bits_and_nan_stay_what_json_makes_of_them():
    assert json_codec.loads(b"[-9223372036854775809, 18446744073709551616]") == [-9223372036854775809, 18446744073709551616]
    assert math.isnan(json_codec.loads(b"NaN"))
    assert json_codec.dumps({"n": 2**70}) == json.dumps({"n": 2**70}).encode()
    assert json_codec.dumps({"x": float("nan"), "y": float("inf")}) == b"{\"x\":null,\"y\":null}"  # JSON, where json.dumps writes NaN


def test_plain_text_is_read_by_orjson_and_the_rest_is_not():
    assert json_codec.read_plain(b'{"a": "\\ud83d\\ude00"}') == (True, {"a": "\U0001f600"})
    for text in (b'"\\ud800"', b'"\xed\xa0\x80"', b"NaN", b"1" * 19, b"\xef\xbb\xbf{}"):
        assert json_codec.read_plain(text) == (False, None)
