"""The key/value engine's data: operation bodies, stored entries, and merging.

Pure: no I/O, no clock. Everything here is a function of its arguments, so
the engine (``engine.py``), the client (``client.py``) and the tests share one
definition of what a KV operation and a KV record are.

Operations (``legion.replication.Operation`` with ``engine="kv"``):

- kind ``"put"``: body is msgpack ``[content_type, value]`` (str, bytes);
- kind ``"delete"``: body is empty. A delete is stored as a *tombstone*, an
  entry with ``deleted=True`` and the delete's version, so that a put older
  than the delete, arriving late, still loses to it.

Every entry carries the version ``(hlc, origin)`` of the operation that wrote
it; the newest version wins (``legion.replication.supersedes``). That one rule
makes applying operations idempotent and commutative.

A read reply is an ``Entry`` in wire form — ``[hlc, origin, deleted,
content_type, value]`` — or ``None`` when the replica has never seen the key.
``newest`` merges the replies of several replicas into the winning entry.

Bulk puts (``POST /v1/kv``): ``parse_bulk`` turns a body of NDJSON lines
``{"key": …, "value": …, "content_type"?: …}`` (or a msgpack list of such
maps, where a value may also be bytes) into one ``BulkLine`` per item, each
either ready to write or carrying why it was refused, so one bad line fails
alone; ``bulk_results`` pairs them with the outcomes of ``write_many``.

Key listings (``GET /v1/kv?prefix=&after=&limit=``) are coverage requests:
``list_query`` builds the query, ``check_list_query`` validates it on the
replica, ``key_range`` gives the SQL bounds of a prefix, and
``merge_key_lists`` merges the nodes' sorted answers into one page.
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import msgpack

from legion.engine import WriteResult
from legion.errors import BadRequest, LegionError, PayloadTooLarge
from legion.keyspace import key_bytes
from legion.limits import KEY_BYTES_MAX, VALUE_BYTES_MAX
from legion.replication import Operation, supersedes

ENGINE_NAME = "kv"
KIND_PUT = "put"
KIND_DELETE = "delete"
CONTENT_TYPE_DEFAULT = "application/octet-stream"
# What a value given as text is stored as, unless a content type is given.
TEXT_CONTENT_TYPE = "text/plain; charset=utf-8"
MSGPACK_CONTENT_TYPE = "application/msgpack"
BULK_FIELDS = frozenset({"key", "value", "content_type"})
LIST_LIMIT_DEFAULT = 1_000
LIST_LIMIT_MAX = 10_000
CONTENT_TYPE_CHARS_MAX = 255
# SQLite stores INTEGER as signed 64-bit; an HLC beyond that cannot be stored.
HLC_MAX = (1 << 63) - 1


class Entry(NamedTuple):
    """One key's state on one replica: its newest value, or a tombstone."""

    hlc: int
    origin: str
    deleted: bool
    content_type: str | None  # None exactly when deleted
    value: bytes | None  # None exactly when deleted

    @property
    def version(self) -> tuple[int, str]:
        return (self.hlc, self.origin)

    def to_wire(self) -> list[Any]:
        """The msgpack-able form ``read`` returns."""
        return [self.hlc, self.origin, self.deleted, self.content_type, self.value]

    @classmethod
    def from_wire(cls, raw: object) -> Entry:
        """The inverse of ``to_wire``; a malformed record is a replica's bug, not the caller's."""
        if not isinstance(raw, (list, tuple)) or len(raw) != 5:
            raise LegionError(f"a kv replica sent a malformed record: {raw!r:.200}")
        hlc, origin, deleted, content_type, value = raw
        well_typed = (
            isinstance(hlc, int)
            and isinstance(origin, str)
            and isinstance(deleted, bool)
            and (content_type is None) == deleted
            and (value is None) == deleted
            and (deleted or (isinstance(content_type, str) and isinstance(value, bytes)))
        )
        if not well_typed:
            raise LegionError(f"a kv replica sent a malformed record: {raw!r:.200}")
        return cls(hlc, origin, deleted, content_type, value)


