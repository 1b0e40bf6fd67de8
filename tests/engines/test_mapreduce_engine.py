"""The map/reduce engine on real files: apply, replay, fold, drop, snapshots; ingest splitting (no cluster)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engines.mapreduce import rows as arrow_rows
from engines.mapreduce.datasets import (
    ENGINE_NAME,
    KIND_BATCH,
    KIND_CREATE,
    KIND_DROP,
    batch_body,
    create_body,
    drop_body,
    partition_keys,
)
from engines.mapreduce.engine import MapReduceEngine
from engines.mapreduce.ingest import RowSplitter, batch_items
from engines.mapreduce.partition_files import read_batch, snapshot_dir
from legion.errors import BadRequest, NotOwner
from legion.limits import OP_BODY_BYTES_MAX
from legion.replication import Operation
from legion.testing.convergence import assert_converges

P = 4
INC = "00000000000000a1"
SCHEMA = pa.schema([("k", pa.string()), ("v", pa.int64())])


def create_op(partition: int, name: str = "d", incarnation: str = INC, hlc: int = 1) -> Operation:
    body = create_body(name, incarnation, arrow_rows.schema_bytes(SCHEMA), "", P)
    return Operation(ENGINE_NAME, partition, partition_keys("catalog", name, P)[partition], hlc, "n1", KIND_CREATE, body)


def drop_op(partition: int, name: str = "d", incarnation: str = INC) -> Operation:
    body = drop_body(name, incarnation, P)
    return Operation(ENGINE_NAME, partition, partition_keys("catalog", name, P)[partition], 9, "n1", KIND_DROP, body)


def batch_op(partition: int, batch_id: str, values: list[int], incarnation: str = INC, hlc: int = 5) -> Operation:
    table = pa.table({"k": [f"k{v}" for v in values], "v": values}, schema=SCHEMA)
    body = batch_body(incarnation, batch_id, table.num_rows, arrow_rows.encode_payload(table))
    return Operation(ENGINE_NAME, partition, partition_keys("rows", incarnation, P)[partition], hlc, "n2", KIND_BATCH, body)


def open_engine(root: Path) -> MapReduceEngine:
    engine = MapReduceEngine(root / "engine")
    for p in range(P):
        engine.open(p, root / "parts" / str(p))
    return engine


def rows_in(engine: MapReduceEngine, partition: int, incarnation: str = INC) -> list[int]:
    files = engine._require_held(partition)
    return sorted(v for path in files.batches(incarnation) for v in read_batch(path)[0]["v"].to_pylist())


def test_batches_apply_once_survive_replay_and_count_in_stats(tmp_path):
    engine = open_engine(tmp_path)
    ops = [create_op(p) for p in range(P)] + [batch_op(1, "00000000000000b1", [1, 2]), batch_op(1, "00000000000000b2", [3])]
    engine.apply_batch({1: ops})
    engine.apply_batch({1: ops[::-1]})  # a replay in another order changes nothing
    engine.flush([1])
    assert rows_in(engine, 1) == [1, 2, 3]
    assert engine.coverage_many([1], {"op": "stats", "incarnation": INC})["1"][0] == 3
    assert engine.describe("d")["incarnation"] == INC


def test_fold_rebuilds_the_partition_on_an_empty_replica(tmp_path):
    source = open_engine(tmp_path / "a")
    source.apply_batch({2: [create_op(2), batch_op(2, "00000000000000b1", [5, 6]), batch_op(2, "00000000000000b2", [7])]})
    copy = open_engine(tmp_path / "b")
    folded = list(source.fold(2))
    copy.apply_batch({2: folded[::-1]})
    assert rows_in(copy, 2) == [5, 6, 7]
    assert [(o.hlc, o.origin, o.key) for o in copy.fold(2)] == [(o.hlc, o.origin, o.key) for o in folded]
    assert copy.describe("d") == source.describe("d")


def test_a_drop_deletes_the_rows_everywhere_and_later_batches_of_it_are_ignored(tmp_path):
    engine = open_engine(tmp_path)
    engine.apply_batch({0: [create_op(0), batch_op(0, "00000000000000b1", [1])], 3: [batch_op(3, "00000000000000b2", [2])]})
    engine.apply_batch({0: [drop_op(0)]})
    assert rows_in(engine, 0) == [] and rows_in(engine, 3) == []
    engine.apply_batch({3: [batch_op(3, "00000000000000b3", [4])]})
    assert rows_in(engine, 3) == []
    assert engine.describe("d") is None


def test_a_batch_that_overtakes_its_create_is_kept(tmp_path):
    engine = open_engine(tmp_path)
    engine.apply_batch({1: [batch_op(1, "00000000000000b1", [8])]})
    assert engine.describe("d") is None
    engine.apply_batch({1: [create_op(1)]})
    assert rows_in(engine, 1) == [8]


def test_a_snapshot_keeps_its_files_when_the_partition_is_deleted(tmp_path):
    engine = open_engine(tmp_path)
    engine.apply_batch({1: [create_op(1), batch_op(1, "00000000000000b1", [1, 2, 3])]})
    engine.flush([1])
    answer = engine.coverage_many([1], {"op": "snapshot", "job": "j1", "incarnation": INC})
    paths = answer["1"]["paths"]
    assert answer["1"]["rows"] == 3 and len(paths) == 1
    engine.drop(1)
    engine.close(1)
    shutil.rmtree(tmp_path / "parts" / "1")  # what the core does once a partition moved away
    assert read_batch(Path(paths[0]))[0]["v"].to_pylist() == [1, 2, 3]
    engine.coverage_many([0], {"op": "release", "job": "j1"})
    assert not snapshot_dir(engine.root, "j1").exists()
    with pytest.raises(NotOwner):
        engine.coverage_many([1], {"op": "stats", "incarnation": INC})


def test_validate_refuses_what_apply_could_not_apply():
    engine = MapReduceEngine(Path("/nonexistent"))
    bad = batch_op(0, "00000000000000b1", [1])
    garbage = Operation(ENGINE_NAME, 0, bad.key, 1, "n1", KIND_BATCH, batch_body(INC, "00000000000000b1", 1, b"not arrow"))
    with pytest.raises(BadRequest):
        engine.validate(garbage)
    engine.validate(bad)


@settings(max_examples=40, deadline=None)
@given(values=st.lists(st.one_of(st.none(), st.text(max_size=6)), max_size=300), key=st.booleans())
def test_the_splitter_places_every_row_once_by_key_or_evenly(values, key):
    table = pa.table({"id": pa.array(values, pa.string()), "n": list(range(len(values)))})
    splitter = RowSplitter(8, "id" if key else "", seed=1)
    pieces = splitter.add(table.slice(0, len(values) // 2)) + splitter.add(table.slice(len(values) // 2)) + splitter.finish()
    seen = sorted(n for _, piece in pieces for n in piece["n"].to_pylist())
    assert seen == list(range(len(values)))
    if key:
        for partition, piece in pieces:
            hashed = arrow_rows.stable_hash([piece["id"]]) & np.uint64(7)
            assert set(hashed.tolist()) == {partition}


def test_batches_over_the_operation_limit_are_halved_until_they_fit():
    rng = np.random.default_rng(1)
    big = pa.table({"s": [rng.bytes(1000).hex() for _ in range(6_000)]})  # random: it does not compress
    items = batch_items(INC, 0, big, P)
    assert len(items) > 1
    assert all(len(item.body) <= OP_BODY_BYTES_MAX for item in items)


def engine_state(engine: MapReduceEngine, partition: int) -> tuple[list[Operation], list[int]]:
    return sorted(engine.fold(partition)), rows_in(engine, partition)


@settings(max_examples=10, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, P - 1), st.lists(st.integers(0, 50), min_size=1, max_size=4)), max_size=8),
    st.booleans(),
    st.randoms(use_true_random=False),
)
def test_the_engine_converges_under_the_kit_batches_creates_and_drops_in_any_order(batches, dropped, rnd):
    # Every batch is uniquely named and stamped; a batch may overtake its dataset's create (or its drop).
    ops = [create_op(p) for p in range(P)]
    ops += [batch_op(p, f"{i:016x}", values, hlc=10 + i) for i, (p, values) in enumerate(batches)]
    if dropped:
        ops += [drop_op(p) for p in range(P)]
    assert_converges(MapReduceEngine, ops, rnd, state=engine_state)


def test_the_command_line_names_the_scheduler_option_as_the_engine_reads_it():
    # cli.engine_options names it again rather than import the engine (pyarrow) into every command.
    from cli.engine_options import DASK_SCHEDULER_OPTION, with_dask_scheduler
    from engines.mapreduce.dask_adapter import OPTION_SCHEDULER

    assert DASK_SCHEDULER_OPTION == OPTION_SCHEDULER
    assert with_dask_scheduler({}, "tcp://127.0.0.1:8786") == {OPTION_SCHEDULER: "tcp://127.0.0.1:8786"}
