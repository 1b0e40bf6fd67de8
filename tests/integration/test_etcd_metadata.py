"""The cluster state kept in etcd (``legion node start --metadata etcd://…``), with real node processes.

The clusters here run on a real etcd (``running_etcd``: Debian's
``etcd-server`` on free loopback ports). What holds is what consensus mode
promises: an acknowledged membership change holds on every node, concurrent
changes through different nodes both land, a node killed and restarted takes
the state from etcd, and without etcd membership changes answer 503 (naming
etcd) while data writes go on.

To keep the module short, the tests that leave the cluster as they found it
(``n1``-``n3`` up, whatever else joined and left) share one cluster; the one
that kills every node has its own.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engines.kv import KVClient
from legion.errors import Conflict, NoQuorum
from legion.runtime import local_cluster
from legion.testing.cluster import node_metric, running_cluster
from tests.conftest import NO_DASK, CliRunner, EtcdServer, LocalCluster, running_etcd

CONVERGED_WITHIN_S = 20
PARTITIONS = 16
MEMBERS = ["n1", "n2", "n3"]


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalCluster, EtcdServer]]:
    """Three nodes keeping their state in one etcd (key /legion/state), for the tests of this module
    that leave n1-n3 up."""
    directory = tmp_path_factory.mktemp("etcd-metadata")
    with running_etcd(directory) as etcd:
        with running_cluster(directory / "cluster", nodes=3, partitions=PARTITIONS, metadata=etcd.url, options=NO_DASK) as cluster:
            yield cluster, etcd


def member_status(document: dict[str, Any], node_id: str) -> str | None:
    return next((m["status"] for m in document["members"] if m["id"] == node_id), None)


def statuses(cluster: LocalCluster, node_ids: list[str]) -> dict[str, dict[str, Any]]:
    out = {}
    for node_id in node_ids:
        with cluster.node_client(node_id) as client:
            out[node_id] = client.status()
    return out


def converged_on_etcd(cluster: LocalCluster, etcd: EtcdServer, node_ids: list[str]) -> dict[str, dict[str, Any]]:
    """Wait until every node in ``node_ids`` holds the state etcd holds; their status documents."""
    deadline = time.monotonic() + CONVERGED_WITHIN_S
    while True:
        read = etcd.state()
        assert read is not None, "etcd holds no cluster state"
        documents = statuses(cluster, node_ids)
        if all(d["epoch"] == read.state.epoch and d["cluster_id"] == read.state.cluster_id for d in documents.values()):
            return documents
        assert time.monotonic() < deadline, (
            f"nodes at epochs {({n: d['epoch'] for n, d in documents.items()})}, etcd at {read.state.epoch}"
        )
        time.sleep(0.2)


def test_a_cluster_forms_on_etcd_and_added_and_removed_nodes_hold_on_every_node(shared: tuple[LocalCluster, EtcdServer]) -> None:
    cluster, etcd = shared
    documents = converged_on_etcd(cluster, etcd, MEMBERS)
    read = etcd.state()
    assert read is not None
    assert {m.id for m in read.state.members} >= set(MEMBERS)
    assert all(read.state.member(n).status == "up" for n in MEMBERS)
    assert all(member_status(d, n) == "up" for d in documents.values() for n in MEMBERS)

    added = local_cluster.add_node(cluster.directory, timeout_s=60)["id"]  # acknowledged once up and rebalanced
    documents = converged_on_etcd(cluster, etcd, [*MEMBERS, added])
    assert all(member_status(d, added) == "up" for d in documents.values()), "the added node does not hold everywhere"

    local_cluster.remove_node(cluster.directory, added, timeout_s=60)
    documents = converged_on_etcd(cluster, etcd, MEMBERS)
    assert all(member_status(d, added) == "removed" for d in documents.values()), "the removal does not hold everywhere"
    read = etcd.state()
    assert read is not None and read.state.member(added).status == "removed"
    assert all(added not in nodes for nodes in read.state.placement)


def test_a_node_keeping_its_state_by_consensus_cannot_join_an_etcd_cluster(shared: tuple[LocalCluster, EtcdServer]) -> None:
    cluster, _etcd = shared
    with cluster.node_client("n3") as client:
        with pytest.raises(Conflict, match="keeps its state in etcd under the key /legion/state, and node n9 by consensus"):
            client.request("POST", "/v1/cluster/join", json={"node_id": "n9", "url": "http://127.0.0.1:9", "metadata": "consensus"})
        assert member_status(client.status(), "n9") is None


def test_concurrent_changes_through_two_nodes_both_land(shared: tuple[LocalCluster, EtcdServer]) -> None:
    """Two joins through two nodes, sent while etcd is paused, so both nodes read the same revision
    when it resumes: one swap loses, is retried on the state that won, and neither join is lost."""
    cluster, etcd = shared
    converged_on_etcd(cluster, etcd, MEMBERS)
    lost_before = sum(node_metric(cluster.directory, n, "legion_etcd_swaps_lost_total") for n in ("n1", "n2"))
    answers: dict[str, Any] = {}

    def join(through: str, joiner: str, port: int) -> None:
        with cluster.node_client(through) as client:
            try:
                answers[joiner] = client.join(joiner, f"http://127.0.0.1:{port}")
            except Exception as exc:  # reported below with the other answer
                answers[joiner] = exc

    workers = [threading.Thread(target=join, args=("n1", "x1", 1)), threading.Thread(target=join, args=("n2", "x2", 2))]
    etcd.pause()
    try:
        for worker in workers:
            worker.start()
        time.sleep(0.5)  # both requests reach etcd (and wait there)
    finally:
        etcd.resume()
    for worker in workers:
        worker.join(30)
    assert all(isinstance(answers.get(j), dict) for j in ("x1", "x2")), answers
    assert member_status(answers["x1"], "x1") == "joining" and member_status(answers["x2"], "x2") == "joining"
    documents = converged_on_etcd(cluster, etcd, MEMBERS)
    for document in documents.values():
        assert member_status(document, "x1") is not None and member_status(document, "x2") is not None, "a join was lost"
    lost = sum(node_metric(cluster.directory, n, "legion_etcd_swaps_lost_total") for n in ("n1", "n2")) - lost_before
    assert lost >= 1, "the two changes did not race: the test proved nothing"

    with cluster.node_client("n3") as client:  # leave the cluster as it was: joiners go at once
        client.remove_node("x1")
        client.remove_node("x2")
    documents = converged_on_etcd(cluster, etcd, MEMBERS)
    assert all(member_status(d, x) == "removed" for d in documents.values() for x in ("x1", "x2"))


def test_without_etcd_membership_changes_answer_503_and_data_writes_go_on(shared: tuple[LocalCluster, EtcdServer]) -> None:
    cluster, etcd = shared
    converged_on_etcd(cluster, etcd, MEMBERS)
    written: list[str] = []
    etcd.pause()
    try:
        with cluster.node_client("n2") as client:
            started = time.monotonic()
            with pytest.raises(NoQuorum) as refused:
                client.join("x3", "http://127.0.0.1:3")
            took_s = time.monotonic() - started
            kv = KVClient(client)
            for i in range(20):
                kv.put(f"during-{i}", f"v{i}", w=2)
                written.append(f"during-{i}")
    finally:
        etcd.resume()
    message = refused.value.message
    assert "etcd at 127.0.0.1" in message and "Retrying is safe" in message, message
    assert took_s < 10, f"the 503 took {took_s:.1f} s"
    read = etcd.state()
    assert read is not None and not read.state.has_member("x3"), "a refused change was applied"

    with cluster.node_client("n2") as client:
        acknowledged = client.join("x3", "http://127.0.0.1:3")  # the operator's retry
        kv = KVClient(client)
        assert all(kv.get(key).value == f"v{key.split('-')[1]}".encode() for key in written)
    assert member_status(acknowledged, "x3") == "joining"
    documents = converged_on_etcd(cluster, etcd, MEMBERS)
    assert all(member_status(d, "x3") == "joining" for d in documents.values())
    with cluster.node_client("n1") as client:
        client.remove_node("x3")
    print(f"503 after {took_s:.2f} s; {len(written)} writes with w=2 while etcd was paused")


def test_a_node_killed_and_restarted_loads_the_state_from_etcd(tmp_path: Path) -> None:
    with running_etcd(tmp_path) as etcd, running_cluster(
        tmp_path / "cluster", nodes=2, partitions=PARTITIONS, replicas=2, metadata=etcd.url, options=NO_DASK
    ) as cluster:
        converged_on_etcd(cluster, etcd, ["n1", "n2"])
        cluster.kill("n1")
        with cluster.node_client("n2") as client:
            acknowledged = client.join("x1", "http://127.0.0.1:1")
        assert member_status(acknowledged, "x1") == "joining"
        cluster.kill("n2")  # nobody is left to gossip the join to n1: only etcd knows it
        read = etcd.state()
        assert read is not None and read.state.has_member("x1")

        cluster.restart("n1")
        with cluster.node_client("n1") as client:
            status = client.status()
        assert member_status(status, "x1") == "joining", "the restarted node did not load the join from etcd"
        assert status["epoch"] >= read.state.epoch


@pytest.mark.parametrize("command", [["node", "start", "--data-dir"], ["cluster", "up", "--base-port", "0", "--cluster"]])
def test_a_malformed_metadata_url_is_refused_before_anything_starts(
    legion_cli: CliRunner, tmp_path: Path, command: list[str]
) -> None:
    result = legion_cli(*command, str(tmp_path / "made"), "--metadata", "etcd://127.0.0.1/legion")
    assert result.returncode == 1
    assert result.stderr.startswith("error: --metadata must be etcd://HOST:PORT or etcd://HOST:PORT/PREFIX, e.g. ")
    assert not (tmp_path / "made").exists()
