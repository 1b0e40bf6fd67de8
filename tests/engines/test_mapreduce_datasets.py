"""engines.mapreduce.datasets: operation bodies and the catalog of datasets (pure)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engines.mapreduce import datasets as ds
from legion.errors import BadRequest
from legion.keyspace import partition_of
from legion.replication import Operation

P = 8


def op(kind: str, body: bytes, partition: int = 0, hlc: int = 1, origin: str = "n1") -> Operation:
    return Operation(ds.ENGINE_NAME, partition, ds.partition_keys("catalog", "x", P)[partition], hlc, origin, kind, body)


def test_partition_keys_land_in_their_partition_and_are_deterministic():
    keys = ds.partition_keys("rows", "abc", 16)
    assert [partition_of(k, 16) for k in keys] == list(range(16))
    assert ds.partition_keys("rows", "abc", 16) == keys


def test_bodies_decode_to_what_was_encoded():
    inc = "0123456789abcdef"
    create = ds.decode(op(ds.KIND_CREATE, ds.create_body("sales", inc, b"schema", "id", P)))
    assert (create.name, create.incarnation, create.schema, create.key_column, create.partitions) == ("sales", inc, b"schema", "id", P)
    batch = ds.decode(op(ds.KIND_BATCH, ds.batch_body(inc, "fedcba9876543210", 3, b"arrow")))
    assert (batch.batch_id, batch.rows, batch.payload) == ("fedcba9876543210", 3, b"arrow")


@pytest.mark.parametrize(
    "kind, body",
    [
        ("nope", ds.drop_body("a", "0123456789abcdef", P)),
        (ds.KIND_DROP, b"\xc1"),
        (ds.KIND_DROP, ds.drop_body("Bad Name", "0123456789abcdef", P)),
        (ds.KIND_DROP, ds.drop_body("a", "short", P)),
        (ds.KIND_DROP, ds.drop_body("a", "0123456789abcdef", 3)),
        (ds.KIND_BATCH, ds.batch_body("0123456789abcdef", "not hex!", 1, b"")),
        (ds.KIND_BATCH, ds.drop_body("a", "0123456789abcdef", P)),
    ],
)
def test_anything_the_engine_never_writes_is_refused(kind, body):
    with pytest.raises(BadRequest):
        ds.decode(op(kind, body))


incarnations = st.sampled_from([f"{i:016x}" for i in range(1, 6)])
# An incarnation belongs to one name (it is unique per create), so the name follows from it.
catalog_ops = st.lists(
    st.tuples(st.sampled_from([ds.KIND_CREATE, ds.KIND_DROP]), incarnations).map(
        lambda t: (t[0], "ab"[int(t[1], 16) % 2], t[1])
    ),
    max_size=12,
)


@settings(max_examples=80, deadline=None)
@given(ops=catalog_ops, seed=st.integers(0, 1000))
def test_the_catalog_converges_whatever_the_order_and_duplicates(ops, seed):
    built = []
    for kind, name, inc in ops:
        body = ds.create_body(name, inc, b"s", "", P) if kind == ds.KIND_CREATE else ds.drop_body(name, inc, P)
        built.append(op(kind, body))
    shuffled = built + built[: len(built) // 2]
    random.Random(seed).shuffle(shuffled)
    one, two = ds.Catalog(), ds.Catalog()
    for o in built:
        one.apply(o, ds.decode(o))
    for o in shuffled:
        two.apply(o, ds.decode(o))
    assert one.live_datasets() == two.live_datasets()
    # The model: a name's live incarnation is its greatest created one unless that one is dropped.
    created = {(name, inc) for kind, name, inc in ops if kind == ds.KIND_CREATE}
    dropped = {inc for kind, _, inc in ops if kind == ds.KIND_DROP}
    model = {}
    for name in {n for n, _ in created}:
        newest = max(inc for n, inc in created if n == name)
        if newest not in dropped:
            model[name] = newest
    assert one.live_datasets() == model


def test_fold_operations_rebuild_the_catalog_on_an_empty_replica():
    catalog = ds.Catalog()
    for o in [
        op(ds.KIND_CREATE, ds.create_body("a", "0000000000000001", b"s1", "id", P), partition=3),
        op(ds.KIND_CREATE, ds.create_body("b", "0000000000000002", b"s2", "", P), partition=3),
        op(ds.KIND_DROP, ds.drop_body("b", "0000000000000002", P), partition=3),
    ]:
        catalog.apply(o, ds.decode(o))
    rebuilt = ds.Catalog()
    for o in catalog.operations(5):
        assert partition_of(o.key, P) == 5
        rebuilt.apply(o, ds.decode(o))
    assert rebuilt == catalog
    assert rebuilt.live_datasets() == {"a": "0000000000000001"}
    assert rebuilt.is_dead("0000000000000002") and not rebuilt.is_dead("0000000000000001")
