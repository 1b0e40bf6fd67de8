"""NDJSON bodies: numbered lines, bad lines reported in place, the raw text of good lines kept."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from hypothesis import given, settings
from hypothesis import strategies as st

from legion import ndjson


def _lines(*chunks: bytes) -> list[ndjson.Line]:
    async def stream() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    async def collect() -> list[ndjson.Line]:
        return [line async for line in ndjson.lines(stream())]

    return asyncio.run(collect())


def test_lines_split_across_chunks_are_numbered_parsed_and_keep_their_text():
    found = _lines(b'{"a": 1}\n\n{"b"', b': [2, 3]}\r\n{bad\n', b'{"c": "\xc3\xa9"}')
    assert [(line.number, line.value) for line in found] == [(1, {"a": 1}), (3, {"b": [2, 3]}), (4, None), (5, {"c": "é"})]
    assert [line.raw for line in found] == [b'{"a": 1}', b'{"b": [2, 3]}\r', b"", b'{"c": "\xc3\xa9"}']
    assert found[2].error is not None and "line 4" in found[2].error.message


json_texts = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
).map(lambda value: json.dumps(value, ensure_ascii=False))
pieces = st.sampled_from(["", " ", "\t", "\r", "x", "]", "\ufeff", "{", '"', "\\u00e9", "\\ud800"])


@settings(max_examples=300, deadline=None)
@given(pieces, json_texts, pieces, st.sampled_from(["utf-8", "utf-16", "utf-8-sig"]))
def test_a_line_parses_exactly_as_json_loads_parses_it(before, text, after, encoding):
    raw = (before + text + after).encode(encoding, "surrogatepass")
    try:
        expected = json.loads(raw)
    except ValueError:  # UnicodeDecodeError and JSONDecodeError
        expected = ValueError
    line = ndjson.parse_line(1, raw)
    if expected is ValueError:
        assert line.error is not None and line.value is None
    else:
        assert line.error is None and json.dumps(line.value) == json.dumps(expected)
    if line.plain:  # text kept as it is: UTF-8, no NUL byte, no lone surrogate in what it holds
        assert b"\x00" not in raw and raw.decode("utf-8")
        json.dumps(line.value, ensure_ascii=False).encode("utf-8")


def test_only_a_line_free_of_surrogates_and_nul_bytes_is_plain():
    assert ndjson.parse_line(1, '{"a": "é \\ud83d\\ude00"}'.encode()).plain
    for raw in (b'{"a": "\\ud800"}', b'{"a": "\xed\xa0\x80"}', '{"a": 1}'.encode("utf-16"), b'{"a": NaN}'):
        line = ndjson.parse_line(1, raw)
        assert not line.plain


def test_a_line_nested_too_deeply_is_a_bad_line_not_a_crash():
    line = ndjson.parse_line(7, b"[" * 100_000 + b"]" * 100_000)
    assert line.error is not None and "line 7" in line.error.message


def test_integers_past_64_bits_stay_integers():
    # orjson reads these as floats; the line must parse as json.loads parses it.
    for text in ("-9223372036854775809", "18446744073709551616", "123456789012345678901234567890"):
        line = ndjson.parse_line(1, f'{{"n": {text}, "s": "x"}}'.encode())
        assert line.error is None and line.value == {"n": int(text), "s": "x"} and type(line.value["n"]) is int
