"""A node's tantivy shard: last writer wins per id, tombstones, realtime get, fold and drop by partition."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
import tantivy

from engines.search import operations as ops
from engines.search.schema import parse_schema
from engines.search.document_builder import LengthCounter
from engines.search.engine import SearchEngine
from engines.search.query_compile import local_stats
from engines.search.ranking import StatsRequest
from engines.search import shard as shard_module
from engines.search.shard import Shard
from legion.keyspace import partition_of
from legion.replication import Operation
from legion.testing.convergence import assert_converges

SCHEMA = parse_schema(
    {"id_field": "id", "fields": {"id": {"type": "keyword"}, "body": {"type": "text"}, "n": {"type": "i64", "fast": True}}}
)
INC = "0000000000000abc"
PARTITIONS = 8
_dirs = itertools.count()


def _in_order_and_shuffled(tmp: Path, ops_list: list[Operation], rnd, cut: int) -> tuple[Shard, Shard]:
    """Two shards: one given ``ops_list`` in order; the other the same shuffled, half of it twice, in
    chunks of ``cut``, committing after a chunk at random."""
    shuffled = ops_list + rnd.sample(ops_list, k=len(ops_list) // 2)
    rnd.shuffle(shuffled)
    a, b = _shard(tmp), _shard(tmp)
    _apply(a, ops_list)
    a.commit()
    for start in range(0, len(shuffled), cut):
        _apply(b, shuffled[start : start + cut])
        if rnd.random() < 0.5:
            b.commit()
    b.commit()
    return a, b


def _shard(tmp: Path) -> Shard:
    return Shard(tmp / f"shard{next(_dirs)}", "docs", INC, SCHEMA)


def _index(doc_id: str, body: str, hlc: int, origin: str = "n1", lengths: bool = False) -> Operation:
    """An index operation; with ``lengths`` it carries its field lengths, as a coordinator writes it."""
    doc = {"id": doc_id, "body": body, "n": hlc}
    counted = LengthCounter(SCHEMA)(doc) if lengths else None
    body_bytes = ops.index_body("docs", INC, ops.encode_source(doc), counted)
    return Operation(ops.ENGINE_NAME, partition_of(doc_id, PARTITIONS), doc_id.encode(), hlc, origin, ops.KIND_INDEX, body_bytes)


def _delete(doc_id: str, hlc: int, origin: str = "n1") -> Operation:
    return Operation(ops.ENGINE_NAME, partition_of(doc_id, PARTITIONS), doc_id.encode(), hlc, origin, ops.KIND_DELETE, ops.delete_body("docs", INC))


def _apply(shard: Shard, batch: list[Operation]) -> None:
    shard.apply([(op, ops.decode(op)) for op in batch])


def _state(shard: Shard) -> dict[str, tuple[int, str, bytes | None]]:
    out = {}
    for p in range(PARTITIONS):
        for op in shard.fold(p):
            assert op.partition == p
            out[op.key.decode()] = (op.hlc, op.origin, ops.decode(op).source)
    return out


def _live_ids(shard: Shard) -> set[str]:
    return {k for k, (_h, _o, source) in _state(shard).items() if source is not None}


def test_newest_version_wins_and_a_tombstone_beats_an_older_write(tmp_path):
    shard = _shard(tmp_path)
    _apply(shard, [_index("a", "first", 10), _index("b", "bee", 10)])
    _apply(shard, [_index("a", "older", 5), _delete("b", 20)])
    shard.commit()
    _apply(shard, [_index("b", "resurrect?", 15), _index("a", "second", 30)])
    shard.commit()
    state = _state(shard)
    assert json.loads(state["a"][2])["body"] == "second"
    assert state["b"] == (20, "n1", None)
    assert _live_ids(shard) == {"a"}
    shard.close()


def test_get_sees_applied_writes_before_the_commit(tmp_path):
    shard = _shard(tmp_path)
    _apply(shard, [_index("a", "x", 1)])
    assert shard.get("a").source is not None
    assert shard.searcher().num_docs == 0  # not searchable until the commit
    shard.commit()
    assert shard.searcher().num_docs == 1
    assert shard.get("missing") is None
    shard.close()


def test_ties_on_the_timestamp_break_by_origin(tmp_path):
    shard = _shard(tmp_path)
    _apply(shard, [_index("a", "from n2", 7, "n2")])
    shard.commit()
    _apply(shard, [_index("a", "from n1", 7, "n1")])
    shard.commit()
    assert json.loads(_state(shard)["a"][2])["body"] == "from n2"
    shard.close()


def test_drop_partition_removes_only_that_partition(tmp_path):
    shard = _shard(tmp_path)
    docs = [_index(f"d{i}", "text", 1) for i in range(40)]
    _apply(shard, docs)
    shard.commit()
    victim = docs[0].partition
    shard.drop_partition(victim)
    remaining = {op.key.decode() for op in docs if op.partition != victim}
    assert _live_ids(shard) == remaining
    shard.close()


def test_dropping_a_partition_the_shard_holds_nothing_of_keeps_its_searcher_but_pending_writes_are_dropped(tmp_path):
    shard = _shard(tmp_path)
    empty = 0
    docs = [op for op in (_index(f"d{i}", "text", 1) for i in range(40)) if op.partition != empty]
    _apply(shard, docs)
    shard.commit()
    view = shard.view()
    shard.drop_partition(empty)  # e.g. a copy handed over that never received a write
    assert shard.view() is view and _live_ids(shard) == {op.key.decode() for op in docs}
    late = next(op for op in [_index(f"e{i}", "text", 2) for i in range(200)] if op.partition == empty)
    _apply(shard, [late])  # applied, not committed: the partition is not empty any more
    shard.drop_partition(empty)
    shard.commit()
    assert shard.view() is not view and late.key.decode() not in _live_ids(shard)
    shard.close()


def test_a_fold_rebuilds_the_shard_exactly_including_tombstones(tmp_path):
    source = _shard(tmp_path)
    _apply(source, [_index(f"d{i}", f"text {i}", i + 1) for i in range(30)] + [_delete("d3", 100)])
    source.commit()
    _apply(source, [_index("late", "not yet committed", 5)])  # pending writes are folded too
    copy = _shard(tmp_path)
    for p in range(PARTITIONS):
        _apply(copy, list(source.fold(p)))
    copy.commit()
    assert _state(copy) == _state(source)
    _apply(copy, [_index("d3", "older than the delete", 50)])
    copy.commit()
    assert "d3" not in _live_ids(copy)
    source.close()
    copy.close()


operations = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "c", "d"]), st.integers(1, 6), st.sampled_from(["n1", "n2"]), st.booleans(), st.booleans()
    ),
    min_size=1,
    max_size=25,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(operations, st.randoms(use_true_random=False), st.integers(1, 5))
def test_any_order_duplicates_and_batching_reach_the_same_state(tmp_path, history, rnd, cut):
    # A version names exactly one operation (each node's clock strictly increases): keep the first per version.
    unique = {(h, o): (i, h, o, d, n) for i, h, o, d, n in reversed(history)}
    ops_list = [(_delete(i, h, o) if d else _index(i, f"v{h}{o}", h, o, lengths=n)) for i, h, o, d, n in unique.values()]
    a, b = _in_order_and_shuffled(tmp_path, ops_list, rnd, cut)
    assert _state(a) == _state(b)
    # The model: per id, the greatest (hlc, origin) wins.
    model = {}
    for op in ops_list:
        if op.key not in model or op.version > model[op.key].version:
            model[op.key] = op
    assert {k.decode(): (op.hlc, op.origin) for k, op in model.items()} == {k: v[:2] for k, v in _state(a).items()}
    assert a.searcher().num_docs == len(model)  # one document per id: replaced versions were deleted
    a.close()
    b.close()


# --- batches: one operation carrying many documents of one partition ---------------------------------

# Ids that share a partition, so that any of them may travel in one batch.
SAME_PARTITION = [i for i in (f"doc{n}" for n in range(400)) if partition_of(i, PARTITIONS) == 0][:6]


def _batch(docs: list[tuple[str, str | None]], hlc: int, origin: str = "n1", lengths: bool = True) -> Operation:
    """A batch of (id, body or None for a tombstone), in order; with ``lengths`` every document carries its counts."""
    partition = partition_of(docs[0][0], PARTITIONS)
    sources = [None if body is None else ops.encode_source({"id": i, "body": body, "n": hlc}) for i, body in docs]
    counter = LengthCounter(SCHEMA)
    counts = [c for i, body in docs for c in counter({"id": i, "body": body, "n": hlc} if body is not None else {})] if lengths else []
    body_bytes = ops.batch_body("docs", INC, PARTITIONS, [i for i, _ in docs], sources, counts)
    key = ops.catalog_keys("docs", PARTITIONS)[partition]
    return Operation(ops.ENGINE_NAME, partition, key, hlc, origin, ops.KIND_BATCH, body_bytes)


def _versions(shard: Shard) -> dict[str, tuple[int, str, int, bytes | None]]:
    """Every id's (hlc, origin, position, source), as a fold shows it."""
    out = {}
    for p in range(PARTITIONS):
        for op in shard.fold(p):
            decoded = ops.decode(op)
            out[op.key.decode()] = (op.hlc, op.origin, decoded.position, decoded.source)
    return out


