"""Newline-delimited JSON, the body format of bulk requests.

Pure: turns chunks of bytes (as they arrive from a socket) into numbered,
parsed lines. A line that is not JSON does not stop the stream: it comes
out as a ``BadRequest`` in place of its value, so a bulk handler can report
it and carry on with the next line. Blank lines are skipped but counted, so
line numbers match what an editor shows.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any, NamedTuple

from legion import json_codec
from legion.errors import BadRequest

LINE_BYTES_MAX = 8 * 1024 * 1024


class Line(NamedTuple):
    """One line of an NDJSON body: its 1-based number and its value, or why it has none.

    ``raw`` is the line's bytes as received (without the newline) when it parsed,
    so that a handler may keep the text it was sent instead of encoding the value again.
    ``plain`` says that ``raw`` is UTF-8 holding neither a lone surrogate (not even as
    a ``\\u`` escape) nor a NUL byte: text that needs no check before it is kept."""

    number: int
    value: Any = None
    error: BadRequest | None = None
    raw: bytes = b""
    plain: bool = False


# The C scanner json.loads ends in, called directly: for a line of a few hundred bytes, json.loads's
# own steps (encoding detection, two whitespace matches, the checks around them) cost as much as the scan.
_scan_once = json.JSONDecoder().scan_once
_JSON_WHITESPACE = " \t\n\r"


def parse_line(number: int, raw: bytes) -> Line:
    if len(raw) > LINE_BYTES_MAX:
        return Line(number, error=BadRequest(f"line {number} is over {LINE_BYTES_MAX} bytes"))
    try:
        plain, value = json_codec.read_plain(raw)
        return Line(number, value, None, raw, True) if plain else Line(number, _loads(raw), None, raw)
    except (ValueError, UnicodeDecodeError) as exc:
        return Line(number, error=BadRequest(f"line {number} is not valid JSON: {exc}"))
    except RecursionError:  # a line nested thousands deep: bad input, not a server error
        return Line(number, error=BadRequest(f"line {number} is nested too deeply to be read"))


def _loads(raw: bytes) -> Any:
    """``json.loads(raw)``: the UTF-8 text scanned at once, or json.loads itself for anything else.

    ``parse_line`` tries ``json_codec.read_plain`` first, about three times
    faster than json's scanner; what it leaves comes here, and is accepted
    or refused exactly as json.loads does, with its message. Anything the
    direct scan does not take as it is —
    another encoding, a byte order mark, leading whitespace, invalid JSON —
    goes to json.loads itself."""
    try:
        text = raw.decode("utf-8")
        value, end = _scan_once(text, 0)
    except (ValueError, StopIteration):  # UnicodeDecodeError is a ValueError
        return json.loads(raw)
    if end != len(text) and text[end:].strip(_JSON_WHITESPACE):
        return json.loads(raw)  # extra data after the value: json.loads says so
    return value


async def lines(chunks: AsyncIterable[bytes]) -> AsyncIterator[Line]:
    """The parsed, non-blank lines of an NDJSON byte stream.

    Memory stays bounded: a line longer than ``LINE_BYTES_MAX`` is reported and
    skipped up to its newline without being buffered."""
    buffer = b""
    number = 0
    skipping = False  # inside an oversized line, dropping bytes until its newline
    async for chunk in chunks:
        if skipping:
            cut = chunk.find(b"\n")
            if cut < 0:
                continue
            chunk, skipping = chunk[cut + 1 :], False
        buffer += chunk
        *complete, buffer = buffer.split(b"\n")
        for raw in complete:
            number += 1
            if raw.strip():
                yield parse_line(number, raw)
        if len(buffer) > LINE_BYTES_MAX:
            number += 1
            yield Line(number, error=BadRequest(f"line {number} is over {LINE_BYTES_MAX} bytes"))
            buffer, skipping = b"", True
    if buffer.strip() and not skipping:
        yield parse_line(number + 1, buffer)
