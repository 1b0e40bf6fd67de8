"""Read repair on real nodes: a read with r > 1 that finds replicas holding different versions repairs them.

Background anti-entropy is off here, so only the read can repair. One
replica is made newer on purpose (``/internal/apply`` to it alone, as in
``test_anti_entropy``); a read with r=1 changes nothing, a read with r=3
answers the newest value and leaves every replica holding it.
"""

from __future__ import annotations

import time

import pytest

from engines.kv import KVClient
from legion.testing.cluster import node_metric
from tests.conftest import LocalCluster
from tests.integration.test_anti_entropy import PARTITIONS, apply_on, kv_op

REPAIR_TIMEOUT_S = 15.0


def value_on(local_cluster: LocalCluster, node_id: str, key: str) -> bytes:
    """``key`` as ``node_id``'s own replica holds it (r=1 through a replica reads that replica first)."""
    with local_cluster.node_client(node_id) as client:
        return KVClient(client).get(key, r=1).value


@pytest.mark.cluster(nodes=3, partitions=PARTITIONS, replicas=3)
def test_a_read_with_r_3_repairs_the_replicas_that_answered_an_older_version(
    no_background_anti_entropy: None, local_cluster: LocalCluster
):
    with local_cluster.node_client("n1") as n1:
        KVClient(n1).put("apple", b"old", w=3)
    apply_on(local_cluster, "n1", [kv_op("apple", "test", b"new", offset_ms=1_000)])

    assert value_on(local_cluster, "n3", "apple") == b"old"  # r=1: one replica asked, nothing compared
    time.sleep(1.0)
    assert value_on(local_cluster, "n3", "apple") == b"old" and value_on(local_cluster, "n2", "apple") == b"old"

    with local_cluster.node_client("n2") as n2:
        assert KVClient(n2).get("apple", r=3).value == b"new"  # merged: the newest wins
    deadline = time.monotonic() + REPAIR_TIMEOUT_S
    while {value_on(local_cluster, n, "apple") for n in ("n1", "n2", "n3")} != {b"new"}:
        assert time.monotonic() < deadline, "the replicas that answered the r=3 read were not repaired"
        time.sleep(0.2)
    assert node_metric(local_cluster.directory, "n2", "legion_read_repairs_total") == 1


@pytest.mark.cluster(nodes=3, partitions=PARTITIONS, replicas=3)
def test_a_read_with_r_2_of_agreeing_replicas_repairs_nothing(no_background_anti_entropy: None, local_cluster: LocalCluster):
    with local_cluster.node_client("n1") as n1:
        kv = KVClient(n1)
        for i in range(20):
            kv.put(f"same:{i}", b"v", w=3)
        assert all(kv.get(f"same:{i}", r=2).value == b"v" for i in range(20))
    assert node_metric(local_cluster.directory, "n1", "legion_read_repairs_total") == 0