def parse_key(key: str) -> bytes:
    """A key's bytes; BadRequest if it is empty, too long, or not encodable as UTF-8."""
    try:
        return key_bytes(key)
    except UnicodeEncodeError:
        # Lone surrogates (e.g. from a badly percent-decoded path) have no UTF-8 form.
        raise BadRequest(f"key {key!r} is not valid Unicode text") from None


def check_value(value: bytes) -> bytes:
    """Return ``value`` if it fits the limit, else PayloadTooLarge."""
    if len(value) > VALUE_BYTES_MAX:
        raise PayloadTooLarge(f"value is {len(value)} bytes; the limit is {VALUE_BYTES_MAX} bytes")
    return value


def check_content_type(content_type: str | None) -> str:
    """A content type to store: the default if absent, else short printable ASCII or BadRequest."""
    if content_type is None or content_type == "":
        return CONTENT_TYPE_DEFAULT
    if len(content_type) > CONTENT_TYPE_CHARS_MAX:
        raise BadRequest(
            f"content type is {len(content_type)} characters; the limit is {CONTENT_TYPE_CHARS_MAX}"
        )
    if not (content_type.isascii() and content_type.isprintable()):  # i.e. every char in " ".."~"
        raise BadRequest(f"content type {content_type!r} must be printable ASCII")
    return content_type


def encode_put(content_type: str | None, value: bytes) -> bytes:
    """The body of a ``put`` operation, after validating both parts."""
    return msgpack.packb([check_content_type(content_type), check_value(value)], use_bin_type=True)


def decode_put(body: bytes) -> tuple[str, bytes]:
    """``(content_type, value)`` from a ``put`` body; BadRequest if malformed."""
    try:
        raw = msgpack.unpackb(body, raw=False)
    except (ValueError, msgpack.UnpackException) as exc:
        raise BadRequest(f"kv put body is not valid msgpack: {exc}") from None
    if not (
        isinstance(raw, list)
        and len(raw) == 2
        and isinstance(raw[0], str)
        and isinstance(raw[1], bytes)
    ):
        raise BadRequest("kv put body must be msgpack [content_type: str, value: bytes]")
    return check_content_type(raw[0]), check_value(raw[1])


def entry_of(op: Operation) -> Entry:
    """The entry an operation writes; BadRequest for anything the engine would not have produced."""
    if op.engine != ENGINE_NAME:
        raise BadRequest(f"operation for engine {op.engine!r} sent to the kv engine")
    if not 0 <= op.hlc <= HLC_MAX:
        raise BadRequest(f"operation timestamp {op.hlc} is out of range")
    if op.kind == KIND_PUT:
        content_type, value = decode_put(op.body)
        return Entry(op.hlc, op.origin, False, content_type, value)
    if op.kind == KIND_DELETE:
        if op.body:
            raise BadRequest("kv delete body must be empty")
        return Entry(op.hlc, op.origin, True, None, None)
    raise BadRequest(f"kv has no operation kind {op.kind!r}; expected 'put' or 'delete'")


def operation_of(partition: int, key: bytes, entry: Entry) -> Operation:
    """The operation that recreates ``entry`` on another replica (the inverse of ``entry_of``)."""
    if entry.deleted:
        return Operation(ENGINE_NAME, partition, key, entry.hlc, entry.origin, KIND_DELETE, b"")
    assert entry.content_type is not None and entry.value is not None
    body = msgpack.packb([entry.content_type, entry.value], use_bin_type=True)
    return Operation(ENGINE_NAME, partition, key, entry.hlc, entry.origin, KIND_PUT, body)


def digest_version(hlc: int, origin: str) -> bytes:
    """A key's version as anti-entropy compares it (``Engine.versions``): the winning entry's ``hlc@origin``.

    Enough to tell two replicas' states of the key apart: one version names one operation."""
    return b"%d@%s" % (hlc, origin.encode())


