"""Stand-ins for two pure decisions the data-path simulator needs before the core has them.

Pure. The simulator (``legion.testing.data_sim``) drives the core's own pure
code wherever it exists — ``replication`` (operations, last-writer-wins,
quorums), ``routing`` (write plans, read order, forwarding), ``cluster_state``
and ``placement`` (joins, leaves, handoff commits), ``keyspace``. Two
decisions of issue 7 have no pure module in the core yet; this module models
them, behind the small interface the simulator calls, so that swapping in the
core's module changes only the imports of ``data_sim``:

- **sloppy quorum** (``fallbacks``): when an owner of a partition is believed
  down, which live node keeps the write as a hint for it — live members outside
  the partition's owners first, in ring order from the partition, then live
  owners. The coordinator counts each node once towards ``W`` whatever it holds
  (a replica, a hint, or both), so a hint never stands in for a copy on a node
  that already counted.
- **hash-tree exchange** (``tree`` / ``differing_buckets`` / ``bucket_of``):
  a one-level tree — the keys hashed into ``TREE_BUCKETS`` buckets, each
  bucket's digest over its sorted ``(key, version)`` pairs — compared bucket by
  bucket; only the keys of differing buckets travel.

Both are the simple form of what Dynamo and Riak do; the simulator checks the
properties (hints reach their owner before they are dropped, replicas converge),
not the shape of these functions.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Iterable, Mapping

from legion import cluster_state as cs
from legion.replication import Operation, supersedes

TREE_BUCKETS = 16

Version = tuple[int, str]
Tree = tuple[bytes, ...]


def fallbacks(state: cs.ClusterState, partition: int, live: set[str] | frozenset[str]) -> tuple[str, ...]:
    """Live nodes that may keep hints for the down owners of ``partition``, in the order to use them."""
    members = sorted(m.id for m in state.members if m.status in (cs.JOINING, cs.UP) and m.id in live)
    if not members:
        return ()
    start = partition % len(members)
    ring = members[start:] + members[:start]
    owning = set(cs.owners(state, partition))
    return tuple(n for n in ring if n not in owning) + tuple(n for n in ring if n in owning)


def bucket_of(key: bytes) -> int:
    """The tree bucket a key's digest goes into (stable across processes: crc32, not ``hash``)."""
    return zlib.crc32(key) % TREE_BUCKETS


def tree(ops: Iterable[Operation]) -> Tree:
    """The digest of each bucket over the ``(key, version)`` of the operations a replica holds."""
    pairs: list[list[tuple[bytes, Version]]] = [[] for _ in range(TREE_BUCKETS)]
    for op in ops:
        pairs[bucket_of(op.key)].append((op.key, op.version))
    return tuple(hashlib.blake2b(repr(sorted(bucket)).encode(), digest_size=8).digest() for bucket in pairs)


def differing_buckets(mine: Tree, theirs: Tree) -> list[int]:
    """Buckets whose digests differ: the only ones whose keys two replicas exchange."""
    return [b for b, (x, y) in enumerate(zip(mine, theirs, strict=True)) if x != y]


def newer_than(ours: Mapping[bytes, Operation], theirs: Iterable[Operation]) -> list[Operation]:
    """Of ``theirs``, the operations that win over what ``ours`` holds for their key (or that ours lacks)."""
    return [op for op in theirs if supersedes(op.version, _version(ours.get(op.key)))]


def _version(op: Operation | None) -> Version | None:
    return None if op is None else op.version
