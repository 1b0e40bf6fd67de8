"""The node database's operation log: seqs in arrival order, never reused, rows read back as written."""

from __future__ import annotations

import pytest

from legion.replication import Operation
from legion.runtime.storage import NodeStore


def _op(i: int, partition: int = 0) -> Operation:
    return Operation("kv", partition, f"k{i}".encode(), 1_000 + i, "n1", "put", b"v" * i)


def test_appends_return_each_operation_s_seq_in_order_and_never_reuse_one(tmp_path):
    store = NodeStore(tmp_path)
    first = store.append([_op(i, i % 2) for i in range(5)], {})
    assert first == [1, 2, 3, 4, 5]
    assert store.append([], {}) == []
    # Compacting the newest rows away must not hand their seqs out again.
    store.compact({("kv", 0): 5, ("kv", 1): 5}, [(("kv", 0), 5), (("kv", 1), 5)], 100)
    second = store.append([_op(i, 1) for i in range(5, 8)], {})
    assert second == [6, 7, 8]
    assert [(seq, op) for seq, op in store.ops_after("kv", 1, 0, 10)] == [(s, _op(i, 1)) for s, i in zip(second, range(5, 8))]
    store.close()


# PRAGMA synchronous is a setting of each connection, not of the file: only the connection can say.
SQLITE_SYNCHRONOUS = {1: "NORMAL", 2: "FULL"}


@pytest.mark.parametrize(("mode", "expected"), [("fsync", "FULL"), ("async", "NORMAL")])
def test_the_log_s_writer_and_readers_run_with_the_durability_mode_s_setting(tmp_path, mode, expected):
    store = NodeStore(tmp_path, mode)
    reader_level = store.reader().execute("PRAGMA synchronous").fetchone()[0]
    writer_level = store._writer.execute("PRAGMA synchronous").fetchone()[0]
    assert (SQLITE_SYNCHRONOUS[writer_level], SQLITE_SYNCHRONOUS[reader_level]) == (expected, expected)
    store.close()


def test_the_clock_s_high_water_mark_is_every_logged_timestamp_s_greatest_through_compaction_drops_and_reopening(tmp_path):
    store = NodeStore(tmp_path)
    assert store.clock_high() == 0
    store.append([_op(5, 0), _op(9, 1), _op(7, 0)], {})
    assert store.clock_high() == 1_009
    store.compact({("kv", 0): 3, ("kv", 1): 3}, [(("kv", 0), 3), (("kv", 1), 3)], 100)
    store.drop_partition("kv", 1)
    assert store.ops_after("kv", 0, 0, 10) == [] == store.ops_after("kv", 1, 0, 10)
    store.append([_op(1, 0)], {})  # an older timestamp does not lower it
    assert store.clock_high() == 1_009
    store.close()
    reopened = NodeStore(tmp_path)
    assert reopened.clock_high() == 1_009
    reopened.close()


def test_a_log_from_before_the_clock_table_gives_its_greatest_logged_timestamp(tmp_path):
    store = NodeStore(tmp_path)
    store.append([_op(3), _op(8), _op(4)], {})
    store._writer.execute("DROP TABLE clock")
    store.close()
    # Reopening creates the table again, empty, as on the first start of this code.
    reopened = NodeStore(tmp_path)
    assert reopened.clock_high() == 1_008
    reopened.close()
