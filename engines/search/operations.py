"""The search engine's operations and its catalog of indexes.

Pure: no I/O, no clock. Six kinds of ``legion.replication.Operation``
(``engine="search"``), each body a msgpack list:

- ``index``  key = the document id; body ``[index, incarnation, source]``,
  ``[index, incarnation, source, lengths]`` or
  ``[index, incarnation, source, lengths, position]``: ``source`` the document
  as JSON bytes (an object), ``lengths`` the tokens each scored field holds
  (``document_builder.LengthCounter``, in ``length_fields`` order) or nil,
  counted once by the coordinator so that replicas need not parse the source;
  without them (a handoff's fold, an older log) a replica counts them itself.
  Only their being a list is checked here: a count that is no count makes the
  replica take the per-field path, which counts them itself. ``position`` is
  the document's place in the ``batch`` it came from (a fold keeps it; see
  versions below).
- ``delete`` key = the document id; body ``[index, incarnation]`` or
  ``[index, incarnation, position]``. Stored as a tombstone with its
  version, so an older ``index`` arriving later loses.
- ``batch``  many documents of one partition in one operation (bulk ingest
  writes one per partition per chunk, so every per-operation cost — planning,
  framing, a log row, decoding — is paid per batch, not per document).
  key = ``catalog_keys(index, partitions)[partition]``; body
  ``[index, incarnation, partitions, ids, sources, lengths]``: ``ids`` and
  ``sources`` hold one entry per document — its id (which must hash to the
  operation's partition) and its source (JSON bytes, or nil for a
  tombstone); ``lengths`` holds every document's lengths one after the
  other, the same number per document (none: the replica counts them). One
  flat list rather than a list per document: a replica decodes thousands of
  documents per batch, and every list it keeps alive is work for Python's
  cyclic garbage collector.
- ``create`` key = ``catalog_keys(index, partitions)[partition]``; body
  ``[index, incarnation, schema, partitions]`` (the cluster's partition
  count, so that a fold can name the key of any partition). Written to *every* partition, so every
  node that holds any partition learns the index, and a handoff of any
  partition carries it.
- ``drop``   the same keys; body ``[index, incarnation, partitions]``.
- ``refresh`` the same keys; body ``[index, incarnation]``. Changes nothing:
  written with ``refresh`` to every partition, it makes every live replica
  flush, so that everything acknowledged before it is searchable.

Versions. Per (incarnation, id) the newest version wins, where a document's
version is ``(hlc, origin, position)``: the operation's timestamp and origin,
then the document's place in its ``batch`` (0 for ``index`` and ``delete``
written alone). Every replica computes the same version for the same
document, a repeated id in one batch is won by its last occurrence, and a
single-document operation compares with a batched one as ``(hlc, origin, 0)``
(one origin never stamps two operations with the same timestamp).

An *incarnation* names one life of an index (created, then maybe dropped and
created again under the same name): a sortable id chosen when the index is
created. The catalog is a two-phase set of incarnations — created ones and
dropped ones — and an index name's live incarnation is its greatest created
incarnation unless that one is dropped (a newer create supersedes older
incarnations for good). Both sets only grow, so applying
catalog operations is idempotent and commutative. Document operations name
the incarnation they were written for: one for a dead incarnation is
ignored, one for an incarnation this node has not heard of yet is parked
until the ``create`` arrives.
"""

from __future__ import annotations

import json
import re
from hashlib import blake2b
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, NamedTuple

import msgpack

from legion.errors import BadRequest
from legion.keyspace import partition_of
from legion.limits import KEY_BYTES_MAX
from legion.replication import Operation

ENGINE_NAME = "search"
KIND_INDEX = "index"
KIND_DELETE = "delete"
KIND_BATCH = "batch"
KIND_CREATE = "create"
KIND_DROP = "drop"
KIND_REFRESH = "refresh"
DOCUMENT_KINDS = frozenset({KIND_INDEX, KIND_DELETE, KIND_BATCH})
CATALOG_KINDS = frozenset({KIND_CREATE, KIND_DROP})
INCARNATION_PATTERN = re.compile(r"^[0-9a-f]{16,40}$")
# Documents in one batch operation (a bulk chunk's share of one partition is far fewer).
BATCH_DOCS_MAX = 100_000


