"""Batch writes and coverage requests on real node processes.

- A 100,000-item bulk put through the KV route is one ``write_many``: it must
  succeed without ``Overloaded`` and reach each peer in batched round trips —
  counted by the ``apply_requests`` every node reports in ``/v1/health``.
- ``refresh`` waits for every live replica, still requiring ``w``.
- A coverage request (the KV key listing) re-plans a killed node's
  partitions onto other replicas (N=3), and with N=1 reports the partitions
  nobody could answer for (``allow_partial``) or refuses with 503.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter

import pytest

from engines.kv import KVClient
from legion.client import Client
from legion.errors import Unavailable
from legion.keyspace import partition_of
from legion.limits import PEER_BATCH_OPS_MAX
from legion.runtime import local_cluster as cluster_processes
from tests.conftest import LocalCluster

ITEMS = 100_000


def patient_client(cluster: LocalCluster, node_id: str) -> Client:
    """A client bound to one node that waits long enough for a 100k-item request on a busy CI machine."""
    return Client([cluster.node(node_id)["url"]], cluster.token, timeout_s=120)


def apply_requests(cluster: LocalCluster) -> dict[str, int]:
    counts = {}
    for node in cluster.nodes():
        with cluster.node_client(node["id"]) as client:
            counts[node["id"]] = client.health()["apply_requests"]
    return counts


def settled_apply_requests(cluster: LocalCluster, expected: dict[str, int], timeout_s: float = 30) -> dict[str, int]:
    """The nodes' apply counts once they reach ``expected`` (chunks still running after the
    call returned finish in the background), or as they are when ``timeout_s`` runs out."""
    deadline = time.monotonic() + timeout_s
    while True:
        counts = apply_requests(cluster)
        if counts == expected or time.monotonic() > deadline:
            return counts
        time.sleep(0.1)


def test_a_100k_item_bulk_put_succeeds_in_batched_round_trips(no_background_anti_entropy: None, local_cluster: LocalCluster):
    # It counts every /internal/apply: anti-entropy would add its own when it meets writes in flight.
    body = b"\n".join(json.dumps({"key": f"item:{i:06d}", "value": f"value {i}"}).encode() for i in range(ITEMS))
    before = apply_requests(local_cluster)
    started = time.monotonic()
    with patient_client(local_cluster, "n1") as client:
        reply = client.request("POST", "/v1/kv", body=body, headers={"Content-Type": "application/x-ndjson"}).json()
    elapsed = time.monotonic() - started
    errors = Counter(result["error"] for result in reply["results"] if "error" in result)
    assert (reply["written"], reply["failed"], errors) == (ITEMS, 0, Counter())
    assert [result["line"] for result in reply["results"][:3]] == [1, 2, 3]
    assert all(result["acks"] >= 2 for result in reply["results"])

    # n1 holds every partition (N=3 on 3 nodes): its share goes to its own log, no HTTP;
    # each peer gets 100,000 operations in chunks of PEER_BATCH_OPS_MAX.
    chunks = math.ceil(ITEMS / PEER_BATCH_OPS_MAX)
    expected = {"n1": before["n1"], "n2": before["n2"] + chunks, "n3": before["n3"] + chunks}
    after = settled_apply_requests(local_cluster, expected)
    print(f"100k items: {elapsed:.1f} s; /internal/apply requests served: "
          f"{ {node: after[node] - before[node] for node in after} }")  # fmt: skip
    assert after == expected

    for node_id in ("n2", "n3"):
        with local_cluster.node_client(node_id) as client:
            kv = KVClient(client)
            for i in (0, 4_321, ITEMS - 1):
                assert kv.get(f"item:{i:06d}", r=1).text == f"value {i}"  # r=1: this node's own replica


def test_refresh_waits_for_every_live_replica_and_still_requires_w(local_cluster: LocalCluster):
    body = b"\n".join(json.dumps({"key": f"fresh:{i}", "value": str(i)}).encode() for i in range(200))
    with local_cluster.node_client("n1") as client:
        kv = KVClient(client)
        refreshed = client.request("POST", "/v1/kv", body=body, params={"w": 1, "refresh": 1}).json()
        assert refreshed["written"] == 200
        assert {result["acks"] for result in refreshed["results"]} == {3}  # w=1, but all three answered
        one = client.request("PUT", "/v1/kv/single", body=b"x", params={"w": 1, "refresh": 1}).json()
        assert one["acks"] == 3
    for node_id in ("n1", "n2", "n3"):
        with local_cluster.node_client(node_id) as client:
            assert KVClient(client).get("fresh:199", r=1).text == "199"

    cluster_processes.stop_node(local_cluster.directory, "n3", kill=True)
    with local_cluster.node_client("n1") as client:
        kv = KVClient(client)
        # n3 still looks live to n1 for a moment: refresh waits for its answer (a failure), not forever.
        assert {r["acks"] for r in kv.put_many([{"key": "after-kill", "value": "v"}], w=1, refresh=True)} == {2}
        failed = kv.put_many([{"key": "needs-three", "value": "v"}], w=3, refresh=True)
        assert failed[0]["error"] == "unavailable"  # n1 now suspects n3: "2 of 3 replicas are live"
        assert "the write needs 3" in failed[0]["message"]


@pytest.mark.cluster(nodes=4, partitions=16, replicas=3)
def test_a_listing_re_plans_a_killed_nodes_partitions_onto_other_replicas(local_cluster: LocalCluster):
    keys = [f"doc:{i:04d}" for i in range(2_000)]
    with local_cluster.node_client("n1") as client:
        kv = KVClient(client)
        # refresh: every replica holds every key before the kill, whichever one a listing asks.
        written = kv.put_many([{"key": key, "value": "v"} for key in keys], refresh=True)
        assert all(result["acks"] == 3 for result in written)
        placement = client.status()["placement"]
    # n1 answers for what it holds; each other partition goes to its first replica in
    # preference order. Kill the node that serves most of those.
    elsewhere = Counter(nodes[0] for nodes in placement if "n1" not in nodes)
    assert elsewhere, "with 4 nodes and N=3, n1 does not hold every partition"
    victim = elsewhere.most_common(1)[0][0]
    cluster_processes.stop_node(local_cluster.directory, victim, kill=True)

    with local_cluster.node_client("n1") as client:
        listing = KVClient(client).list_keys(limit=10_000)
        status = {m["id"]: m["status"] for m in client.status()["members"]}
    assert (listing.keys, listing.truncated, listing.partitions_missing) == (keys, False, [])
    # n1 still believed the victim up: its first plan included it, and the listing is whole
    # only because the victim's partitions were asked again of the other replicas.
    assert status[victim] == "up", status


@pytest.mark.cluster(nodes=3, partitions=16, replicas=1)
def test_with_one_replica_a_killed_nodes_partitions_are_reported_missing(local_cluster: LocalCluster):
    keys = [f"k{i:03d}" for i in range(300)]
    with local_cluster.node_client("n1") as client:
        KVClient(client).put_many([{"key": key, "value": "v"} for key in keys])
        placement = client.status()["placement"]
    lost = [p for p, nodes in enumerate(placement) if nodes == ["n2"]]
    assert lost
    cluster_processes.stop_node(local_cluster.directory, "n2", kill=True)

    with local_cluster.node_client("n1") as client:
        kv = KVClient(client)
        partial = kv.list_keys(limit=10_000, allow_partial=True)
        assert partial.partitions_missing == lost
        assert partial.keys == [key for key in keys if partition_of(key, 16) not in lost]
        with pytest.raises(Unavailable) as refused:
            kv.list_keys()
    assert str(lost[0]) in refused.value.message and refused.value.details["partitions"] == lost
