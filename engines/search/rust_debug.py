"""Rust ``Debug`` text, read into plain values and written back.

tantivy-py shows a parsed query only as the Rust ``Debug`` text of its tree
(``repr(query)``); ``query_tree`` types that tree, and this module owns the
syntax underneath:

- ``parse_debug`` reads one value: ``Struct`` (``Name { a: 1, b: [2] }``),
  ``Call`` (``Name(x, y)`` or ``Name(key=value)``), ``Ident`` (a unit struct
  or variant: ``Unbounded``), ``list`` (``[..]``), ``tuple`` (``(a, b)``,
  ``(a,)``), ``Map`` (``{k: v}``), ``str`` (Rust escapes: ``\\"``,
  ``\\\\``, ``\\n``, ``\\r``, ``\\t``, ``\\0``, ``\\u{1f600}``), ``int``, ``float``
  (``1.5``, ``2.0``, ``1e300``, ``inf``, ``NaN``) and ``bool`` — plus
  tantivy's ``Term``, whose ``Debug`` is hand-written and not Rust syntax:
  ``Term(field=7, type=Json, path=a.b, type=Str, "foo")``, with a bare
  RFC 3339 text for a Date (``2020-01-01T00:00:00Z``).
- ``render_debug`` writes a value back as tantivy prints it: floats as
  Rust's ``{:?}`` of an f64 (``f64_debug_text``), except a ``Boost``'s
  ``boost=`` and a ``Const``'s ``score=``, which tantivy prints with ``{}``
  of an f32 (``f32_display_text``); strings as Rust's ``{:?}``
  (``rust_debug_str``: non-printable and grapheme-extending characters as
  ``\\u{..}``; the same as Rust for every character Python's Unicode tables
  assign — a character assigned in a later Unicode version is escaped here
  and printed as is by Rust).

Term values are plain Python values: ``str`` for Str, ``int`` for U64/I64,
``float`` for F64, ``bool`` for Bool, ``bytes`` for Bytes, and the text
tantivy prints for Date (RFC 3339) and Facet. A term whose value tantivy
could not print (e.g. not UTF-8) has ``value=None``. tantivy prints a JSON
path with ``.`` between segments, so a JSON key that holds a dot reads as
two segments: the text cannot tell them apart.

Pure: no I/O, no tantivy. Text that is not such a value raises
``DebugSyntaxError`` (a ``ValueError``) naming the offset and what was
expected there; nesting deeper than ``NESTING_MAX`` is refused the same way.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Union

from engines.search.ranking import as_f32

NESTING_MAX = 256  # containers inside containers before the text is refused
ERROR_CONTEXT_CHARS = 40

TERM_VALUE_TYPES = frozenset({"Str", "U64", "I64", "F64", "Bool", "Date", "Facet", "Bytes", "IpAddr"})
_F32_DISPLAY_KEYWORDS = frozenset({"boost", "score"})  # tantivy prints these with `{}` (Display), not `{:?}`

TermValue = Union[str, int, float, bool, bytes, None]


class DebugSyntaxError(ValueError):
    """The text is not a Rust ``Debug`` value this module can read."""


# --- values -----------------------------------------------------------


@dataclass(frozen=True)
class Struct:
    """``Name { field: value, ... }`` (a unit struct ``Name`` is an ``Ident``)."""

    name: str
    fields: tuple[tuple[str, Value], ...]

    def get(self, field: str) -> Value:
        for key, value in self.fields:
            if key == field:
                return value
        raise KeyError(field)


@dataclass(frozen=True)
class Call:
    """``Name(value, ...)`` or ``Name(key=value, ...)`` (a tuple struct, or a custom ``Debug``)."""

    name: str
    args: tuple[Value, ...] = ()
    kwargs: tuple[tuple[str, Value], ...] = ()


@dataclass(frozen=True)
class Ident:
    """A bare identifier: a unit struct or enum variant such as ``Unbounded`` or ``AllQuery``."""

    name: str


@dataclass(frozen=True)
class Map:
    """``{key: value, ...}``: a Rust map, entries in printed order."""

    entries: tuple[tuple[Value, Value], ...]


@dataclass(frozen=True)
class Term:
    """A tantivy term: field id, value type and value; ``json_path`` is set for a JSON field's term."""

    field_id: int
    value_type: str
    value: TermValue
    json_path: str | None = None


Value = Union[Struct, Call, Ident, Map, Term, list, tuple, str, int, float, bool]


# --- reading ---------------------------------------------------------------------------------

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NUMBER = re.compile(r"-?(?:inf|NaN|[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)")
_UNICODE_ESCAPE = re.compile(r"u\{([0-9a-fA-F]{1,6})\}")
_KEYWORD_ARGUMENT = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)=")
_SIMPLE_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "0": "\0", "\\": "\\", '"': '"', "'": "'"}


