"""The search engine's operations and catalog: bodies round-trip, and the catalog converges in any order."""

from __future__ import annotations


import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engines.search import operations as ops
from legion.errors import BadRequest
from legion.keyspace import partition_of
from legion.replication import Operation

SCHEMA = {"id_field": "id", "fields": {"id": {"type": "keyword"}, "body": {"type": "text"}}}


def _op(kind: str, body: bytes, partition: int = 0, key: bytes = b"k", hlc: int = 1) -> Operation:
    return Operation(ops.ENGINE_NAME, partition, key, hlc, "n1", kind, body)


def test_bodies_round_trip():
    inc = "0123456789abcdef00"
    assert ops.decode(_op("index", ops.index_body("docs", inc, b'{"id":"a"}'))).source == b'{"id":"a"}'
    assert ops.decode(_op("index", ops.index_body("docs", inc, b'{"id":"a"}'))).lengths is None
    assert ops.decode(_op("index", ops.index_body("docs", inc, b'{"id":"a"}', [1, 0, 7]))).lengths == [1, 0, 7]
    assert ops.decode(_op("delete", ops.delete_body("docs", inc))).incarnation == inc
    created = ops.decode(_op("create", ops.create_body("docs", inc, SCHEMA, 64), partition=5))
    assert created.schema == SCHEMA and created.partitions == 64 and created.index == "docs"
    assert ops.decode(_op("drop", ops.drop_body("docs", inc, 64))).partitions == 64
    assert ops.decode(_op("delete", ops.delete_body("docs", inc, 3))).position == 3
    folded = ops.decode(_op("index", ops.index_body("docs", inc, b'{"id":"a"}', None, 5)))
    assert folded.source == b'{"id":"a"}' and folded.lengths is None and folded.position == 5
    batch = ops.decode(_op("batch", ops.batch_body("docs", inc, 64, ["a", "b"], [b'{"id":"a"}', None], [1, 2, 3, 4])))
    assert batch.ids == ["a", "b"] and batch.sources == [b'{"id":"a"}', None]
    assert batch.lengths == [1, 2, 3, 4] and batch.lengths_stride == 2 and batch.partitions == 64
    assert ops.decode(_op("batch", ops.batch_body("docs", inc, 64, ["a"], [b"{}"], []))).lengths_stride == 0


@pytest.mark.parametrize(
    ("kind", "body", "message"),
    [
        ("index", b"\xc1", "not msgpack"),
        ("upsert", ops.delete_body("docs", "0" * 16), "unknown search operation kind"),
        ("index", ops.delete_body("docs", "0" * 16), "list of 3"),
        ("delete", ops.delete_body("docs", "not-hex"), "incarnation"),
        ("create", ops.create_body("docs", "0" * 16, SCHEMA, 3), "partition count"),
        ("index", ops.msgpack.packb(["docs", "0" * 16, b"{}", "3"]), "lengths"),
        ("delete", ops.msgpack.packb(["docs", ["not", "hashable"]]), "incarnation"),
        ("delete", ops.delete_body("docs", "0" * 16, -1), "position"),
        ("index", ops.msgpack.packb(["docs", "0" * 16, b"{}", None, "2"]), "position"),
        ("batch", ops.batch_body("docs", "0" * 16, 3, ["a"], [b"{}"], []), "partition count"),
        ("batch", ops.batch_body("docs", "0" * 16, 8, [], [], []), "1 to"),
        ("batch", ops.batch_body("docs", "0" * 16, 8, ["a", "b"], [b"{}"], []), "1 to"),
        ("batch", ops.batch_body("docs", "0" * 16, 8, ["a", "b"], [b"{}", b"{}"], [1, 2, 3]), "as many lengths"),
        ("batch", ops.batch_body("docs", "0" * 16, 8, ["a", 7], [b"{}", b"{}"], []), "ids"),
        ("batch", ops.batch_body("docs", "0" * 16, 8, ["a", ""], [b"{}", b"{}"], []), "ids"),
        ("batch", ops.batch_body("docs", "0" * 16, 8, ["a"], ["{}"], []), "sources"),
        ("batch", ops.batch_body("docs", "0" * 16, 8, ["a"], [b"{}"], ["1"]), "token counts"),
        ("batch", ops.msgpack.packb(["docs", "0" * 16, 8, "a", [b"{}"], []]), "lists"),
    ],
)
def test_malformed_bodies_are_refused(kind, body, message):
    with pytest.raises(BadRequest, match=message):
        ops.decode(_op(kind, body))