def newest(replies: Iterable[object]) -> Entry | None:
    """The last-writer-wins entry among several replicas' read replies (None = never seen)."""
    best: Entry | None = None
    for reply in replies:
        if reply is None:
            continue
        entry = Entry.from_wire(reply)
        if supersedes(entry.version, best.version if best else None):
            best = entry
    return best


# --- bulk puts -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BulkLine:
    """One item of a bulk put: its 1-based line (NDJSON) or position (msgpack), and its key and
    ``put`` body — or the error that refused it."""

    line: int
    key: bytes = b""
    body: bytes = b""
    error: LegionError | None = None


def parse_bulk(body: bytes, content_type: str | None) -> list[BulkLine]:
    """The items of a bulk put body: a msgpack list if the content type says msgpack, else NDJSON."""
    if (content_type or "").split(";")[0].strip().lower() == MSGPACK_CONTENT_TYPE:
        return parse_bulk_msgpack(body)
    return parse_bulk_ndjson(body)


def parse_bulk_ndjson(body: bytes) -> list[BulkLine]:
    """One ``BulkLine`` per non-blank line; a line that is not a valid item is refused alone."""
    try:
        lines: list[str] | list[bytes] = body.decode("utf-8").split("\n")  # str lines parse faster
    except UnicodeDecodeError:
        lines = body.split(b"\n")  # some line is not UTF-8: json.loads finds which
    parsed: list[BulkLine] = []
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue  # blank lines (a trailing newline, a spacer) are not items
        try:
            item = json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # RecursionError: nested too deep
            parsed.append(BulkLine(number, error=BadRequest(f"line {number}: not valid JSON: {exc}")))
            continue
        parsed.append(bulk_line(number, item, text_only=True))
    return parsed


def parse_bulk_msgpack(body: bytes) -> list[BulkLine]:
    """One ``BulkLine`` per element of a msgpack list; BadRequest if the body is not a list."""
    try:
        items = msgpack.unpackb(body, raw=False)
    except (ValueError, msgpack.UnpackException) as exc:
        raise BadRequest(f"bulk body is not valid msgpack: {exc}") from None
    if not isinstance(items, list):
        raise BadRequest("a msgpack bulk body must be a list of maps {key, value, content_type?}")
    return [bulk_line(number, item, text_only=False) for number, item in enumerate(items, start=1)]


def bulk_line(number: int, item: object, *, text_only: bool) -> BulkLine:
    """Check one item; a ``BulkLine`` ready to write, or one that carries its error."""
    try:
        if not isinstance(item, dict):
            raise BadRequest("an item must be an object {key, value, content_type?}")
        if not BULK_FIELDS.issuperset(item):
            unknown = sorted(str(name) for name in item if name not in BULK_FIELDS)
            raise BadRequest(f"unknown fields {unknown}; an item has key, value and content_type")
        key, value, content_type = item.get("key"), item.get("value"), item.get("content_type")
        if not isinstance(key, str):
            raise BadRequest("'key' must be a string")
        if isinstance(value, str):
            value, default_type = _utf8(value, "'value'"), TEXT_CONTENT_TYPE
        elif isinstance(value, bytes) and not text_only:
            default_type = CONTENT_TYPE_DEFAULT
        else:
            raise BadRequest("'value' must be a string" + ("" if text_only else " or bytes"))
        if content_type is not None and not isinstance(content_type, str):
            raise BadRequest("'content_type' must be a string")
        return BulkLine(number, parse_key(key), encode_put(content_type or default_type, value))
    except LegionError as exc:
        return BulkLine(number, error=type(exc)(f"line {number}: {exc.message}", **exc.details))


