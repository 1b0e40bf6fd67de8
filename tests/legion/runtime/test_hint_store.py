"""The hint store: durable across reopening, counted per owner and partition, bounded."""

from __future__ import annotations

from legion.replication import Operation
from legion.runtime import hint_store
from legion.runtime.hint_store import HintStore


def op(partition: int, i: int, body: bytes = b"v") -> Operation:
    return Operation("kv", partition, f"k{i}".encode(), 1000 + i, "n1", "put", body)


def test_hints_survive_reopening_and_are_dropped_one_by_one(tmp_path):
    store = HintStore(tmp_path)
    assert store.add([("n2", op(3, i)) for i in range(5)] + [("n3", op(4, 9))]) == 6
    store.close()
    store = HintStore(tmp_path)
    assert store.pending() == {"n2": 5, "n3": 1}
    assert store.report("n2").pending == {3: 5}
    first = store.oldest("n2", 0, 2)
    assert [h.op for h in first] == [op(3, 0), op(3, 1)]
    store.drop("n2", first)
    assert store.pending() == {"n2": 3, "n3": 1}
    rest = store.oldest("n2", first[-1].id, 100)
    assert [h.op.key for h in rest] == [b"k2", b"k3", b"k4"]
    store.drop("n2", rest)
    assert store.pending() == {"n3": 1}
    assert store.drop_owner("n3") == 1 and store.pending() == {}
    store.close()
    assert HintStore(tmp_path).pending() == {}


def test_a_full_store_records_the_partition_lost_for_the_owner(tmp_path, monkeypatch):
    monkeypatch.setattr(hint_store, "HINTS_OPS_MAX", 3)
    store = HintStore(tmp_path)
    assert store.add([("n2", op(1, i)) for i in range(3)] + [("n2", op(5, 7)), ("n3", op(6, 8))]) == 3
    assert store.report("n2").lost == frozenset({5})
    assert store.report("n3").lost == frozenset({6}) and store.report("n3").pending == {}
    store.clear_lost("n2", [5])
    assert store.report("n2").lost == frozenset()