def encode_source(doc: dict[str, Any]) -> bytes:
    """A checked document as the canonical JSON bytes stored and replicated."""
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode("utf-8")


def index_body(
    index: str, incarnation: str, source: bytes, lengths: Sequence[int] | None = None, position: int = 0
) -> bytes:
    if position:
        body: list[Any] = [index, incarnation, source, lengths, position]
    else:
        body = [index, incarnation, source] if lengths is None else [index, incarnation, source, lengths]
    return msgpack.packb(body, use_bin_type=True)


def delete_body(index: str, incarnation: str, position: int = 0) -> bytes:
    return msgpack.packb([index, incarnation, position] if position else [index, incarnation], use_bin_type=True)


def batch_body(
    index: str,
    incarnation: str,
    partitions: int,
    ids: Sequence[str],
    sources: Sequence[bytes | None],
    lengths: Sequence[int],
) -> bytes:
    """A ``batch`` body: one partition's documents, in order (a later one wins over an earlier one with its id).

    ``lengths`` holds ``len(ids)`` runs of the same number of counts (or none)."""
    return msgpack.packb([index, incarnation, partitions, ids, sources, lengths], use_bin_type=True)


def create_body(index: str, incarnation: str, schema: dict[str, Any], partitions: int) -> bytes:
    return msgpack.packb([index, incarnation, json.dumps(schema, sort_keys=True), partitions], use_bin_type=True)


def drop_body(index: str, incarnation: str, partitions: int) -> bytes:
    return msgpack.packb([index, incarnation, partitions], use_bin_type=True)


class Decoded(NamedTuple):
    """An operation's body, decoded: which index and incarnation, and what the kind carries.

    ``index``/``delete``: ``source`` (None for a delete), ``lengths`` and
    ``position``; ``batch``: ``partitions`` and the per-document lists
    ``ids`` and ``sources``, ``lengths`` flat (``lengths_stride`` counts per
    document, 0 when none is carried); ``create``: ``schema`` and
    ``partitions``; ``drop``: ``partitions``."""

    index: str
    incarnation: str
    source: bytes | None = None
    schema: dict[str, Any] | None = None
    partitions: int = 0
    lengths: list[int] | None = None
    position: int = 0
    ids: list[str] | None = None
    sources: list[bytes | None] | None = None
    lengths_stride: int = 0


# Items of each kind's body; an index body may also carry the field lengths and a position.
_BODY_SIZES = {
    KIND_INDEX: (3, 4, 5), KIND_DELETE: (2, 3), KIND_BATCH: (6,), KIND_REFRESH: (2,), KIND_CREATE: (4,), KIND_DROP: (3,),
}  # fmt: skip


def decode(op: Operation) -> Decoded:
    """The body of a search operation; BadRequest for anything the engine never writes.

    A batch's lists are checked for their types here; that its ids belong to
    the operation's partition is ``check_batch_partition``'s (a hash per
    document, done once, when a replica accepts the operation)."""
    try:
        body = msgpack.unpackb(op.body, raw=False)
    except (ValueError, msgpack.UnpackException):
        raise BadRequest("a search operation's body is not msgpack") from None
    # The hot path (every single document, twice per replica: validate, then apply) in as few steps as Python allows.
    if op.kind == KIND_INDEX and type(body) is list and 3 <= len(body) <= 4:
        index, incarnation, source = body[0], body[1], body[2]
        lengths = body[3] if len(body) == 4 else None
        if (
            type(index) is str and type(incarnation) is str and type(source) is bytes
            and (lengths is None or type(lengths) is list) and _is_incarnation(incarnation)
        ):  # fmt: skip
            return Decoded(index, incarnation, source, None, 0, lengths)
    return _decode_checked(op, body)


