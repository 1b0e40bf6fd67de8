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
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

import msgpack

from legion.errors import BadRequest, LegionError, PayloadTooLarge
from legion.keyspace import key_bytes
from legion.limits import VALUE_BYTES_MAX
from legion.replication import Operation, supersedes

ENGINE_NAME = "kv"
KIND_PUT = "put"
KIND_DELETE = "delete"
CONTENT_TYPE_DEFAULT = "application/octet-stream"
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
    if not all(" " <= char <= "~" for char in content_type):
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
