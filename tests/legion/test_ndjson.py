"""NDJSON bodies: numbered lines, bad lines reported in place, the raw text of good lines kept."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

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
