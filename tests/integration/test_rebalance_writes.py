"""Writes around a rebalance reach the node gaining a partition, even from a coordinator that had not heard of it.

Real node processes on loopback. The test plays the stale coordinator itself:
it sends a write to an old owner the way a coordinator still planning with
the state from before the join does (``/internal/apply``, with that state's
digest), and checks that the new owner has it.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest

from engines.kv import KVClient
from engines.kv.entries import ENGINE_NAME, KIND_PUT, encode_put
from legion import cluster_state as cs
from legion.clock import pack
from legion.errors import NotFound, Unavailable
from legion.keyspace import partition_of
from legion.replication import Operation, encode_ops
from legion.runtime import local_cluster as cluster_processes
from legion.runtime.transport import EPOCH_HEADER
from tests.conftest import LocalCluster

MSGPACK = {"Content-Type": "application/msgpack"}


def stored_state(cluster: LocalCluster, node_id: str) -> cs.ClusterState:
    """The cluster state ``node_id`` has persisted (read-only, beside the running node)."""
    path = Path(cluster.node(node_id)["data_dir"]) / "node.sqlite"
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        (raw,) = conn.execute("SELECT value FROM meta WHERE key = 'cluster_state'").fetchone()
    return cs.from_dict(json.loads(raw))


def header(state: cs.ClusterState) -> dict[str, str]:
    return {EPOCH_HEADER: f"{state.epoch}:{state.committed_by}"}


def test_a_write_planned_before_a_join_reaches_the_new_owner_and_a_stale_source_does_not_fold(
    local_cluster: LocalCluster,
):
    before = stored_state(local_cluster, "n1")
    cluster_processes.add_node(local_cluster.directory, timeout_s=120)
    after = stored_state(local_cluster, "n1")
    assert after.pending is None and cs.digest_newer(cs.digest(after), cs.digest(before))
    partition = next(p for p in range(after.partitions) if "n4" in after.placement[p])
    old_owner = next(n for n in after.placement[partition] if n != "n4")
    key = next(k for k in (f"late:{i}".encode() for i in range(10_000)) if partition_of(k, after.partitions) == partition)
    op = Operation(ENGINE_NAME, partition, key, pack(int(time.time() * 1000), 0), old_owner, KIND_PUT, encode_put("text/plain", b"late"))

    # A coordinator that still plans with the state before the join writes to the old owners only.
    with local_cluster.node_client(old_owner) as client:
        client.request("POST", "/internal/apply", body=encode_ops([op]), headers={**MSGPACK, **header(before)})

    with local_cluster.node_client("n4") as client:
        kv, deadline = KVClient(client), time.monotonic() + 10
        while True:
            try:
                assert kv.get(key.decode(), r=1).value == b"late"  # n4 answers from its own copy
                break
            except NotFound:
                assert time.monotonic() < deadline, "the new owner never got the write"
                time.sleep(0.1)

    # A source that has not seen the state the puller acts on refuses to fold (it could not forward).
    with local_cluster.node_client(old_owner) as client:
        with pytest.raises(Unavailable, match="has not yet seen"):
            client.request(
                "GET",
                f"/internal/fold?engine={ENGINE_NAME}&partition={partition}",
                headers={EPOCH_HEADER: f"{after.epoch + 5}:{after.committed_by}"},
            )


def test_an_owner_that_loses_a_partition_hands_its_copy_over_before_dropping_it(
    no_background_anti_entropy: None, local_cluster: LocalCluster
):
    """A copy only the leaving owner holds (a write a coordinator with an older state counted
    towards W there) reaches the partition's owners before the leaving node drops it."""
    state = stored_state(local_cluster, "n1")
    keys = [f"only-on-n3:{i}".encode() for i in range(40)]
    stamp = pack(int(time.time() * 1000), 0)
    ops = [
        Operation(ENGINE_NAME, partition_of(k, state.partitions), k, stamp, "n3", KIND_PUT, encode_put("text/plain", k))
        for k in keys
    ]
    with local_cluster.node_client("n3") as client:
        client.request("POST", "/internal/apply", body=encode_ops(ops), headers={**MSGPACK, **header(state)})

    cluster_processes.remove_node(local_cluster.directory, "n3", timeout_s=120)

    for node_id in ("n1", "n2"):
        with local_cluster.node_client(node_id) as client:
            kv = KVClient(client)
            missing = []
            for key in keys:
                try:
                    assert kv.get(key.decode(), r=1).value == key
                except NotFound:
                    missing.append(key)
            assert not missing, f"{len(missing)} of {len(keys)} keys only n3 held were lost when it left: {missing[:3]}"