def test_in_a_batch_the_last_occurrence_of_an_id_wins_and_positions_order_against_other_writes(tmp_path):
    a, b, c = SAME_PARTITION[:3]
    shard = _shard(tmp_path)
    _apply(shard, [_batch([(a, "first"), (b, "bee"), (a, "second"), (c, None)], 10)])
    state = _versions(shard)
    assert json.loads(state[a][3])["body"] == "second" and state[a][:3] == (10, "n1", 2)
    assert state[c] == (10, "n1", 3, None)  # a tombstone in a batch
    # A single write with the batch's own (hlc, origin) compares as position 0: older than a's position 2.
    _apply(shard, [_index(a, "alone", 10), _index(b, "newer", 11)])
    shard.commit()
    state = _versions(shard)
    assert json.loads(state[a][3])["body"] == "second"
    assert json.loads(state[b][3])["body"] == "newer"
    assert _live_ids(shard) == {a, b}
    shard.close()


def test_a_batch_without_lengths_takes_the_per_field_path_and_indexes_the_same(tmp_path):
    docs = [(i, f"words {n} and more") for n, i in enumerate(SAME_PARTITION)]
    with_counts, without = _shard(tmp_path), _shard(tmp_path)
    _apply(with_counts, [_batch(docs, 5)])
    _apply(without, [_batch(docs, 5, lengths=False)])
    with_counts.commit()
    without.commit()
    assert _versions(with_counts) == _versions(without)
    sums = {"b": {"sum": {"field": "_len_body"}}}
    everything = tantivy.Query.all_query()
    assert with_counts.searcher().aggregate(everything, sums) == without.searcher().aggregate(everything, sums)
    with_counts.close()
    without.close()


