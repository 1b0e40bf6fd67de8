"""The map/reduce engine's operations and its catalog of datasets.

Pure: no I/O, no clock. Three kinds of ``legion.replication.Operation``
(``engine="mr"``), each body a msgpack list:

- ``create`` key = ``partition_keys("catalog", name, partitions)[partition]``;
  body ``[name, incarnation, schema, key_column, partitions]`` (``schema``
  the serialised Arrow schema, ``key_column`` "" when rows were spread
  evenly). Written to *every* partition, so every node that holds any
  partition learns the dataset and a handoff of any partition carries it.
- ``drop`` the same keys; body ``[name, incarnation, partitions]``.
- ``batch`` key = ``partition_keys("rows", incarnation, partitions)[partition]``;
  body ``[incarnation, batch_id, rows, payload]``: one batch of the
  dataset's rows for that partition, ``payload`` an Arrow IPC stream
  (``rows.encode_payload``). ``batch_id`` is unique (chosen by the node that
  received the rows), and a partition's rows are the *set* of its batches:
  applying a batch twice, or batches in any order, gives the same files. A
  replayed batch is idempotent.

An *incarnation* names one life of a dataset (created, maybe dropped, maybe
created again under the same name). The catalog is a two-phase set of
incarnations — created ones and dropped ones — exactly like the search
engine's: a name's live incarnation is its greatest created incarnation
unless that one is dropped, and a newer create supersedes older incarnations
for good. Both sets only grow, so catalog operations commute. A batch of a
dead incarnation is discarded; a batch of an incarnation not heard of yet is
stored (its own payload carries its schema) and shown once the create arrives.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

import msgpack

from legion.errors import BadRequest
from legion.keyspace import partition_of
from legion.replication import Operation

ENGINE_NAME = "mr"
KIND_CREATE = "create"
KIND_DROP = "drop"
KIND_BATCH = "batch"
CATALOG_KINDS = frozenset({KIND_CREATE, KIND_DROP})
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_\-]{0,63}$")
ID_PATTERN = re.compile(r"^[0-9a-f]{16,40}$")
BODY_SIZES = {KIND_CREATE: 5, KIND_DROP: 3, KIND_BATCH: 4}


def check_dataset_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise BadRequest(
            f"a dataset name is 1-64 lowercase letters, digits, '_' or '-', starting with a letter or digit; got {name!r}"
        )
    return name


def create_body(name: str, incarnation: str, schema: bytes, key_column: str, partitions: int) -> bytes:
    return msgpack.packb([name, incarnation, schema, key_column, partitions], use_bin_type=True)


def drop_body(name: str, incarnation: str, partitions: int) -> bytes:
    return msgpack.packb([name, incarnation, partitions], use_bin_type=True)


def batch_body(incarnation: str, batch_id: str, rows: int, payload: bytes) -> bytes:
    return msgpack.packb([incarnation, batch_id, rows, payload], use_bin_type=True)


@dataclass(frozen=True, slots=True)
class Decoded:
    """An operation's body, decoded. Catalog operations fill ``name`` (and ``schema``,
    ``key_column`` for a create); batches fill ``batch_id``, ``rows`` and ``payload``."""

    incarnation: str
    name: str = ""
    schema: bytes = b""
    key_column: str = ""
    partitions: int = 0
    batch_id: str = ""
    rows: int = 0
    payload: bytes = b""


def decode(op: Operation) -> Decoded:
    """The body of a map/reduce operation; BadRequest for anything the engine never writes."""
    try:
        body = msgpack.unpackb(op.body, raw=False)
    except (ValueError, msgpack.UnpackException):
        raise BadRequest("a map/reduce operation's body is not msgpack") from None
    if op.kind not in BODY_SIZES:
        raise BadRequest(f"unknown map/reduce operation kind {op.kind!r}")
    if not isinstance(body, list) or len(body) != BODY_SIZES[op.kind]:
        raise BadRequest(f"a map/reduce {op.kind!r} body is a list of {BODY_SIZES[op.kind]} items")
    if op.kind == KIND_BATCH:
        incarnation, batch_id, rows, payload = body
        _check_id(incarnation, "incarnation")
        _check_id(batch_id, "batch id")
        if not isinstance(rows, int) or rows < 0 or not isinstance(payload, bytes):
            raise BadRequest("a batch carries its row count and an Arrow payload")
        return Decoded(incarnation, batch_id=batch_id, rows=rows, payload=payload)
    name, incarnation, partitions = body[0], body[1], body[-1]
    check_dataset_name(name)
    _check_id(incarnation, "incarnation")
    if not isinstance(partitions, int) or partitions < 1 or partitions & (partitions - 1) or op.partition >= partitions:
        raise BadRequest("a catalog operation carries the cluster's partition count")
    if op.kind == KIND_DROP:
        return Decoded(incarnation, name=name, partitions=partitions)
    schema, key_column = body[2], body[3]
    if not isinstance(schema, bytes) or not isinstance(key_column, str):
        raise BadRequest("a create carries a serialised schema and a key column name")
    return Decoded(incarnation, name=name, schema=schema, key_column=key_column, partitions=partitions)


def _check_id(value: object, what: str) -> None:
    if not isinstance(value, str) or not ID_PATTERN.match(value):
        raise BadRequest(f"a map/reduce operation carries a bad {what}")


# A batch's key as anti-entropy names it (``MapReduceEngine.versions``): prefix, incarnation, NUL, batch id.
BATCH_KEY_PREFIX = b"\x00mr\x00batch\x00"


def batch_key(incarnation: str, batch_id: str) -> bytes:
    return BATCH_KEY_PREFIX + incarnation.encode() + b"\x00" + batch_id.encode()


def parse_batch_key(key: bytes) -> tuple[str, str] | None:
    """``(incarnation, batch id)`` of a ``batch_key``; None for any other key or a malformed one."""
    if not key.startswith(BATCH_KEY_PREFIX):
        return None
    incarnation, _, batch_id = key[len(BATCH_KEY_PREFIX) :].partition(b"\x00")
    try:
        parsed = incarnation.decode(), batch_id.decode()
    except UnicodeDecodeError:
        return None
    return parsed if all(ID_PATTERN.match(part) for part in parsed) else None


@lru_cache(maxsize=512)
def partition_keys(role: str, name: str, partitions: int) -> tuple[bytes, ...]:
    """One key per partition (``keys[p]`` hashes to partition ``p``) for ``role`` operations of ``name``.

    Deterministic, so every coordinator writes a dataset's catalog entries
    (and a partition's batches) under the same keys."""
    keys: list[bytes | None] = [None] * partitions
    missing, attempt = partitions, 0
    while missing:
        key = f"\x00mr\x00{role}\x00{name}\x00{attempt}".encode()
        p = partition_of(key, partitions)
        if keys[p] is None:
            keys[p] = key
            missing -= 1
        attempt += 1
    return tuple(k for k in keys if k is not None)


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    """One incarnation's catalog record; ``schema``/``key_column`` are empty for a drop."""

    name: str
    schema: bytes
    key_column: str
    partitions: int
    hlc: int
    origin: str


@dataclass
class Catalog:
    """The dataset incarnations this node has heard of: created (with schema) and dropped."""

    created: dict[str, CatalogEntry] = field(default_factory=dict)
    dropped: dict[str, CatalogEntry] = field(default_factory=dict)

    def live(self, name: str) -> str | None:
        """The dataset's live incarnation: its greatest created one, unless that one was dropped."""
        return self.live_datasets().get(name)

    def live_datasets(self) -> dict[str, str]:
        """Every live dataset name → its incarnation."""
        newest: dict[str, str] = {}
        for incarnation, entry in self.created.items():
            if incarnation > newest.get(entry.name, ""):
                newest[entry.name] = incarnation
        return {name: inc for name, inc in newest.items() if inc not in self.dropped}

    def is_dead(self, incarnation: str) -> bool:
        """True if rows of ``incarnation`` can be discarded: dropped, or superseded by a newer create."""
        if incarnation in self.dropped:
            return True
        entry = self.created.get(incarnation)
        return entry is not None and self.live(entry.name) != incarnation

    def apply(self, op: Operation, decoded: Decoded) -> bool:
        """Apply one catalog operation; True if it told this node something new."""
        book = self.created if op.kind == KIND_CREATE else self.dropped
        if decoded.incarnation in book:
            return False
        book[decoded.incarnation] = CatalogEntry(
            decoded.name, decoded.schema, decoded.key_column, decoded.partitions, op.hlc, op.origin
        )
        return True

    def operations(self, partition: int) -> list[Operation]:
        """Catalog operations that teach an empty replica of ``partition`` this catalog (for ``fold``)."""
        ops = []
        for incarnation, e in sorted(self.created.items()):
            key = partition_keys("catalog", e.name, e.partitions)[partition]
            body = create_body(e.name, incarnation, e.schema, e.key_column, e.partitions)
            ops.append(Operation(ENGINE_NAME, partition, key, e.hlc, e.origin, KIND_CREATE, body))
        for incarnation, e in sorted(self.dropped.items()):
            key = partition_keys("catalog", e.name, e.partitions)[partition]
            body = drop_body(e.name, incarnation, e.partitions)
            ops.append(Operation(ENGINE_NAME, partition, key, e.hlc, e.origin, KIND_DROP, body))
        return ops
