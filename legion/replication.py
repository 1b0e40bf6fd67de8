"""Operations and the rules that make replicas converge.

Pure. An ``Operation`` is one change to one key of one engine's partition,
stamped with a hybrid-logical-clock timestamp and the node that coordinated
it. Engines define what ``kind`` and ``body`` mean; the core only needs every
engine's ``apply`` to be idempotent and commutative, so that two replicas that
have seen the same set of operations hold the same state in whatever order
the operations arrived. ``supersedes`` is the last-writer-wins order every
bundled engine uses: a higher timestamp wins, the origin id breaks ties.

Quorum arithmetic lives here too: how many acknowledgements a write needs
given the preference list it was sent to.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import msgpack

from legion.errors import BadRequest, LegionError, from_json


@dataclass(frozen=True, slots=True)
class Operation:
    """One change to one key in one partition of one engine."""

    engine: str
    partition: int
    key: bytes
    hlc: int
    origin: str
    kind: str
    body: bytes = b""

    @property
    def version(self) -> tuple[int, str]:
        """The last-writer-wins order: timestamp, then origin node id."""
        return (self.hlc, self.origin)

    def to_wire(self) -> list[object]:
        return [self.engine, self.partition, self.key, self.hlc, self.origin, self.kind, self.body]

    @classmethod
    def from_wire(cls, raw: object) -> Operation:
        if not isinstance(raw, (list, tuple)) or len(raw) != 7:
            raise BadRequest("an operation is a list of 7 fields")
        engine, partition, key, hlc, origin, kind, body = raw
        if not (
            isinstance(engine, str)
            and isinstance(partition, int)
            and isinstance(key, bytes)
            and isinstance(hlc, int)
            and isinstance(origin, str)
            and isinstance(kind, str)
            and isinstance(body, bytes)
        ):
            raise BadRequest("an operation's fields have the wrong types")
        return cls(engine, partition, key, hlc, origin, kind, body)


def supersedes(a: tuple[int, str], b: tuple[int, str] | None) -> bool:
    """True if version ``a`` wins over ``b`` under last-writer-wins."""
    return b is None or a > b


# An operation's wire fields in order, as one tuple (msgpack writes a tuple as a list), and their exact types.
_wire_fields = operator.attrgetter("engine", "partition", "key", "hlc", "origin", "kind", "body")
_WIRE_TYPES = (str, int, bytes, int, str, str, bytes)


def encode_ops(ops: Iterable[Operation]) -> bytes:
    """A batch of operations as one msgpack body."""
    return msgpack.packb(list(map(_wire_fields, ops)), use_bin_type=True)


def unpack(body: bytes, kind: type[list[Any]] | type[dict[Any, Any]]) -> Any:
    """A msgpack body that must hold a ``kind`` (list or map); BadRequest otherwise."""
    try:
        value = msgpack.unpackb(body, raw=False)
    except (ValueError, msgpack.UnpackException) as exc:
        raise BadRequest(f"body is not valid msgpack: {exc}") from None
    if not isinstance(value, kind):
        raise BadRequest(f"body must be a msgpack {'list' if kind is list else 'map'}")
    return value


def decode_ops(body: bytes) -> list[Operation]:
    """The inverse of ``encode_ops``; raises BadRequest on anything malformed."""
    out = []
    for item in unpack(body, list):
        # Fast path: exactly the types encode_ops writes (from_wire also takes subclasses, e.g. a bool).
        if type(item) is list and len(item) == 7 and tuple(map(type, item)) == _WIRE_TYPES:
            out.append(Operation(*item))
        else:
            out.append(Operation.from_wire(item))
    return out


def encode_apply_reply(count: int, refused: dict[int, LegionError]) -> bytes:
    """A replica's answer to a batch of ``count`` operations: how many it applied, and why it refused the rest."""
    errors = {i: {**exc.to_json(), "status": exc.http_status} for i, exc in refused.items()}
    return msgpack.packb({"applied": count - len(refused), "errors": errors}, use_bin_type=True)


def decode_apply_errors(raw: bytes) -> dict[int, LegionError]:
    """The refusals in an ``encode_apply_reply`` answer: operation index → typed error."""
    try:
        reply = msgpack.unpackb(raw, raw=False, strict_map_key=False)
        return {int(i): from_json(int(e.get("status", 400)), e) for i, e in (reply.get("errors") or {}).items()}
    except (ValueError, TypeError, AttributeError, msgpack.UnpackException):
        raise BadRequest("the apply reply was not understood") from None


def write_quorum(requested: int | None, replicas: int) -> int:
    """Acknowledgements a write needs: ``requested`` (default: a majority of the replicas).

    BadRequest when ``requested`` is below 1 or above ``replicas`` (the copies
    kept of the partition: N, or fewer while the cluster has fewer nodes) —
    never silently capped, so asking for more copies than exist is visible."""
    if replicas < 1:
        raise BadRequest("no replicas to write to")
    if requested is None:
        return min(replicas, max(1, replicas // 2 + 1)) if replicas >= 2 else 1
    if requested < 1:
        raise BadRequest(f"w must be at least 1, got {requested}")
    return _within_replicas("w", requested, replicas)


def read_quorum(requested: int | None, replicas: int) -> int:
    """Replies a read needs: ``requested`` (default 1: the first live replica), at most ``replicas``.

    One reply is the fast default (Cassandra's ONE, Elasticsearch's any in-sync
    copy): a replica that missed writes while it was down re-syncs before it
    serves reads again. Ask for ``r`` with ``r + w > N`` (e.g. r=2, w=2) to read
    your own writes even while a replica is lagging."""
    if replicas < 1:
        raise BadRequest("no replicas to read from")
    if requested is None:
        return 1
    if requested < 1:
        raise BadRequest(f"r must be at least 1, got {requested}")
    return _within_replicas("r", requested, replicas)


def _within_replicas(name: str, requested: int, replicas: int) -> int:
    if requested > replicas:
        raise BadRequest(
            f"{name}={requested} is more than the {replicas} copies this cluster keeps of each partition: "
            f"ask for {name} between 1 and {replicas}"
        )
    return requested