def test_a_fold_of_batched_documents_keeps_their_positions(tmp_path):
    source = _shard(tmp_path)
    _apply(source, [_batch([(i, f"v{n}") for n, i in enumerate(SAME_PARTITION)], 20), _delete(SAME_PARTITION[0], 30)])
    source.commit()
    _apply(source, [_batch([(SAME_PARTITION[1], "pending"), (SAME_PARTITION[1], "pending, later")], 40)])
    copy = _shard(tmp_path)
    for p in range(PARTITIONS):
        _apply(copy, list(source.fold(p)))
    copy.commit()
    assert _versions(copy) == _versions(source)
    assert _versions(copy)[SAME_PARTITION[1]][:3] == (40, "n1", 1)
    # The batches arriving late change nothing: every document of them is already held at its version.
    _apply(copy, [_batch([(i, f"v{n}") for n, i in enumerate(SAME_PARTITION)], 20)])
    copy.commit()
    assert _versions(copy) == _versions(source)
    source.close()
    copy.close()


writes = st.lists(
    st.one_of(
        # a single index or delete: (id index, hlc, origin, deleted, with lengths)
        st.tuples(st.just("one"), st.integers(0, 3), st.integers(1, 6), st.sampled_from(["n1", "n2"]), st.booleans(), st.booleans()),
        # a batch: (documents as (id index, deleted)), hlc, origin, with lengths
        st.tuples(
            st.just("batch"),
            st.lists(st.tuples(st.integers(0, 3), st.booleans()), min_size=1, max_size=6),
            st.integers(1, 6),
            st.sampled_from(["n1", "n2"]),
            st.booleans(),
        ),
    ),
    min_size=1,
    max_size=15,
)