def test_a_batch_whose_ids_belong_to_another_partition_is_refused():
    ids = [f"d{n}" for n in range(50)]
    mine = [i for i in ids if partition_of(i, 8) == 3]
    good = _op("batch", ops.batch_body("docs", "0" * 16, 8, mine, [b"{}"] * len(mine), []), partition=3)
    ops.check_batch_partition(good, ops.decode(good))
    stray = next(i for i in ids if partition_of(i, 8) != 3)
    bad = _op("batch", ops.batch_body("docs", "0" * 16, 8, [*mine, stray], [b"{}"] * (len(mine) + 1), []), partition=3)
    with pytest.raises(BadRequest, match="does not belong to partition 3"):
        ops.check_batch_partition(bad, ops.decode(bad))
    long = _op("batch", ops.batch_body("docs", "0" * 16, 8, ["x" * 2000], [b"{}"], []), partition=3)
    with pytest.raises(BadRequest, match="at most"):
        ops.check_batch_partition(long, ops.decode(long))


def test_catalog_keys_cover_every_partition_once():
    for partitions in (1, 8, 64, 256):
        keys = ops.catalog_keys("docs", partitions)
        assert [partition_of(k, partitions) for k in keys] == list(range(partitions))
    assert ops.catalog_keys("docs", 64) != ops.catalog_keys("other", 64)


INCARNATIONS = ["00000000000000a1", "00000000000000b2", "00000000000000c3"]


@st.composite
def catalog_histories(draw):
    events = []
    for inc in INCARNATIONS:
        name = draw(st.sampled_from(["docs", "logs"]))
        events.append(("create", name, inc))
        if draw(st.booleans()):
            events.append(("drop", name, inc))
    return events


@settings(max_examples=200, deadline=None)
@given(catalog_histories(), st.randoms(use_true_random=False))
def test_the_catalog_converges_whatever_the_order_and_duplicates(events, rnd):
    def operations():
        out = []
        for kind, name, inc in events:
            body = ops.create_body(name, inc, SCHEMA, 8) if kind == "create" else ops.drop_body(name, inc, 8)
            for partition in range(8):
                out.append(_op(kind, body, partition=partition, key=ops.catalog_keys(name, 8)[partition]))
        return out

    def fold_in(sequence):
        catalog = ops.Catalog()
        for op in sequence:
            catalog.apply(op, ops.decode(op))
        return catalog

    ordered = operations()
    shuffled = ordered + rnd.sample(ordered, k=len(ordered) // 2)
    rnd.shuffle(shuffled)
    a, b = fold_in(ordered), fold_in(shuffled)
    assert a.live_indexes() == b.live_indexes()
    # The model: a name's live incarnation is its greatest created one, unless that one was dropped.
    newest: dict[str, str] = {}
    dropped = {inc for kind, _, inc in events if kind == "drop"}
    for kind, name, inc in events:
        if kind == "create":
            newest[name] = max(newest.get(name, ""), inc)
    expected = {name: inc for name, inc in newest.items() if inc not in dropped}
    assert a.live_indexes() == expected
    # A fold of one partition rebuilds the same catalog on an empty replica.
    assert fold_in(a.operations(3)).live_indexes() == expected


def test_documents_of_a_superseded_or_dropped_incarnation_are_dead_and_unknown_ones_are_not():
    catalog = ops.Catalog()
    old, new = INCARNATIONS[0], INCARNATIONS[1]
    for inc in (old, new):
        op = _op("create", ops.create_body("docs", inc, SCHEMA, 8))
        catalog.apply(op, ops.decode(op))
    assert catalog.live("docs") == new
    assert catalog.is_dead(old) and not catalog.is_dead(new)
    assert not catalog.is_dead(INCARNATIONS[2])
    op = _op("drop", ops.drop_body("docs", new, 8))
    catalog.apply(op, ops.decode(op))
    assert catalog.is_dead(new) and catalog.is_dead(old) and catalog.live("docs") is None
