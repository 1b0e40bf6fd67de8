"""Operations on the wire: a batch round-trips, and anything malformed is a BadRequest."""

from __future__ import annotations

import msgpack
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