def _utf8(text: str, what: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest(f"{what} is not valid Unicode text (a lone surrogate?)") from None


def bulk_results(lines: Sequence[BulkLine], outcomes: Sequence[WriteResult | LegionError]) -> list[dict[str, Any]]:
    """One result per line, in order: the lines refused while parsing, and ``outcomes`` for the rest
    (``write_many``'s answers, in the order of the lines that were written)."""
    pending = iter(outcomes)
    results: list[dict[str, Any]] = []
    for line in lines:
        if line.error is not None:  # its message already names the line
            results.append({"line": line.line, "error": line.error.code, "message": line.error.message})
            continue
        outcome = next(pending)
        if isinstance(outcome, WriteResult):
            results.append({"line": line.line, "partition": outcome.partition, "hlc": outcome.hlc, "acks": outcome.acks})
        else:
            results.append({"line": line.line, "error": outcome.code, "message": f"line {line.line}: {outcome.message}"})
    assert next(pending, None) is None, "more outcomes than lines written"
    return results


# --- key listings ----------------------------------------------------------------


def list_query(prefix: bytes, after: bytes | None, limit: int) -> dict[str, Any]:
    """The coverage query of a listing: keys starting with ``prefix``, after ``after``, at most ``limit``."""
    return {"prefix": prefix, "after": after, "limit": limit}


def check_list_query(query: object) -> tuple[bytes, bytes | None, int]:
    """``(prefix, after, limit)`` of a listing query; BadRequest if it is malformed."""
    if not isinstance(query, dict):
        raise BadRequest("a kv listing query is a map {prefix, after, limit}")
    prefix, after, limit = query.get("prefix", b""), query.get("after"), query.get("limit")
    if not isinstance(prefix, bytes) or len(prefix) > KEY_BYTES_MAX:
        raise BadRequest(f"the listing prefix must be at most {KEY_BYTES_MAX} bytes")
    if after is not None and not isinstance(after, bytes):
        raise BadRequest("the listing's 'after' must be a key")
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= LIST_LIMIT_MAX + 1:
        raise BadRequest(f"the listing limit must be between 1 and {LIST_LIMIT_MAX}")
    return prefix, after, limit


def check_list_limit(limit: int | None) -> int:
    """The page size a client asked for (default ``LIST_LIMIT_DEFAULT``), or BadRequest."""
    if limit is None:
        return LIST_LIMIT_DEFAULT
    if not 1 <= limit <= LIST_LIMIT_MAX:
        raise BadRequest(f"limit must be between 1 and {LIST_LIMIT_MAX}, got {limit}")
    return limit


def parse_prefix(prefix: str) -> bytes:
    """A listing prefix's bytes (empty: every key); BadRequest if it is too long or not valid text."""
    raw = _utf8(prefix, "the prefix")
    if len(raw) > KEY_BYTES_MAX:
        raise BadRequest(f"prefix is {len(raw)} bytes; the limit is {KEY_BYTES_MAX}")
    return raw


def key_range(prefix: bytes) -> tuple[bytes, bytes | None]:
    """``(low, high)``: the keys starting with ``prefix`` are exactly ``low <= key < high``
    (no upper bound when ``high`` is None: the prefix is empty or all 0xff bytes)."""
    stem = prefix.rstrip(b"\xff")
    if not stem:
        return prefix, None
    return prefix, stem[:-1] + bytes([stem[-1] + 1])


def merge_key_lists(lists: Iterable[object], limit: int) -> tuple[list[bytes], bool]:
    """Merge sorted key lists (one per node) into the first ``limit`` keys; True if there were more."""
    checked: list[list[bytes]] = []
    for keys in lists:
        if not isinstance(keys, list) or not all(isinstance(key, bytes) for key in keys):
            raise LegionError(f"a kv replica sent a malformed key listing: {keys!r:.200}")
        checked.append(keys)
    merged: list[bytes] = []
    for key in heapq.merge(*checked):
        if merged and merged[-1] == key:
            continue  # a partition is answered once, but stay safe against overlaps
        merged.append(key)
        if len(merged) > limit:
            return merged[:limit], True
    return merged, False
