"""ReplicaTrees: a tree is listed from the engine once, then follows applied writes key by key."""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Iterator
from pathlib import Path

import pytest

from engines.kv import KVEngine
from engines.kv.entries import KIND_DELETE, KIND_PUT, encode_put
from legion.hash_tree import HashTree
from legion.replication import Operation
from legion.runtime.anti_entropy import ReplicaTrees, op_batches


class CountingKV(KVEngine):
    """KV that counts full listings and remembers which keys it was asked about."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.full_listings = 0
        self.asked: list[set[bytes]] = []
        self.digest_keys_answer: str = "keys"

    def versions(self, partition: int, keys: Collection[bytes] | None = None) -> Iterator[tuple[bytes, bytes]]:
        if keys is None:
            self.full_listings += 1
        else:
            self.asked.append(set(keys))
        return super().versions(partition, keys)

    def digest_keys(self, op: Operation) -> Collection[bytes] | None:
        if self.digest_keys_answer == "none":
            return None
        if self.digest_keys_answer == "raise":
            raise RuntimeError("an engine bug")
        return super().digest_keys(op)


def put(key: bytes, hlc: int, value: bytes = b"v") -> Operation:
    return Operation("kv", 0, key, hlc, "n1", KIND_PUT, encode_put(None, value))


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[CountingKV]:
    kv = CountingKV(tmp_path)
    kv.open(0, tmp_path / "p0")
    yield kv
    kv.close(0)


def apply(engine: CountingKV, trees: ReplicaTrees, ops: list[Operation]) -> None:
    """What the log writer does: apply, then tell the trees (on its thread)."""
    engine.apply_batch({0: ops})
    trees.applied("kv", {0: ops})


def items(trees: ReplicaTrees) -> dict[bytes, bytes]:
    return asyncio.run(trees.view("kv", 0, lambda tree: tree.items()))


def test_a_tree_is_listed_once_then_follows_writes_key_by_key(engine: CountingKV) -> None:
    trees = ReplicaTrees({"kv": engine})
    apply(engine, trees, [put(b"a", 1), put(b"b", 1)])  # before any tree: nothing to note
    assert items(trees) == dict(engine.versions(0)) and len(items(trees)) == 2
    listings = engine.full_listings
    apply(engine, trees, [put(b"a", 5), put(b"c", 2)])
    apply(engine, trees, [Operation("kv", 0, b"b", 9, "n2", KIND_DELETE, b""), put(b"a", 3)])  # a: older, ignored
    now = items(trees)
    assert engine.full_listings == listings  # no rebuild for writes
    assert engine.asked[-1] == {b"a", b"b", b"c"}  # the touched keys, read once before the tree is used
    assert now == dict(engine.versions(0)) and now[b"a"] == b"5@n1" and now[b"b"] == b"9@n2"
    assert HashTree.build(engine.versions(0)).root() == asyncio.run(trees.view("kv", 0, lambda t: t.root()))


def test_a_reset_partition_is_listed_again(engine: CountingKV) -> None:
    trees = ReplicaTrees({"kv": engine})
    items(trees)
    trees.reset("kv", 0)
    apply(engine, trees, [put(b"x", 1)])
    assert items(trees) == {b"x": b"1@n1"}
    assert engine.full_listings == 2


@pytest.mark.parametrize("answer", ["none", "raise"])
def test_an_operation_that_may_change_anything_rebuilds_the_engine_s_trees(engine: CountingKV, answer: str) -> None:
    trees = ReplicaTrees({"kv": engine})
    items(trees)
    engine.digest_keys_answer = answer
    apply(engine, trees, [put(b"y", 1)])  # a raising digest_keys does not fail the write
    assert items(trees) == {b"y": b"1@n1"}
    assert engine.full_listings == 2


def test_op_batches_are_bounded_by_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("legion.runtime.anti_entropy.HANDOFF_BATCH_OPS_MAX", 3)
    ops = [put(bytes([i]), i) for i in range(7)]
    assert [len(b) for b in op_batches(iter(ops))] == [3, 3, 1]
    assert [op for b in op_batches(iter(ops)) for op in b] == ops
