"""JSON read and written with orjson wherever it gives what the ``json`` module gives, else with ``json``.

Pure. orjson parses and encodes several times faster than the standard
library, which matters on the hot paths: every line of a bulk body, every
answer a node sends and every answer the client reads. It is not a drop-in
replacement, so each function keeps ``json``'s results where they differ:

- ``loads``: orjson reads an integer of more than 64 bits as a float (``json``
  keeps it an int), and refuses what ``json`` accepts — NaN and Infinity, a
  lone surrogate escape, numbers past a double, another encoding than UTF-8,
  a byte order mark. Text that may hold such an integer (a run of 19 digits:
  past i64's range once negative) and anything orjson refuses go to
  ``json.loads``, which accepts or refuses it with its own message.
- ``dumps``: orjson writes UTF-8 without escaping non-ASCII text and with no
  spaces — the same JSON value, shorter. What it refuses (an integer past 64
  bits, a lone surrogate, a type it does not know) goes to ``json.dumps``,
  which encodes it or raises as before. One difference stays: a NaN or an
  infinity becomes ``null``, which is JSON, where ``json.dumps`` writes
  ``NaN``, which is not.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

# Every digit becomes "0" and every other byte ".", so one substring search in C finds a run of 19 digits.
_DIGITS_ONLY = bytes(0x30 if 0x30 <= c <= 0x39 else 0x2E for c in range(256))
_LONG_DIGIT_RUN = b"0" * 19


def read_plain(text: bytes) -> tuple[bool, Any]:
    """``(True, value)`` when orjson parses ``text`` as ``json.loads`` would; ``(False, None)`` when only ``json.loads`` can say.

    What orjson parses is UTF-8 holding neither a surrogate nor a NUL byte."""
    if _LONG_DIGIT_RUN in text.translate(_DIGITS_ONLY):
        return False, None
    try:
        return True, orjson.loads(text)
    except orjson.JSONDecodeError:
        return False, None


def loads(text: bytes) -> Any:
    """``json.loads(text)``, faster for most text."""
    plain, value = read_plain(text)
    return value if plain else json.loads(text)


def dumps(value: Any) -> bytes:
    """``value`` as JSON bytes (see the module docstring for how it differs from ``json.dumps``)."""
    try:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)
    except TypeError:  # orjson.JSONEncodeError: a value orjson does not encode; json raises or encodes it
        return json.dumps(value).encode()
