"""Hash trees for active anti-entropy: what two replicas of a partition hold, compared in a few round trips.

Pure: plain data, no I/O, no clock. A replica's state of one engine's
partition is a set of *items* — ``(key, version)``, both bytes, as the
engine's ``Engine.versions`` lists them (a KV key and its winning
``hlc@origin``; a document id and what is held for it). Two replicas hold the
same state exactly when their item sets are equal.

Layout: every key falls in one of ``segments`` *segments* by a stable hash of
the key (``segment_of``); segments are grouped ``fanout`` at a time into
*buckets*; the root summarises the buckets. A segment's hash is the sum,
modulo 2**64, of its items' hashes (``item_hash``), so it depends on the set
only — not on the order items were added — and one item changes it in O(1):
``set`` subtracts the old item's hash and adds the new one. That is what
keeps the tree current while writes are applied, without a rebuild. A bucket's
hash is the sum of its segments'; the root is a digest of the bucket hashes.

An exchange between replicas A and B walks down where they differ, one
level per round trip (``diff`` runs it locally, and ``legion.runtime.
anti_entropy`` runs it between nodes with the same functions):

1. B sends its root and bucket hashes; equal roots end the exchange;
2. A names the buckets that differ (``differing_indexes``), B sends those
   buckets' segment hashes (``segment_hashes``);
3. A names the segments that differ, B sends their items (``items_in``);
4. ``differing_keys`` compares A's items of those segments with B's: the keys
   whose versions differ or that one side lacks. Those are then shipped both
   ways, and the engines' own merge (last-writer-wins, insert-once) decides.

A tree keeps its items (key → version) so it can answer step 3 without the
engine and update in O(1): its memory is about the size of the keys held
plus ~100 bytes per key.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence

import msgpack

SEGMENTS_DEFAULT = 1024
FANOUT_DEFAULT = 32
_MASK = (1 << 64) - 1


def _digest64(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def segment_of(key: bytes, segments: int = SEGMENTS_DEFAULT) -> int:
    """The segment ``key`` falls in: a stable hash (same in every process), modulo ``segments``."""
    return _digest64(b"segment\0" + key) % segments


def item_hash(key: bytes, version: bytes) -> int:
    """A 64-bit hash of one item; the length prefix keeps ``(ab, c)`` apart from ``(a, bc)``."""
    return _digest64(len(key).to_bytes(4, "big") + key + version)


def ops_version(wires: Iterable[Sequence[object]]) -> bytes:
    """A version for a key whose state is a set of operations (given as ``Operation.to_wire()`` lists).

    The digest of the sorted set: equal on two replicas exactly when they hold the same
    operations for the key, in whatever order they came. ``Engine.versions``'s default."""
    hasher = hashlib.blake2b(digest_size=16)
    for wire in sorted(msgpack.packb(list(w), use_bin_type=True) for w in wires):
        hasher.update(len(wire).to_bytes(4, "big"))
        hasher.update(wire)
    return hasher.digest()


class HashTree:
    """One replica's hash tree of one engine's partition (see the module docstring)."""

    def __init__(self, segments: int = SEGMENTS_DEFAULT, fanout: int = FANOUT_DEFAULT) -> None:
        if segments < 1 or fanout < 1 or segments % fanout:
            raise ValueError(f"segments ({segments}) must be a positive multiple of fanout ({fanout})")
        self.segments = segments
        self.fanout = fanout
        self._items: list[dict[bytes, bytes]] = [{} for _ in range(segments)]
        self._hashes = [0] * segments

    @classmethod
    def build(
        cls, items: Iterable[tuple[bytes, bytes]], segments: int = SEGMENTS_DEFAULT, fanout: int = FANOUT_DEFAULT
    ) -> HashTree:
        """A tree of ``items`` (a key listed twice keeps its last version, as ``set`` would)."""
        tree = cls(segments, fanout)
        for key, version in items:
            tree.set(key, version)
        return tree

    def __len__(self) -> int:
        return sum(map(len, self._items))

    def get(self, key: bytes) -> bytes | None:
        return self._items[segment_of(key, self.segments)].get(key)

    def set(self, key: bytes, version: bytes | None) -> None:
        """Record that this replica now holds ``version`` of ``key`` (None: holds nothing for it)."""
        segment = segment_of(key, self.segments)
        held = self._items[segment]
        old = held.get(key)
        if old == version:
            return
        total = self._hashes[segment]
        if old is not None:
            total -= item_hash(key, old)
            del held[key]
        if version is not None:
            total += item_hash(key, version)
            held[key] = version
        self._hashes[segment] = total & _MASK

    def items(self) -> dict[bytes, bytes]:
        """Every item, key → version."""
        out: dict[bytes, bytes] = {}
        for held in self._items:
            out.update(held)
        return out

    @property
    def buckets(self) -> int:
        return self.segments // self.fanout

    def bucket_hashes(self) -> list[int]:
        """One hash per bucket: the sum of its segments' hashes, modulo 2**64."""
        f = self.fanout
        return [sum(self._hashes[b * f : (b + 1) * f]) & _MASK for b in range(self.buckets)]

    def root(self) -> bytes:
        """A digest of the whole tree: equal on two replicas exactly when their items are (but for a 2**-64 chance)."""
        return root_of(self.bucket_hashes())

    def segment_hashes(self, buckets: Iterable[int]) -> dict[int, int]:
        """The hashes of every segment of ``buckets``, by segment number."""
        f = self.fanout
        return {s: self._hashes[s] for b in buckets for s in range(b * f, (b + 1) * f)}

    def items_in(self, segments: Iterable[int]) -> dict[bytes, bytes]:
        """The items of ``segments``, key → version."""
        out: dict[bytes, bytes] = {}
        for s in segments:
            out.update(self._items[s])
        return out


def root_of(bucket_hashes: Sequence[int]) -> bytes:
    """The root digest of a tree with these bucket hashes (what ``HashTree.root`` returns)."""
    return hashlib.blake2b(b"".join(h.to_bytes(8, "big") for h in bucket_hashes), digest_size=16).digest()


def differing_indexes(mine: Mapping[int, int] | Sequence[int], theirs: Mapping[int, int] | Sequence[int]) -> list[int]:
    """The buckets (a list of hashes) or segments (a map of hashes) whose hashes differ, in order."""
    if isinstance(mine, Mapping) and isinstance(theirs, Mapping):
        return sorted(i for i in set(mine) | set(theirs) if mine.get(i, 0) != theirs.get(i, 0))
    if len(mine) != len(theirs):
        raise ValueError(f"the trees have {len(mine)} and {len(theirs)} buckets: they must be built alike")
    return [i for i, (a, b) in enumerate(zip(mine, theirs)) if a != b]


def differing_keys(mine: Mapping[bytes, bytes], theirs: Mapping[bytes, bytes]) -> set[bytes]:
    """Keys one side lacks or holds in another version."""
    return {k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k)}


def diff(a: HashTree, b: HashTree) -> set[bytes]:
    """The keys on which ``a`` and ``b`` differ, found the way two replicas find them (module docstring)."""
    if (a.segments, a.fanout) != (b.segments, b.fanout):
        raise ValueError("the trees must have the same segments and fanout")
    theirs_buckets = b.bucket_hashes()
    if a.root() == root_of(theirs_buckets):
        return set()
    buckets = differing_indexes(a.bucket_hashes(), theirs_buckets)
    segments = differing_indexes(a.segment_hashes(buckets), b.segment_hashes(buckets))
    return differing_keys(a.items_in(segments), b.items_in(segments))
