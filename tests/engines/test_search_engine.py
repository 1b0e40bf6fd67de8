"""The search engine as the core drives it: batches parked until their index is created, validated, folded."""

from __future__ import annotations

from pathlib import Path

import pytest

from engines.search import operations as ops
from engines.search.engine import SearchEngine
from legion.errors import BadRequest
from legion.keyspace import partition_of
from legion.replication import Operation

PARTITIONS = 8
INC = "0000000000000abc"
SCHEMA = {"id_field": "id", "fields": {"id": {"type": "keyword"}, "body": {"type": "text"}}}


def _engine(tmp_path: Path) -> SearchEngine:
    engine = SearchEngine(tmp_path / "search")
    for p in range(PARTITIONS):
        engine.open(p, tmp_path / f"p{p}")
    return engine


def _create(partition: int, incarnation: str = INC, hlc: int = 1, origin: str = "n1") -> Operation:
    key = ops.catalog_keys("docs", PARTITIONS)[partition]
    body = ops.create_body("docs", incarnation, SCHEMA, PARTITIONS)
    return Operation(ops.ENGINE_NAME, partition, key, hlc, origin, ops.KIND_CREATE, body)


def _drop(partition: int, incarnation: str = INC) -> Operation:
    key = ops.catalog_keys("docs", PARTITIONS)[partition]
    return Operation(ops.ENGINE_NAME, partition, key, 2, "n1", ops.KIND_DROP, ops.drop_body("docs", incarnation, PARTITIONS))


def _batch(partition: int, docs: dict[str, str], hlc: int, incarnation: str = INC) -> Operation:
    ids = list(docs)
    assert all(partition_of(i, PARTITIONS) == partition for i in ids)
    sources = [ops.encode_source({"id": i, "body": body}) for i, body in docs.items()]
    body = ops.batch_body("docs", incarnation, PARTITIONS, ids, sources, [])
    return Operation(ops.ENGINE_NAME, partition, ops.catalog_keys("docs", PARTITIONS)[partition], hlc, "n1", ops.KIND_BATCH, body)


def _ids_in(partition: int, count: int) -> list[str]:
    return [i for i in (f"doc{n}" for n in range(500)) if partition_of(i, PARTITIONS) == partition][:count]


def _get(engine: SearchEngine, doc_id: str) -> list | None:
    return engine.read(partition_of(doc_id, PARTITIONS), {"op": "get", "index": "docs", "incarnation": INC, "id": doc_id})


def test_a_batch_for_an_index_not_created_yet_is_parked_folded_and_applied_when_the_create_arrives(tmp_path):
    engine = _engine(tmp_path)
    ids = _ids_in(2, 3)
    batch = _batch(2, {i: f"text of {i}" for i in ids}, 10)
    engine.validate(batch)
    engine.apply_batch({2: [batch]})
    assert engine.shard(INC) is None
    assert list(engine.fold(2)) == [batch]  # a handoff carries it as it came
    engine.apply_batch({p: [_create(p)] for p in range(PARTITIONS)})
    assert [_get(engine, i)[:2] for i in ids] == [[10, "n1"]] * 3
    assert [_get(engine, i)[3] for i in ids] == [0, 1, 2]  # each document's position in its batch
    engine.flush(range(PARTITIONS))
    folded = list(engine.fold(2))
    assert [op.kind for op in folded] == [ops.KIND_CREATE] + [ops.KIND_INDEX] * 3  # parked ones are gone once flushed
    assert sorted(ops.decode(op).position for op in folded[1:]) == [0, 1, 2]
    for p in range(PARTITIONS):
        engine.close(p)


def test_a_batch_for_a_dropped_index_is_ignored(tmp_path):
    engine = _engine(tmp_path)
    engine.apply_batch({p: [_create(p), _drop(p)] for p in range(PARTITIONS)})
    ids = _ids_in(5, 2)
    engine.apply_batch({5: [_batch(5, {i: "late" for i in ids}, 10)]})
    assert [op.kind for op in engine.fold(5)] == [ops.KIND_CREATE, ops.KIND_DROP]
    for p in range(PARTITIONS):
        engine.close(p)


def test_nodes_that_learnt_the_same_catalog_from_different_partitions_hold_the_same_versions_of_it(tmp_path):
    # With N=1 each node learns an index from its own partitions' create operations, each stamped
    # apart; a node still holding a partition it handed over must not differ from the owner by that.
    a, b, c = (_engine(tmp_path / name) for name in "abc")
    a.apply_batch({p: [_create(p, hlc=10 + p, origin="n1")] for p in range(0, 4)})
    b.apply_batch({p: [_create(p, hlc=10 + p, origin="n2")] for p in range(4, 8)})
    for p in range(PARTITIONS):
        assert dict(a.versions(p)) == dict(b.versions(p)) != {}
    c.apply_batch({p: [_create(p), _drop(p)] for p in range(PARTITIONS)})  # what the catalog says does count
    assert dict(c.versions(0)) != dict(a.versions(0))
    key = ops.catalog_keys("docs", PARTITIONS)[0]
    assert dict(a.versions(0, [key])) == dict(b.versions(0, [key])) == {key: dict(a.versions(0))[key]}
    for engine in (a, b, c):
        for p in range(PARTITIONS):
            engine.close(p)


def test_a_replica_refuses_a_batch_holding_a_document_of_another_partition(tmp_path):
    engine = _engine(tmp_path)
    stray = _ids_in(1, 1)[0]
    ids = [*_ids_in(4, 2), stray]
    body = ops.batch_body("docs", INC, PARTITIONS, ids, [b'{"id":"x"}'] * 3, [])
    op = Operation(ops.ENGINE_NAME, 4, ops.catalog_keys("docs", PARTITIONS)[4], 1, "n1", ops.KIND_BATCH, body)
    with pytest.raises(BadRequest, match="does not belong to partition 4"):
        engine.validate(op)
    for p in range(PARTITIONS):
        engine.close(p)


def test_a_flush_commits_only_when_a_flushed_partition_holds_uncommitted_writes(tmp_path):
    engine = _engine(tmp_path)
    engine.apply_batch({p: [_create(p)] for p in range(PARTITIONS)})
    engine.flush(range(PARTITIONS))
    ids = _ids_in(3, 4)
    engine.apply_batch({3: [_batch(3, {i: "text" for i in ids}, 10)]})
    shard = engine.shard(INC)
    commits = engine.metrics()["commits"]
    engine.flush([5])  # e.g. before partition 5 is dropped: nothing of it is pending
    assert engine.metrics()["commits"] == commits and shard.view().searcher.num_docs == 0
    engine.drop(5)
    assert shard.view().searcher.num_docs == 0  # partition 3's documents are still not committed
    engine.flush([3, 5])
    assert engine.metrics()["commits"] == commits + 1 and shard.view().searcher.num_docs == len(ids)
    engine.flush(range(PARTITIONS))  # nothing pending anywhere: no commit
    assert engine.metrics()["commits"] == commits + 1
    for p in range(PARTITIONS):
        if p != 5:
            engine.close(p)