def _decode_checked(op: Operation, body: Any) -> Decoded:
    """Every other body, and the BadRequest that says what is wrong with a bad one."""
    sizes = _BODY_SIZES.get(op.kind)
    if sizes is None:
        raise BadRequest(f"unknown search operation kind {op.kind!r}")
    if type(body) is not list or len(body) not in sizes:
        raise BadRequest(f"a search {op.kind!r} body is a list of {' or '.join(map(str, sizes))} items")
    index, incarnation = body[0], body[1]
    if type(index) is not str or type(incarnation) is not str or not _is_incarnation(incarnation):
        raise BadRequest("a search operation names an index and an incarnation")
    if op.kind == KIND_INDEX:
        return _decode_index(index, incarnation, body)
    if op.kind == KIND_DELETE:
        return Decoded(index, incarnation, position=_position(body[2]) if len(body) == 3 else 0)
    if op.kind == KIND_REFRESH:
        return Decoded(index, incarnation)
    partitions = body[2] if op.kind == KIND_BATCH else body[-1]
    if not isinstance(partitions, int) or partitions < 1 or partitions & (partitions - 1) or op.partition >= partitions:
        raise BadRequest(f"a {op.kind} operation carries the cluster's partition count")
    if op.kind == KIND_BATCH:
        return _decode_batch(index, incarnation, partitions, body[3], body[4], body[5])
    if op.kind == KIND_DROP:
        return Decoded(index, incarnation, partitions=partitions)
    try:
        schema = json.loads(body[2])
    except (TypeError, ValueError):
        raise BadRequest("a create operation carries the schema as JSON text") from None
    if not isinstance(schema, dict):
        raise BadRequest("a create operation carries the schema as a JSON object")
    return Decoded(index, incarnation, schema=schema, partitions=partitions)


def _decode_index(index: str, incarnation: str, body: list[Any]) -> Decoded:
    source = body[2]
    if type(source) is not bytes:
        raise BadRequest("an index operation carries the document as bytes")
    lengths = body[3] if len(body) > 3 else None
    if lengths is not None and type(lengths) is not list:
        raise BadRequest("an index operation's lengths are a list of token counts")
    position = _position(body[4]) if len(body) == 5 else 0
    return Decoded(index, incarnation, source, lengths=lengths, position=position)


def _position(value: Any) -> int:
    if type(value) is not int or not 0 <= value < BATCH_DOCS_MAX:
        raise BadRequest(f"a document's position in its batch is an integer in 0..{BATCH_DOCS_MAX - 1}")
    return value


def _decode_batch(index: str, incarnation: str, partitions: int, ids: Any, sources: Any, lengths: Any) -> Decoded:
    if type(ids) is not list or type(sources) is not list or type(lengths) is not list:
        raise BadRequest("a batch carries lists of ids, sources and lengths")
    count = len(ids)
    if not 0 < count <= BATCH_DOCS_MAX or len(sources) != count or len(lengths) % count:
        raise BadRequest(f"a batch carries 1 to {BATCH_DOCS_MAX} documents, each with an id, a source and as many lengths")
    # set(map(type, …)) runs in C: one pass per list, not a Python step per document.
    if not set(map(type, ids)) <= _ID_TYPES or not all(ids):
        raise BadRequest("a batch's ids are non-empty strings")
    if not set(map(type, sources)) <= _SOURCE_TYPES:
        raise BadRequest("a batch's sources are bytes, or nil for a tombstone")
    # Only their being integers is checked: a count tantivy refuses sends the document down the per-field path.
    if not set(map(type, lengths)) <= _COUNT_TYPES:
        raise BadRequest("a batch's lengths are token counts")
    return Decoded(
        index, incarnation, partitions=partitions, ids=ids, sources=sources, lengths=lengths, lengths_stride=len(lengths) // count
    )


_ID_TYPES = frozenset({str})
_SOURCE_TYPES = frozenset({bytes, type(None)})
_COUNT_TYPES = frozenset({int})


