"""Batch writes, the pure part: refusing items, cutting chunks, deciding each item."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from legion.engine import WriteItem, WriteResult
from legion.errors import BadRequest, DeadlineExceeded, NotOwner, PayloadTooLarge, Unavailable
from legion.limits import KEY_BYTES_MAX, OP_BODY_BYTES_MAX, PEER_BATCH_BYTES_MAX
from legion.replication import Operation, encode_ops
from legion.write_batch import (
    LIST_HEADER_BYTES_MAX,
    BatchTally,
    ItemTally,
    check_item,
    chunk_ranges,
    op_wire_bytes,
    owner_missed,
)

ops_strategy = st.lists(
    st.builds(
        Operation,
        engine=st.text(min_size=1, max_size=20),
        partition=st.integers(0, 4095),
        key=st.binary(min_size=1, max_size=300),
        hlc=st.integers(0, 2**64 - 1),
        origin=st.text(min_size=1, max_size=64),
        kind=st.text(min_size=1, max_size=20),
        body=st.binary(max_size=2000),
    ),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(ops_strategy)
def test_op_wire_bytes_bounds_the_encoded_size_of_any_batch(ops):
    assert len(encode_ops(ops)) <= LIST_HEADER_BYTES_MAX + sum(op_wire_bytes(op) for op in ops)


@settings(max_examples=300, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 500), max_size=200),
    ops_max=st.integers(1, 20),
    bytes_max=st.integers(505, 3000),
)
def test_chunks_cover_every_operation_in_order_within_both_bounds(sizes, ops_max, bytes_max):
    chunks = chunk_ranges(sizes, ops_max=ops_max, bytes_max=bytes_max)
    assert [i for chunk in chunks for i in chunk] == list(range(len(sizes)))
    for n, chunk in enumerate(chunks):
        assert 1 <= len(chunk) <= ops_max
        assert LIST_HEADER_BYTES_MAX + sum(sizes[i] for i in chunk) <= bytes_max
        if n + 1 < len(chunks):  # greedy: a chunk closes only when the next operation would not fit
            taken = LIST_HEADER_BYTES_MAX + sum(sizes[i] for i in chunk) + sizes[chunk.stop]
            assert len(chunk) == ops_max or taken > bytes_max


def test_chunks_are_bounded_by_count_for_small_operations_and_by_bytes_for_large_ones():
    assert [len(c) for c in chunk_ranges([10] * 2500, ops_max=1000, bytes_max=PEER_BATCH_BYTES_MAX)] == [1000, 1000, 500]
    big = OP_BODY_BYTES_MAX + KEY_BYTES_MAX + 200
    assert [len(c) for c in chunk_ranges([big] * 5, ops_max=1000, bytes_max=PEER_BATCH_BYTES_MAX)] == [1, 1, 1, 1, 1]
    three_mib = 3 * 1024 * 1024
    assert [len(c) for c in chunk_ranges([three_mib] * 5, ops_max=1000, bytes_max=PEER_BATCH_BYTES_MAX)] == [2, 2, 1]
    assert chunk_ranges([], ops_max=10, bytes_max=100) == []


def test_the_largest_acceptable_operation_fits_a_chunk_alone():
    op = Operation("kv", 0, b"k" * KEY_BYTES_MAX, 1, "n" * 64, "put", bytes(OP_BODY_BYTES_MAX))
    assert chunk_ranges([op_wire_bytes(op)], ops_max=1, bytes_max=PEER_BATCH_BYTES_MAX) == [range(0, 1)]


@pytest.mark.parametrize(
    ("item", "error"),
    [
        (WriteItem(b"", "put", b"v"), BadRequest),
        (WriteItem(b"k" * (KEY_BYTES_MAX + 1), "put", b"v"), BadRequest),
        (WriteItem(b"k", "", b"v"), BadRequest),
        (WriteItem(b"k", "put", bytes(OP_BODY_BYTES_MAX + 1)), PayloadTooLarge),
    ],
)
def test_items_that_cannot_be_sent_are_refused_with_a_typed_error(item, error):
    with pytest.raises(error):
        check_item(item)


def test_an_item_at_the_limits_is_accepted():
    assert check_item(WriteItem("é".encode(), "put", bytes(OP_BODY_BYTES_MAX))) == "é".encode()


def test_an_item_is_decided_once_w_counted_replicas_acknowledged():
    tally = ItemTally(5, 99, ("n1", "n2", "n3"), need=2, replicas=3)
    assert not tally.ack("n4")  # a gaining node outside the quorum does not count
    assert not tally.ack("n1")
    assert tally.ack("n2")
    assert tally.result == WriteResult(partition=5, hlc=99, acks=2, replicas=3)
    assert not tally.ack("n3")  # decided already: the answer does not change
    assert tally.result.acks == 2


def test_a_refresh_item_waits_for_every_counted_replica():
    tally = ItemTally(0, 1, ("n1", "n2", "n3"), need=2, replicas=3, wait_all=True)
    assert not tally.ack("n1") and not tally.ack("n2")
    assert tally.ack("n3")
    assert tally.result.acks == 3
    failing = ItemTally(0, 1, ("n1", "n2", "n3"), need=2, replicas=3, wait_all=True)
    failing.ack("n1")
    failing.ack("n2")
    assert failing.fail("n3", Unavailable("n3 is unreachable"))
    assert failing.result.acks == 2  # still requires w, and w was met


def test_an_item_fails_as_soon_as_w_is_out_of_reach_naming_the_replicas_that_failed():
    tally = ItemTally(7, 1, ("n1", "n2", "n3"), need=2, replicas=3)
    assert not tally.fail("n2", Unavailable("connection refused"))
    assert tally.fail("n3", DeadlineExceeded("too slow"))
    assert isinstance(tally.result, Unavailable)
    assert "partition 7" in tally.result.message
    assert "n2: connection refused" in tally.result.message and "n3: too slow" in tally.result.message


def test_an_item_the_replicas_refuse_fails_with_their_refusal():
    tally = ItemTally(0, 1, ("n1", "n2"), need=2, replicas=2)
    assert tally.fail("n1", BadRequest("kv put body must be msgpack"))
    assert isinstance(tally.result, BadRequest) and "msgpack" in tally.result.message


def test_the_batch_tally_answers_one_entry_per_item_in_order():
    tally = BatchTally(3)
    tally.refuse(1, PayloadTooLarge("too big"))
    tally.track(0, ItemTally(0, 1, ("n1",), need=1, replicas=1))
    tally.track(2, ItemTally(3, 2, ("n1",), need=1, replicas=1))
    assert tally.undecided == 2
    tally.ack(2, "n1")
    tally.ack(2, "n1")  # a repeat is ignored
    assert tally.undecided == 1
    tally.fail(0, "n1", Unavailable("gone"))
    assert tally.undecided == 0
    first, second, third = tally.results()
    assert isinstance(first, Unavailable) and isinstance(second, PayloadTooLarge)
    assert third == WriteResult(partition=3, hlc=2, acks=1, replicas=1)


def test_an_owner_that_refused_because_it_is_behind_gets_a_hint_and_one_that_is_ahead_does_not():
    # A node gaining the partition that has not yet heard of the move (epoch 6 < the plan's 7).
    assert owner_missed(NotOwner("n4 holds no replica of partition 3", epoch=6), 7)
    # A node that knows a newer state than the coordinator: it forwards, no hint needed.
    assert not owner_missed(NotOwner("n1 holds no replica of partition 3", epoch=8), 7)
    assert not owner_missed(NotOwner("n1 holds no replica of partition 3", epoch=7), 7)
    assert not owner_missed(NotOwner("no epoch said"), 7)
    # Failures for the owner's sake still earn a hint; a bad operation never does.
    assert owner_missed(Unavailable("n2 is down"), 7)
    assert not owner_missed(BadRequest("value too large"), 7)