def parse_debug(text: str) -> Value:
    """Read one Rust ``Debug`` value that spans all of ``text`` (surrounding spaces allowed)."""
    reader = _Reader(text)
    value = reader.value()
    reader.skip_spaces()
    if reader.pos != len(text):
        raise reader.error("the end of the text")
    return value


class _Reader:
    """A cursor over the text with one method per grammar rule."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.depth = 0

    def error(self, expected: str) -> DebugSyntaxError:
        found = self.text[self.pos : self.pos + ERROR_CONTEXT_CHARS]
        where = f"{found!r}" if found else "the end of the text"
        return DebugSyntaxError(f"expected {expected} at offset {self.pos}, found {where}")

    def skip_spaces(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def accept(self, literal: str) -> bool:
        self.skip_spaces()
        if self.text.startswith(literal, self.pos):
            self.pos += len(literal)
            return True
        return False

    def expect(self, literal: str) -> None:
        if not self.accept(literal):
            raise self.error(repr(literal))

    def value(self) -> Value:
        self.skip_spaces()
        if self.pos >= len(self.text):
            raise self.error("a value")
        char = self.text[self.pos]
        if char == '"':
            return self.string()
        if char in "[({":
            return self.container(char)
        if _NUMBER.match(self.text, self.pos) and (char == "-" or char.isdigit()):
            return self.number()
        if _IDENT.match(self.text, self.pos):
            return self.named()
        raise self.error("a value")

    def enter(self) -> None:
        self.depth += 1
        if self.depth > NESTING_MAX:
            raise self.error(f"at most {NESTING_MAX} nested levels")

    def container(self, opening: str) -> Value:
        self.enter()
        self.pos += 1
        closing = {"[": "]", "(": ")", "{": "}"}[opening]
        items: list[Value] = []
        entries: list[tuple[Value, Value]] = []
        trailing_comma = False
        while not self.accept(closing):
            if items or entries:
                self.expect(",")
                trailing_comma = True
                if self.accept(closing):
                    break
            item = self.value()
            trailing_comma = False
            if opening == "{":
                self.expect(":")
                entries.append((item, self.value()))
            else:
                items.append(item)
        self.depth -= 1
        if opening == "{":
            return Map(tuple(entries))
        if opening == "[":
            return items
        if len(items) == 1 and not trailing_comma:
            raise self.error("a comma in a one-element tuple")
        return tuple(items)

    def string(self) -> str:
        self.pos += 1  # the opening quote
        out: list[str] = []
        text = self.text
        while True:
            end = self.pos
            while end < len(text) and text[end] not in '"\\':
                end += 1
            out.append(text[self.pos : end])
            self.pos = end
            if end >= len(text):
                raise self.error("a closing '\"'")
            if text[end] == '"':
                self.pos += 1
                return "".join(out)
            out.append(self.escape())

    def escape(self) -> str:
        self.pos += 1  # the backslash
        char = self.text[self.pos : self.pos + 1]
        if char in _SIMPLE_ESCAPES and char:
            self.pos += 1
            return _SIMPLE_ESCAPES[char]
        match = _UNICODE_ESCAPE.match(self.text, self.pos)
        if match is None or int(match.group(1), 16) > 0x10FFFF:
            raise self.error("an escape (\\n \\r \\t \\0 \\\\ \\\" \\' or \\u{hex})")
        self.pos = match.end()
        return chr(int(match.group(1), 16))

    def number(self) -> int | float:
        match = _NUMBER.match(self.text, self.pos)
        assert match is not None
        self.pos = match.end()
        token = match.group()
        if token.lstrip("-").isdigit():
            return int(token)
        return float(token.replace("NaN", "nan"))

    def identifier(self) -> str:
        self.skip_spaces()
        match = _IDENT.match(self.text, self.pos)
        if match is None:
            raise self.error("a name")
        self.pos = match.end()
        return match.group()

    def named(self) -> Value:
        name = self.identifier()
        if name in ("true", "false"):
            return name == "true"
        if name in ("inf", "NaN"):
            return float(name.replace("NaN", "nan"))
        if self.text.startswith("(", self.pos):
            return self.term() if name == "Term" else self.call(name)
        save = self.pos
        if self.accept("{"):
            self.pos -= 1
            return self.struct_fields(name)
        self.pos = save
        return Ident(name)

    def struct_fields(self, name: str) -> Struct:
        self.enter()
        self.expect("{")
        fields: list[tuple[str, Value]] = []
        while not self.accept("}"):
            if fields:
                self.expect(",")
                if self.accept("}"):
                    break
            key = self.identifier()
            self.expect(":")
            fields.append((key, self.value()))
        self.depth -= 1
        return Struct(name, tuple(fields))

    def call(self, name: str) -> Call:
        self.enter()
        self.expect("(")
        args: list[Value] = []
        kwargs: list[tuple[str, Value]] = []
        while not self.accept(")"):
            if args or kwargs:
                self.expect(",")
            keyword = _KEYWORD_ARGUMENT.match(self.text, self.pos)
            if keyword:
                self.pos = keyword.end()
                kwargs.append((keyword.group(1), self.value()))
            elif kwargs:
                raise self.error("key=value after a key=value argument")
            else:
                args.append(self.value())
        self.depth -= 1
        return Call(name, tuple(args), tuple(kwargs))

    def term(self) -> Term:
        """``Term(field=<id>, type=<T>, <value>)``, JSON: ``type=Json, path=<p>, type=<T>, <value>``."""
        self.expect("(")
        self.expect("field=")
        field_id = self.number()
        if not isinstance(field_id, int) or field_id < 0:
            raise self.error("a field id")
        self.expect(",")
        self.expect("type=")
        value_type = self.identifier()
        self.expect(",")
        json_path = None
        if value_type == "Json":
            self.expect("path=")
            end = self.text.find(", type=", self.pos)
            if end < 0:
                raise self.error("a JSON path followed by ', type='")
            json_path = self.text[self.pos : end]
            self.pos = end
            self.expect(",")
            self.expect("type=")
            value_type = self.identifier()
            self.expect(",")
        value = self.term_value(value_type)
        self.expect(")")
        return Term(field_id, value_type, value, json_path)

    def term_value(self, value_type: str) -> TermValue:
        if value_type not in TERM_VALUE_TYPES:
            raise self.error(f"a term type (one of {', '.join(sorted(TERM_VALUE_TYPES))})")
        self.skip_spaces()
        if self.text.startswith(")", self.pos) and value_type not in ("Date", "Facet"):
            return None  # tantivy prints nothing for a value it cannot decode
        if value_type == "Str":
            if not self.text.startswith('"', self.pos):
                raise self.error("a string")
            return self.string()
        if value_type in ("U64", "I64", "F64", "Bool"):
            return self.scalar(value_type)
        if value_type == "Bytes":
            items = self.value()
            if not isinstance(items, list) or not all(isinstance(b, int) and 0 <= b < 256 for b in items):
                raise self.error("a list of bytes")
            return bytes(items)
        if value_type == "IpAddr":
            raise self.error("')' (tantivy prints no IpAddr value)")
        return self.raw_until_close() or None  # Date (RFC 3339) or Facet(...)

    def scalar(self, value_type: str) -> int | float | bool:
        value = self.value()
        if value_type == "Bool" and isinstance(value, bool):
            return value
        if value_type in ("U64", "I64") and isinstance(value, int) and not isinstance(value, bool):
            low, high = (0, 2**64) if value_type == "U64" else (-(2**63), 2**63)
            if not low <= value < high:
                raise self.error(f"a {value_type} in range")
            return value
        if value_type == "F64" and isinstance(value, float):
            return value
        raise self.error(f"a {value_type} value")

    def raw_until_close(self) -> str:
        """Text up to the ``)`` that closes the term, counting nested parentheses."""
        depth = 0
        start = self.pos
        while self.pos < len(self.text):
            char = self.text[self.pos]
            if char == "(":
                depth += 1
            elif char == ")":
                if depth == 0:
                    return self.text[start : self.pos]
                depth -= 1
            self.pos += 1
        raise self.error("')'")


# --- writing -------------------------------------------------------------------------------------


def render_debug(value: Value) -> str:
    """``value`` as tantivy's ``Debug`` would print it (the inverse of ``parse_debug``)."""
    return _render(value, f32_display=False)


