"""Path parameters of engine routes, decoded from the raw URL exactly once.

A route such as ``/v1/kv/{key}`` names its parameters as whole path
segments. aiohttp's own decoding is lenient: an invalid escape (``%ff%fe``,
not UTF-8; ``%zz``, not hex) is kept as literal text, so two different URLs
(``/v1/kv/%ff%fe`` and ``/v1/kv/%25ff%25fe``) would name the same key. Here a
parameter is the percent-decoding of its raw segment, byte for byte, and it
must then be UTF-8 text without NUL or lone surrogates; anything else is a
``BadRequest`` that says what to fix. Every URL names at most one parameter
value and every value has exactly one canonical URL (``urllib.parse.quote``
with ``safe=""``).

Pure: no I/O, no aiohttp.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from legion.errors import BadRequest

_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


@dataclass(frozen=True, slots=True)
class RoutePattern:
    """A route path compiled to match raw (still percent-encoded) URL paths."""

    path: str
    regex: re.Pattern[str]
    names: tuple[str, ...]

    def match(self, raw_path: str) -> dict[str, str] | None:
        """The decoded parameters of ``raw_path``; None if the path is not this route's.

        Raises BadRequest when a parameter's segment does not decode exactly."""
        found = self.regex.fullmatch(raw_path)
        if found is None:
            return None
        return {name: decode_segment(found.group(name), name) for name in self.names}


def compile_route(path: str) -> RoutePattern:
    """Compile ``path``; every ``{name}`` must be a whole segment (ValueError otherwise)."""
    parts: list[str] = []
    names: list[str] = []
    for segment in path.split("/"):
        param = _PARAM.fullmatch(segment)
        if param is not None:
            names.append(param.group(1))
            parts.append(f"(?P<{param.group(1)}>[^/]+)")
        elif "{" in segment or "}" in segment:
            raise ValueError(f"route {path!r}: a parameter must be a whole path segment like {{name}}")
        else:
            parts.append(re.escape(segment))
    if len(set(names)) != len(names):
        raise ValueError(f"route {path!r} names a parameter twice")
    return RoutePattern(path, re.compile("/".join(parts)), tuple(names))


def decode_segment(raw: str, name: str = "parameter") -> str:
    """The exact percent-decoding of one raw path segment, as text.

    BadRequest if an escape is not ``%`` and two hex digits, if the bytes are
    not UTF-8 (this refuses lone surrogates too), or if they hold a NUL."""
    bad = _BAD_ESCAPE.search(raw)
    if bad is not None:
        raise BadRequest(
            f"path {name} {raw!r:.200} has an invalid escape at character {bad.start()}: "
            "percent-encode it with two hex digits per byte (a literal % is %25)"
        )
    try:
        out = unquote_to_bytes(raw)
    except UnicodeEncodeError:  # a lone surrogate in the raw text itself
        raise BadRequest(f"path {name} {raw!r:.200} is not valid Unicode text") from None
    try:
        text = out.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest(
            f"path {name} {raw!r:.200} does not decode to UTF-8 text: percent-encode the UTF-8 bytes of the text"
        ) from None
    if "\x00" in text:
        raise BadRequest(f"path {name} {raw!r:.200} holds a NUL character, which names cannot contain")
    return text
