"""A search index's schema and the documents it accepts.

Pure: no I/O. An index is created from a JSON schema such as::

    {"id_field": "id", "default_fields": ["title", "body"],
     "fields": {"id":        {"type": "keyword", "stored": true},
                "title":     {"type": "text", "stored": true, "tokenizer": "default"},
                "body":      {"type": "text", "stored": true, "tokenizer": "en_stem"},
                "section":   {"type": "keyword", "stored": true},
                "size":      {"type": "i64", "stored": true, "fast": true},
                "published": {"type": "date", "fast": true}}}

Field types: ``text`` (analysed by a tantivy tokenizer named ``tokenizer``),
``keyword`` (one exact term), ``i64``, ``u64``, ``f64``, ``bool``, ``date``
(RFC 3339 text such as ``2024-05-01T12:00:00Z``) and ``json`` (an object whose
leaves are searched as ``field.path:value``). Options: ``stored`` (returned
in hits, default true), ``indexed`` (searchable, default true), ``fast``
(column storage for ranges, sorting and aggregations, default false).
The id field must be a ``keyword``; every document names itself with it, and
the id alone decides the document's partition.

``check_document`` is the one place a document is judged: an unknown field,
a value of the wrong type or a missing or non-string id is a ``BadRequest``
naming the field, raised before anything is written. Names starting with
``_`` are reserved for the engine's own fields.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from datetime import datetime, timezone
from typing import Any, NoReturn

from legion.errors import BadRequest
from legion.limits import KEY_BYTES_MAX

FIELD_TYPES = ("text", "keyword", "i64", "u64", "f64", "bool", "date", "json")
# tantivy's built-in analysers: "default" (split on non-alphanumerics, lowercase,
# drop tokens over 40 bytes), "en_stem" (default + English stemming), "whitespace", "raw".
TOKENIZERS = ("default", "en_stem", "whitespace", "raw")
FIELD_OPTIONS = frozenset({"type", "stored", "indexed", "fast", "tokenizer"})
SCHEMA_KEYS = frozenset({"id_field", "default_fields", "fields"})
FIELDS_MAX = 256
INDEX_NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
FIELD_NAME_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
I64_MIN, I64_MAX = -(1 << 63), (1 << 63) - 1
U64_MAX = (1 << 64) - 1
_INTEGER_BOUNDS = {"i64": (I64_MIN, I64_MAX), "u64": (0, U64_MAX)}


def check_index_name(name: object) -> str:
    """``name`` if it is a valid index name (it becomes part of paths and URLs), else BadRequest."""
    if not isinstance(name, str) or not INDEX_NAME_PATTERN.match(name):
        raise BadRequest(
            f"index name must be 1-64 lowercase letters, digits, '_' or '-', starting with a letter or digit; got {name!r:.80}"
        )
    return name


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One field of an index: its name, type and options."""

    name: str
    type: str
    stored: bool = True
    indexed: bool = True
    fast: bool = False
    tokenizer: str = "default"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "stored": self.stored, "indexed": self.indexed, "fast": self.fast}
        if self.type in ("text", "json"):
            out["tokenizer"] = self.tokenizer
        return out


@dataclass(frozen=True, slots=True)
class IndexSchema:
    """A validated schema: the id field, the fields searched when a query names none, and every field."""

    id_field: str
    default_fields: tuple[str, ...]
    fields: tuple[FieldSpec, ...]
    # Each field's value check, built once: checking a document is then one lookup per field.
    checks: Mapping[str, Callable[[Any], bool]] = dataclass_field(init=False, compare=False, hash=False, repr=False)
    # The common cases checked without a call: a text or keyword field holding one string, an
    # integer field holding one integer in range.
    string_fields: frozenset[str] = dataclass_field(init=False, compare=False, hash=False, repr=False)
    integer_bounds: Mapping[str, tuple[int, int]] = dataclass_field(init=False, compare=False, hash=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "checks", {spec.name: _field_checker(spec) for spec in self.fields})
        strings = frozenset(spec.name for spec in self.fields if spec.type in ("text", "keyword"))
        object.__setattr__(self, "string_fields", strings)
        bounds = {spec.name: _INTEGER_BOUNDS[spec.type] for spec in self.fields if spec.type in _INTEGER_BOUNDS}
        object.__setattr__(self, "integer_bounds", bounds)

    def field(self, name: str) -> FieldSpec:
        for spec in self.fields:
            if spec.name == name:
                return spec
        raise BadRequest(f"unknown field {name!r}; the schema has {', '.join(f.name for f in self.fields)}")

    @property
    def stored_fields(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields if f.stored)

    @property
    def text_fields(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields if f.type == "text" and f.indexed)

    def to_json(self) -> dict[str, Any]:
        return {
            "id_field": self.id_field,
            "default_fields": list(self.default_fields),
            "fields": {f.name: f.to_json() for f in self.fields},
        }