def check_batch_partition(op: Operation, decoded: Decoded) -> None:
    """BadRequest unless every id of a batch belongs to the operation's partition (its key's is the core's check)."""
    assert decoded.ids is not None
    mask, partition = decoded.partitions - 1, op.partition
    for doc_id in decoded.ids:
        # partition_of's hash, inlined: a replica checks every document of every batch it accepts.
        # (msgpack decoded the id as UTF-8, so it encodes back.)
        key = doc_id.encode("utf-8")
        if len(key) > KEY_BYTES_MAX:
            raise BadRequest(f"a batch's ids are at most {KEY_BYTES_MAX} bytes")
        if int.from_bytes(blake2b(key, digest_size=8).digest(), "big") & mask != partition:
            raise BadRequest(f"document {doc_id!r:.80} of a batch does not belong to partition {op.partition}")


@lru_cache(maxsize=1024)
def _is_incarnation(value: str) -> bool:
    # Cached: a batch names the same incarnation thousands of times, and the check is a regex.
    return INCARNATION_PATTERN.match(value) is not None


@lru_cache(maxsize=256)
def catalog_keys(index: str, partitions: int) -> tuple[bytes, ...]:
    """One key per partition (``keys[p]`` hashes to partition ``p``) for the index's catalog operations.

    Deterministic, so every coordinator writes an index's catalog entries
    under the same keys."""
    keys: list[bytes | None] = [None] * partitions
    missing, attempt = partitions, 0
    while missing:
        key = f"\x00catalog\x00{index}\x00{attempt}".encode()
        p = partition_of(key, partitions)
        if keys[p] is None:
            keys[p] = key
            missing -= 1
        attempt += 1
    return tuple(k for k in keys if k is not None)


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    """One incarnation's catalog record: its index name, schema (creates only) and the version first seen."""

    index: str
    schema: dict[str, Any] | None
    partitions: int
    hlc: int
    origin: str


@dataclass
class Catalog:
    """The incarnations this node has heard of: created (with schema) and dropped."""

    created: dict[str, CatalogEntry] = field(default_factory=dict)
    dropped: dict[str, CatalogEntry] = field(default_factory=dict)

    def live(self, index: str) -> str | None:
        """The index's live incarnation: its greatest created one, unless that one was dropped.

        A newer create supersedes every older incarnation for good, so dropping
        the newest does not bring an older one back."""
        return self.live_indexes().get(index)

    def live_indexes(self) -> dict[str, str]:
        """Every live index name → its incarnation."""
        newest: dict[str, str] = {}
        for inc, entry in self.created.items():
            if inc > newest.get(entry.index, ""):
                newest[entry.index] = inc
        return {name: inc for name, inc in newest.items() if inc not in self.dropped}

    def schema(self, incarnation: str) -> dict[str, Any]:
        entry = self.created[incarnation]
        assert entry.schema is not None
        return entry.schema

    def is_dead(self, incarnation: str) -> bool:
        """True if documents of ``incarnation`` can be discarded: dropped, or superseded by a newer create."""
        if incarnation in self.dropped:
            return True
        entry = self.created.get(incarnation)
        return entry is not None and self.live(entry.index) != incarnation

    def apply(self, op: Operation, decoded: Decoded) -> bool:
        """Apply one catalog operation; True if it told this node something new."""
        book = self.created if op.kind == KIND_CREATE else self.dropped
        if decoded.incarnation in book:
            return False
        book[decoded.incarnation] = CatalogEntry(decoded.index, decoded.schema, decoded.partitions, op.hlc, op.origin)
        return True

    def operations(self, partition: int) -> list[Operation]:
        """Catalog operations that teach an empty replica of ``partition`` this catalog (for ``fold``)."""
        ops = []
        for inc, e in sorted(self.created.items()):
            assert e.schema is not None
            key = catalog_keys(e.index, e.partitions)[partition]
            body = create_body(e.index, inc, e.schema, e.partitions)
            ops.append(Operation(ENGINE_NAME, partition, key, e.hlc, e.origin, KIND_CREATE, body))
        for inc, e in sorted(self.dropped.items()):
            key = catalog_keys(e.index, e.partitions)[partition]
            body = drop_body(e.index, inc, e.partitions)
            ops.append(Operation(ENGINE_NAME, partition, key, e.hlc, e.origin, KIND_DROP, body))
        return ops
