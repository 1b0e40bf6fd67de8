"""Operations on the wire: a batch round-trips, and anything malformed is a BadRequest."""

from __future__ import annotations

import msgpack
from hypothesis import given
from hypothesis import strategies as st
import pytest

from legion.errors import BadRequest
from legion.replication import Operation, decode_ops, encode_ops


def test_a_batch_round_trips_in_order():
    ops = [Operation("kv", i % 4, f"k{i}".encode(), 10 + i, "n1", "put", b"v" * i) for i in range(50)]
    assert decode_ops(encode_ops(ops)) == ops
    assert decode_ops(encode_ops([])) == []


def test_fields_of_subclassed_types_are_taken_as_before():
    raw = msgpack.packb([["kv", True, b"k", 5, "n1", "put", b""]], use_bin_type=True)
    assert decode_ops(raw) == [Operation("kv", True, b"k", 5, "n1", "put", b"")]


@pytest.mark.parametrize(
    "item", [["kv", 0, "k-as-text", 5, "n1", "put", b""], ["kv", 0, b"k", 5, "n1", "put"], "not a list", ["kv", 0, b"k", 5.0, "n1", "put", b""]]
)
def test_malformed_operations_are_refused(item):
    with pytest.raises(BadRequest):
        decode_ops(msgpack.packb([item], use_bin_type=True))


operations = st.builds(
    Operation,
    engine=st.sampled_from(["kv", "search"]),
    partition=st.integers(0, 3),
    key=st.binary(max_size=3),
    hlc=st.integers(0, 5),
    origin=st.sampled_from(["n1", "n2", "key:ab"]),
    kind=st.sampled_from(["put", "delete"]),
    body=st.binary(max_size=2),
)


@given(st.lists(operations, max_size=20), st.randoms(use_true_random=False))
def test_operations_sort_into_one_canonical_list_whatever_the_order_they_came_in(ops, rng):
    shuffled = list(ops)
    rng.shuffle(shuffled)
    assert sorted(shuffled) == sorted(ops)


@given(operations, operations)
def test_the_order_is_total_and_agrees_with_equality(a, b):
    assert (a < b) + (b < a) + (a == b) == 1
    assert (a <= b) == (a < b or a == b)


def test_an_id_names_one_write_and_a_keyed_write_keeps_its_id_across_retries():
    first = Operation("kv", 0, b"k", 10, "n1", "put", b"v")
    assert first.id == "10@n1"
    assert Operation("kv", 0, b"k", 10, "n2", "put", b"v").id != first.id
    assert Operation("kv", 0, b"k", 11, "n1", "put", b"v").id != first.id
    keyed = Operation("kv", 0, b"k", 10, "key:0f", "put", b"v")
    retried = Operation("kv", 0, b"k", 99, "key:0f", "put", b"v")
    assert keyed.id == retried.id == "key:0f"