def parse_schema(raw: object) -> IndexSchema:
    """Validate a JSON schema; BadRequest says exactly what to fix."""
    if not isinstance(raw, Mapping):
        raise BadRequest('a schema is a JSON object: {"id_field": …, "default_fields": […], "fields": {…}}')
    unknown = set(raw) - SCHEMA_KEYS
    if unknown:
        raise BadRequest(f"unknown schema keys {sorted(unknown)}; a schema has {sorted(SCHEMA_KEYS)}")
    fields_raw = raw.get("fields")
    if not isinstance(fields_raw, Mapping) or not fields_raw:
        raise BadRequest("schema 'fields' must be a non-empty object of field name → options")
    if len(fields_raw) > FIELDS_MAX:
        raise BadRequest(f"a schema has at most {FIELDS_MAX} fields, got {len(fields_raw)}")
    fields = tuple(_parse_field(name, options) for name, options in fields_raw.items())
    by_name = {f.name: f for f in fields}
    id_field = raw.get("id_field", "id")
    if not isinstance(id_field, str) or id_field not in by_name:
        raise BadRequest(f"id_field {id_field!r} must name a field of the schema")
    if by_name[id_field].type != "keyword" or not by_name[id_field].indexed:
        raise BadRequest(f"id_field {id_field!r} must be an indexed keyword field")
    default_fields = raw.get("default_fields")
    if default_fields is None:
        default_fields = [f.name for f in fields if f.type == "text" and f.indexed]
    if not isinstance(default_fields, list) or not all(isinstance(n, str) for n in default_fields):
        raise BadRequest("default_fields must be a list of field names")
    for name in default_fields:
        spec = by_name.get(name)
        if spec is None or spec.type not in ("text", "keyword") or not spec.indexed:
            raise BadRequest(f"default field {name!r} must be an indexed text or keyword field of the schema")
    if not default_fields:
        raise BadRequest("the schema has no text field to search by default: name default_fields")
    return IndexSchema(id_field, tuple(default_fields), fields)


def _parse_field(name: object, options: object) -> FieldSpec:
    if not isinstance(name, str) or not FIELD_NAME_PATTERN.match(name):
        raise BadRequest(
            f"field name {name!r:.80} must be 1-64 letters, digits or '_', starting with a letter "
            "(names starting with '_' are reserved)"
        )
    if not isinstance(options, Mapping):
        raise BadRequest(f"field {name!r}: options must be an object such as {{\"type\": \"text\"}}")
    unknown = set(options) - FIELD_OPTIONS
    if unknown:
        raise BadRequest(f"field {name!r}: unknown options {sorted(unknown)}; known: {sorted(FIELD_OPTIONS)}")
    kind = options.get("type")
    if kind not in FIELD_TYPES:
        raise BadRequest(f"field {name!r}: type must be one of {', '.join(FIELD_TYPES)}; got {kind!r}")
    flags = {}
    for flag, default in (("stored", True), ("indexed", True), ("fast", False)):
        value = options.get(flag, default)
        if not isinstance(value, bool):
            raise BadRequest(f"field {name!r}: {flag!r} must be true or false")
        flags[flag] = value
    tokenizer = options.get("tokenizer", "default")
    if "tokenizer" in options and kind not in ("text", "json"):
        raise BadRequest(f"field {name!r}: only text and json fields take a tokenizer")
    if tokenizer not in TOKENIZERS:
        raise BadRequest(f"field {name!r}: tokenizer must be one of {', '.join(TOKENIZERS)}; got {tokenizer!r}")
    if kind == "json" and flags["fast"]:
        raise BadRequest(f"field {name!r}: json fields cannot be fast")
    return FieldSpec(name, kind, flags["stored"], flags["indexed"], flags["fast"], tokenizer)


