"""A node hands its configuration to the parts that act on it (without starting it: no sockets)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from legion import clock
from legion.errors import ConfigError
from legion.replication import Operation
from legion.runtime.node import Node, NodeConfig
from legion.runtime.storage import NodeStore


@pytest.mark.parametrize(("mode", "synchronous"), [("fsync", 2), ("async", 1)])
def test_the_durability_mode_reaches_the_log_every_engine_and_the_kv_database(
    tmp_path: Path, mode: str, synchronous: int
) -> None:
    node = Node(NodeConfig(data_dir=tmp_path, durability=mode))  # type: ignore[arg-type]
    try:
        assert node.store.reader().execute("PRAGMA synchronous").fetchone()[0] == synchronous
        assert {engine.durability for engine in node.engines.values()} == {mode}
        kv = node.engines["kv"]
        kv.open(0, tmp_path / "p0")  # what the log writer does first for a partition this node holds
        with kv._store(0).writer.use() as conn:  # type: ignore[attr-defined]
            assert conn.execute("PRAGMA synchronous").fetchone()[0] == synchronous
        kv.close(0)
    finally:
        node.store.close()


def test_a_node_refuses_an_unknown_durability_mode(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--durability must be fsync or async .*got 'sometimes'"):
        Node(NodeConfig(data_dir=tmp_path, durability="sometimes"))  # type: ignore[arg-type]


def test_a_node_remembers_that_its_state_is_in_etcd_and_refuses_to_start_without_it(tmp_path: Path) -> None:
    from legion import cluster_state as cs
    from legion import consensus as cn
    from legion.runtime.etcd_register import EtcdRegister

    node = Node(NodeConfig(data_dir=tmp_path, metadata="etcd://127.0.0.1:2379/prod"))
    try:
        assert isinstance(node.publisher, EtcdRegister) and node.etcd is node.publisher
        assert node.store.meta_get("metadata") == "etcd:/prod/state"
        node.set_record(cn.founding_record(cs.new_cluster("c-1", node.node_id, node.url, 8, 3)))  # it joined a cluster
    finally:
        node.store.close()
        node.hint_store.close()
    with pytest.raises(ConfigError, match="keeps the cluster state in etcd under the key /prod/state.*--metadata etcd://HOST:PORT/prod"):
        Node(NodeConfig(data_dir=tmp_path))
    with pytest.raises(ConfigError, match="under the key /prod/state, not in etcd under the key /legion/state"):
        Node(NodeConfig(data_dir=tmp_path, metadata="etcd://127.0.0.1:2379"))
    again = Node(NodeConfig(data_dir=tmp_path, metadata="etcd://10.0.0.7:2379/prod"))  # etcd moved: fine
    again.store.close()
    again.hint_store.close()


def test_a_node_refuses_a_malformed_metadata_url(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--metadata must be etcd://HOST:PORT"):
        Node(NodeConfig(data_dir=tmp_path, metadata="http://127.0.0.1:2379"))


def test_a_restarted_node_stamps_its_writes_after_every_timestamp_it_logged(tmp_path: Path) -> None:
    # Before it stopped, the node logged a write stamped by a peer whose clock runs 30 s fast
    # (within CLOCK_DRIFT_MS_MAX). Started again with its clock at its own wall time, it would
    # stamp an overwrite of that key older than the write it replaces: last-writer-wins would
    # keep the old value.
    ahead = clock.pack(int(time.time() * 1000) + 30_000, 7)
    store = NodeStore(tmp_path)
    store.append([Operation("kv", 0, b"k", ahead, "n2", "put", b"old")], {})
    store.close()
    node = Node(NodeConfig(data_dir=tmp_path))
    try:
        assert node.clock.now() > ahead
    finally:
        node.store.close()