def _write_ops(history: list[tuple]) -> list[Operation]:
    """The operations of a history, one per version (each node's clock strictly increases)."""
    out: dict[tuple[int, str], Operation] = {}
    for n, write in enumerate(history):
        if write[0] == "one":
            _, i, hlc, origin, deleted, lengths = write
            doc_id = SAME_PARTITION[i]
            op = _delete(doc_id, hlc, origin) if deleted else _index(doc_id, f"v{n}", hlc, origin, lengths=lengths)
        else:
            _, docs, hlc, origin, lengths = write
            op = _batch([(SAME_PARTITION[i], None if deleted else f"v{n}.{k}") for k, (i, deleted) in enumerate(docs)], hlc, origin, lengths)
        out.setdefault((op.hlc, op.origin), op)
    return list(out.values())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(writes, st.randoms(use_true_random=False), st.integers(1, 4))
def test_batches_and_single_writes_in_any_order_with_duplicates_and_refolding_reach_the_same_state(tmp_path, history, rnd, cut):
    ops_list = _write_ops(history)
    a, b = _in_order_and_shuffled(tmp_path, ops_list, rnd, cut)
    c = _shard(tmp_path)
    assert _versions(a) == _versions(b)
    # Re-batched: b's state as per-document operations (a handoff's fold), with the original batches, in any order.
    refolded = [op for p in range(PARTITIONS) for op in b.fold(p)] + rnd.sample(ops_list, k=len(ops_list) // 2)
    rnd.shuffle(refolded)
    for start in range(0, len(refolded), cut):
        _apply(c, refolded[start : start + cut])
    c.commit()
    assert _versions(c) == _versions(a)
    # The model: per id, the greatest (hlc, origin, position) wins.
    model: dict[str, tuple[int, str, int, bool]] = {}
    for op in ops_list:
        decoded = ops.decode(op)
        if op.kind == ops.KIND_BATCH:
            docs = [(i, p, s is None) for p, (i, s) in enumerate(zip(decoded.ids, decoded.sources))]
        else:
            docs = [(op.key.decode(), 0, op.kind == ops.KIND_DELETE)]
        for doc_id, position, deleted in docs:
            if doc_id not in model or (op.hlc, op.origin, position) > model[doc_id][:3]:
                model[doc_id] = (op.hlc, op.origin, position, deleted)
    assert {k: v[:3] for k, v in model.items()} == {k: v[:3] for k, v in _versions(a).items()}
    assert {k for k, v in model.items() if not v[3]} == _live_ids(a)
    assert a.searcher().num_docs == len(model)  # one document per id: replaced versions were deleted
    for shard in (a, b, c):
        shard.close()


def _create(partition: int) -> Operation:
    schema = {"id_field": "id", "fields": {"id": {"type": "keyword"}, "body": {"type": "text"}, "n": {"type": "i64", "fast": True}}}
    body = ops.create_body("docs", INC, schema, PARTITIONS)
    return Operation(ops.ENGINE_NAME, partition, ops.catalog_keys("docs", PARTITIONS)[partition], 1, "n1", ops.KIND_CREATE, body)


def _engine_state(engine: SearchEngine, partition: int) -> tuple[list[Operation], dict[str, Any]]:
    """The sorted fold and a get of every test id held in the partition."""
    gets = {
        doc_id: engine.read(partition, {"op": "get", "index": "docs", "id": doc_id})
        for doc_id in "abcd"
        if partition_of(doc_id, PARTITIONS) == partition
    }
    return sorted(engine.fold(partition)), gets


@settings(max_examples=5, deadline=None)
@given(operations, st.randoms(use_true_random=False))
def test_the_engine_converges_under_the_kit_with_creates_that_may_arrive_after_their_documents(history, rnd):
    # The index's create is one more operation per partition, delivered in any order with the documents:
    # a document that overtakes it is parked, and the state must still converge (handoff included).
    unique = {(h, o): (i, h, o, d, n) for i, h, o, d, n in reversed(history)}
    docs = [(_delete(i, h, o) if d else _index(i, f"v{h}{o}", h, o, lengths=n)) for i, h, o, d, n in unique.values()]
    creates = [_create(p) for p in sorted({op.partition for op in docs})]
    assert_converges(SearchEngine, creates + docs, rnd, state=_engine_state)


def test_held_for_some_ids_or_most_of_a_partition_is_the_partition_filtered_to_them(tmp_path):
    # Few ids are looked up by their terms; a large share of the partition is read whole and
    # picked from: both must say what the whole partition says of those ids, and nothing else.
    shard = _shard(tmp_path)
    _apply(shard, [_index(f"doc{i}", f"text {i}", 10 + i) for i in range(200)] + [_delete("doc3", 500)])
    shard.commit()
    _apply(shard, [_index("doc5", "pending", 600)])  # applied, not committed yet
    for p in range(PARTITIONS):
        whole = dict(shard.held(p))
        ids = sorted(whole)
        for share in (ids[:1], ids[: len(ids) // 2], ids, [*ids[:2], "absent"]):
            assert dict(shard.held(p, share)) == {k: whole[k] for k in share if k in whole}


@pytest.mark.parametrize("remembered_max", [1_000, 30])  # 30: partitions are forgotten too
def test_versions_remembered_at_commit_are_what_the_index_holds_through_updates_deletes_and_drops(
    tmp_path, monkeypatch, remembered_max
):
    monkeypatch.setattr(shard_module, "RECENT_VERSIONS_MAX", remembered_max)
    rnd = random.Random(7)
    shard = _shard(tmp_path)
    ids = [f"d{i}" for i in range(60)]
    ids_of = {p: [i for i in ids if partition_of(i, PARTITIONS) == p] for p in range(PARTITIONS)}
    looked_up: list[str] = []
    held = shard.held

    def spied(partition: int, wanted=None):
        looked_up.extend(wanted or ())
        return held(partition, wanted)

    shard.held = spied
    written: set[str] = set()
    hlc = 1
    for _round in range(12):
        batch = []
        for doc_id in rnd.sample(ids, 15):
            hlc += 1
            stamp = hlc if rnd.random() < 0.8 else 1  # now and then an older write, which loses
            batch.append(_delete(doc_id, stamp) if rnd.random() < 0.2 else _index(doc_id, f"text {stamp}", stamp))
            written.add(doc_id)
        _apply(shard, batch)
        if rnd.random() < 0.2:
            dropped = rnd.randrange(PARTITIONS)
            shard.drop_partition(dropped)
            written -= set(ids_of[dropped])
        shard.commit()
        looked_up.clear()
        remembered = {p: dict(shard.versions(p, ids_of[p])) for p in range(PARTITIONS)}
        every = {p: dict(shard.versions(p)) for p in range(PARTITIONS)}
        expected = {  # what the index holds, read from it (nothing is pending after the commit)
            p: {i: (v.hlc, v.origin, v.position, v.source is None) for i, v in held(p, ids_of[p])} for p in range(PARTITIONS)
        }
        assert remembered == expected == every
        assert set().union(*(every[p] for p in range(PARTITIONS))) == written
        if remembered_max >= len(ids):
            assert looked_up == []  # a new shard remembers every write it committed: the index is not read
    directory = shard.directory
    shard.close()
    reopened = Shard(directory, "docs", INC, SCHEMA)  # remembers nothing: reads the index
    for p in range(PARTITIONS):
        assert dict(reopened.versions(p, ids_of[p])) == dict(reopened.versions(p)) == expected[p]
    reopened.close()


def test_round_one_totals_each_scored_field_s_tokens_over_the_live_documents_of_a_plan(tmp_path):
    # Text fields are totalled from their _len_ fields, fast one-token-per-value fields from their own
    # column (value_count), a keyword without a column from its _len_ field, the id as the document count.
    schema = parse_schema(
        {
            "id_field": "id",
            "fields": {
                "id": {"type": "keyword"},
                "body": {"type": "text"},
                "tag": {"type": "keyword", "fast": True},
                "section": {"type": "keyword"},
                "n": {"type": "i64", "fast": True},
            },
        }
    )
    count = LengthCounter(schema)

    def doc(i: int, words: int) -> dict[str, Any]:
        out: dict[str, Any] = {"id": f"d{i}", "body": " ".join(["word"] * words), "n": [i, i + 1] if i % 4 == 0 else i}
        if i % 3:
            out["tag"] = ["a", "b", "c"][: i % 3 + 1] if i % 2 else "x"
        if i % 5:
            out["section"] = ["s", "t"] if i % 7 == 0 else "s"
        return out

    def index(d: dict[str, Any], hlc: int) -> Operation:
        body = ops.index_body("docs", INC, ops.encode_source(d), count(d))
        return Operation(ops.ENGINE_NAME, partition_of(d["id"], PARTITIONS), d["id"].encode(), hlc, "n1", ops.KIND_INDEX, body)

    shard = Shard(tmp_path / "s", "docs", INC, schema)
    docs = {f"d{i}": doc(i, i % 6 + 1) for i in range(60)}
    _apply(shard, [index(d, 1) for d in docs.values()])
    shard.commit()
    # Some are deleted and some replaced (the old versions stay in the index as deleted documents).
    _apply(shard, [_delete(f"d{i}", 2) for i in range(0, 60, 7)])
    replaced = {f"d{i}": doc(i + 100, 2) | {"id": f"d{i}"} for i in range(1, 60, 9)}
    _apply(shard, [index(d, 3) for d in replaced.values()])
    shard.commit()
    live = {k: v for k, v in docs.items() if int(k[1:]) % 7} | replaced  # d28 is written again after its delete

    def values(d: dict[str, Any], name: str) -> int:
        value = d.get(name)
        return 0 if value is None else len(value) if isinstance(value, list) else 1

    plan = [0, 1, 2, 3, 4]
    in_plan = [d for k, d in live.items() if partition_of(k, PARTITIONS) in plan]
    expected = {
        "id": len(in_plan),
        "body": sum(len(d["body"].split()) for d in in_plan),
        "tag": sum(values(d, "tag") for d in in_plan),
        "section": sum(values(d, "section") for d in in_plan),
        "n": sum(values(d, "n") for d in in_plan),
    }
    names = list(expected)
    assert set(shard.fields.length_fields) == {"body", "section"}  # tag and n are counted, the id is one per document
    assert shard.view().token_totals(plan, names) == expected
    stats = local_stats(shard.searcher(), shard.fields, StatsRequest((), tuple(names)), plan)
    assert stats.doc_count == len(in_plan) and stats.field_tokens == expected
    shard.close()