def _render(value: Value, f32_display: bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f32_display_text(value) if f32_display else f64_debug_text(value)
    if isinstance(value, str):
        return rust_debug_str(value)
    if isinstance(value, Ident):
        return value.name
    if isinstance(value, Term):
        return _render_term(value)
    if isinstance(value, list):
        return "[" + ", ".join(_render(item, False) for item in value) + "]"
    if isinstance(value, tuple):
        inner = ", ".join(_render(item, False) for item in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    if isinstance(value, Map):
        return "{" + ", ".join(f"{_render(k, False)}: {_render(v, False)}" for k, v in value.entries) + "}"
    if isinstance(value, Struct):
        inner = ", ".join(f"{key}: {_render(item, False)}" for key, item in value.fields)
        return f"{value.name} {{ {inner} }}"
    if isinstance(value, Call):
        parts = [_render(item, False) for item in value.args]
        parts += [f"{key}={_render(item, key in _F32_DISPLAY_KEYWORDS)}" for key, item in value.kwargs]
        return f"{value.name}({', '.join(parts)})"
    raise TypeError(f"not a Debug value: {value!r}")


def _render_term(term: Term) -> str:
    head = f"Term(field={term.field_id}, "
    if term.json_path is not None:
        head += f"type=Json, path={term.json_path}, "
    head += f"type={term.value_type}, "
    value = term.value
    if value is None:
        text = ""
    elif term.value_type in ("Date", "Facet"):
        text = str(value)
    elif isinstance(value, bytes):
        text = _render(list(value), False)
    else:
        text = _render(value, False)
    return head + text + ")"


def f64_debug_text(value: float) -> str:
    """Rust's ``{:?}`` of an f64: shortest digits, exponent form below 1e-4 or from 1e16."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    digits = _ties_away(Decimal(repr(value)), value, lambda d: float(d) == value)
    magnitude = abs(value)
    if magnitude != 0 and (magnitude < 1e-4 or magnitude >= 1e16):
        return _exponent_form(digits)
    plain = _positional(digits)
    return plain if "." in plain else plain + ".0"


def f32_display_text(value: float) -> str:
    """Rust's ``{}`` of an f32: the shortest digits that read back as the same f32, never an exponent."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    single = as_f32(value)
    for count in range(1, 10):
        text = f"{single:.{count}g}"
        if as_f32(float(text)) == single:
            break
    plain = _positional(_ties_away(Decimal(text), single, lambda d: as_f32(float(d)) == single))
    return "-0" if plain == "0" and math.copysign(1.0, single) < 0 else plain


def _ties_away(digits: Decimal, value: float, reads_back: Callable[[Decimal], bool]) -> Decimal:
    """Of two shortest digit strings exactly as near ``value``, the one farther from zero, as Rust picks.

    Python rounds such a tie to even (562949953421312.25 → ``…312.2``);
    Rust's shortest float writer rounds it away from zero (``…312.3``).
    """
    step = Decimal(1).scaleb(digits.as_tuple().exponent)  # one unit of the last digit
    exact = Decimal(value)
    if digits == 0 or abs(exact - digits) * 2 != step:
        return digits
    other = digits + step if exact > digits else digits - step
    return other if abs(other) > abs(digits) and reads_back(other) else digits


def _positional(digits: Decimal) -> str:
    text = format(digits, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def _exponent_form(digits: Decimal) -> str:
    sign, numerals, exponent = digits.normalize().as_tuple()
    assert isinstance(exponent, int)
    mantissa = str(numerals[0]) + ("." + "".join(map(str, numerals[1:])) if len(numerals) > 1 else "")
    return f"{'-' if sign else ''}{mantissa}e{exponent + len(numerals) - 1}"


def rust_debug_str(text: str) -> str:
    """A string as Rust's ``{:?}`` prints it (non-printable and grapheme-extending characters as ``\\u{..}``)."""
    out = ['"']
    for char in text:
        if char in _STR_ESCAPES:
            out.append(_STR_ESCAPES[char])
        elif not char.isprintable() or char in _OTHER_GRAPHEME_EXTEND or _is_combining(char):
            out.append(f"\\u{{{ord(char):x}}}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def _is_combining(char: str) -> bool:
    return unicodedata.category(char) in ("Mn", "Me") and char not in _NOT_GRAPHEME_EXTEND


_STR_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\0": "\\0"}
# Characters Python's tables call printable and not combining but Rust's {:?} escapes (Other_Grapheme_Extend,
# spacing marks that Unicode 16 made grapheme-extending, Hangul fillers): every character Python 3.11's tables
# assign was checked against tantivy's output. Characters assigned after Unicode 14 still differ.
_OTHER_GRAPHEME_EXTEND = frozenset(
    "\u09be\u09d7\u0b3e\u0b57\u0bbe\u0bd7\u0cc0\u0cc2\u0cc7\u0cc8\u0cca\u0ccb\u0cd5\u0cd6\u0d3e\u0d57\u0dcf"
    "\u0ddf\u115f\u1160\u1715\u1734\u1b35\u1b3b\u1b3d\u1b43\u1b44\u1baa\u1bf2\u1bf3\u302e\u302f\u3164"
    "\ua953\ua9c0\uffa0\U000111c0\U00011235\U0001133e\U0001134d\U00011357\U000114b0\U000114bd\U000115af"
    "\U000116b6\U00011930\U0001193d\U00016ff0\U00016ff1\U0001d165\U0001d166\U0001d16d\U0001d16e\U0001d16f"
    "\U0001d170\U0001d171\U0001d172"
)
_NOT_GRAPHEME_EXTEND = frozenset("\U0001171e")  # a combining mark (Mn) that Unicode 16 took out of the set