def check_document(schema: IndexSchema, doc: object) -> tuple[str, dict[str, Any]]:
    """The document's id and its fields checked against the schema (nulls dropped).

    Each field holds one value or a list of values of its type."""
    if not isinstance(doc, dict):
        if not isinstance(doc, Mapping):
            raise BadRequest("a document is a JSON object")
        doc = dict(doc)
    doc_id = doc.get(schema.id_field)
    if doc_id is None:
        raise BadRequest(f"the document has no id: field {schema.id_field!r} is missing")
    if not isinstance(doc_id, str) or not doc_id:
        raise BadRequest(f"id field {schema.id_field!r} must be a non-empty string, got {doc_id!r:.80}")
    # len(str) bounds the UTF-8 length from below and 4 * len(str) from above: encode only when in doubt.
    if len(doc_id) * 4 > KEY_BYTES_MAX and len(doc_id.encode("utf-8", "surrogatepass")) > KEY_BYTES_MAX:
        raise BadRequest(f"id is over {KEY_BYTES_MAX} bytes")
    checkers, strings, bounds = schema.checks, schema.string_fields, schema.integer_bounds
    has_null = False
    for name, value in doc.items():
        kind = type(value)
        if kind is str:
            if name in strings:
                continue
        elif kind is int:
            low_high = bounds.get(name)
            if low_high is not None and low_high[0] <= value <= low_high[1]:
                continue
        checker = checkers.get(name)
        if checker is None:
            _unknown(schema, name)
        if value is None:
            has_null = True
        elif not checker(value):
            _refuse(schema.field(name), value)
    if has_null:
        return doc_id, {name: value for name, value in doc.items() if value is not None}
    return doc_id, doc


def _unknown(schema: IndexSchema, name: object) -> NoReturn:
    """Raise the BadRequest for a field the schema does not have."""
    if not isinstance(name, str):
        raise BadRequest("field names must be strings")
    if name.startswith("_"):
        raise BadRequest(f"field {name!r}: names starting with '_' are reserved for the engine")
    schema.field(name)  # raises, naming the schema's fields
    raise AssertionError(f"field {name!r} is in the schema but has no checker")


Checker = Callable[[Any], bool]

_VALUE_CHECKS: dict[str, Checker] = {
    "text": lambda v: isinstance(v, str),
    "keyword": lambda v: isinstance(v, str),
    "i64": lambda v: _is_int(v) and I64_MIN <= v <= I64_MAX,
    "u64": lambda v: _is_int(v) and 0 <= v <= U64_MAX,
    "f64": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
    "bool": lambda v: isinstance(v, bool),
    "date": lambda v: isinstance(v, str) and parse_date(v) is not None,
    "json": lambda v: isinstance(v, Mapping),
}
_EXPECTED = {
    "text": "a string", "keyword": "a string", "i64": "a signed 64-bit integer",
    "u64": "an unsigned 64-bit integer", "f64": "a finite number", "bool": "true or false",
    "date": "an RFC 3339 date such as 2024-05-01T12:00:00Z", "json": "a JSON object",
}  # fmt: skip


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _field_checker(spec: FieldSpec) -> Checker:
    """One field's check: a value of its type, or (but for json fields) a list of such values."""
    check = _VALUE_CHECKS[spec.type]
    if spec.type == "json":
        return check

    def one_or_many(value: Any) -> bool:
        if isinstance(value, list):
            return all(check(item) for item in value)
        return check(value)

    return one_or_many


def _refuse(spec: FieldSpec, value: Any) -> NoReturn:
    """Raise the BadRequest that names the first value of ``value`` the field cannot hold."""
    values = value if isinstance(value, list) and spec.type != "json" else [value]
    check = _VALUE_CHECKS[spec.type]
    bad = next((item for item in values if not check(item)), value)
    raise BadRequest(f"field {spec.name!r} ({spec.type}) must be {_EXPECTED[spec.type]}, got {bad!r:.80}")


def parse_date(text: str) -> datetime | None:
    """An RFC 3339 / ISO 8601 timestamp as an aware UTC datetime; None if it is not one.

    A date without a zone is taken as UTC; a bare date as midnight UTC."""
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.astimezone(timezone.utc)
