"""A node that lacks an engine answers 404 for its routes; the others serve it around that node.

Legion's choice for nodes with different engine sets (a package installed on
some nodes only, or a rolling install): such a node still joins and serves
every engine it has. For the one it lacks, its HTTP routes do not exist
(404), and when a peer names that engine in a replica call it answers
``EngineMissing`` (409) — a failure of that replica, not of the request —
so writes meet their quorum on the other replicas, reads and coverage ask
another replica, and a read that needs that node's reply fails saying which
engine is missing where.
"""

from __future__ import annotations

import pytest

from engines.kv import KVClient
from legion.errors import NotFound, Unavailable
from legion.runtime import local_cluster
from legion.testing.cluster import wait_until_listenable
from tests.conftest import NO_DASK
from tests.integration.test_idempotent_retries import TallyEngine


def test_a_node_without_the_engine_serves_404_for_it_and_the_cluster_serves_it_around_that_node(
    legion_cluster, monkeypatch: pytest.MonkeyPatch
):
    cluster = legion_cluster(TallyEngine, nodes=3, partitions=8, replicas=3, options=NO_DASK)
    local_cluster.stop_node(cluster.directory, "n3")
    wait_until_listenable(cluster.node("n3")["url"])
    with monkeypatch.context() as without:
        without.delenv("PYTHONPATH")  # n3 starts without the package that provides the engine
        local_cluster.start_node(cluster.directory, "n3")
    with cluster.node_client("n1") as n1:  # n1 counts n3 live again (its stop may have been noticed)
        n1.wait_for(lambda status: all(m["status"] == "up" for m in status["members"]), timeout_s=30)

    with cluster.node_client("n3") as n3, pytest.raises(NotFound):
        n3.request("POST", "/v1/tally/apples", body=b"1")
    with cluster.node_client("n1") as n1:
        for _ in range(3):
            n1.request("POST", "/v1/tally/apples", body=b"2")  # w=2: n1 and n2 log it, n3 refuses
        listing = n1.request("GET", "/v1/tally", params={"via": "n3"}).json()
        assert listing["totals"] == {"apples": 6}  # asked of n3 first, every partition re-planned elsewhere
        assert listing["served_by"] and "n3" not in listing["served_by"]
        with pytest.raises(Unavailable, match="does not have engine 'tally' installed"):
            n1.request("GET", "/v1/tally/apples")  # its handler asks r=3: n3 cannot answer
    with cluster.node_client("n3") as n3:  # the engines n3 has work as ever
        KVClient(n3).put("pears", b"ripe")
        assert KVClient(n3).get("pears", r=2).value == b"ripe"  # r=2 reads what w=2 acknowledged
