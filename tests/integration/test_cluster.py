"""Acceptance tests for the core cluster: real node processes on loopback.

Each test starts its own cluster of ``legion node start`` processes on random
free ports, talks to it over HTTP like a user would, and kills nodes with
SIGKILL where the scenario calls for a crash.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from engines.kv import KVClient
from legion.client import Client
from legion.errors import BadRequest, DeadlineExceeded, NotFound
from legion.placement import moved_slots, node_loads
from legion.runtime import local_cluster as cluster_processes
from legion.runtime.local_cluster import readiness
from legion.runtime.transport import DEADLINE_HEADER
from legion.testing.cluster import node_metric
from tests.conftest import LocalCluster

PARTITIONS = 64


def write_keys(kv: KVClient, keys: list[str], **kw) -> None:
    for key in keys:
        kv.put(key, f"value of {key}".encode(), content_type="text/plain", **kw)


def assert_all_readable(kv: KVClient, keys: list[str], **kw) -> None:
    missing = []
    for key in keys:
        try:
            got = kv.get(key, **kw)
        except NotFound:
            missing.append(key)
            continue
        assert got.value == f"value of {key}".encode()
        assert got.content_type == "text/plain"
    assert not missing, f"{len(missing)} acknowledged keys not readable, e.g. {missing[:5]}"


def wait_status(client: Client, predicate, timeout_s: float) -> tuple[dict, float]:
    start = time.monotonic()
    status = client.wait_for(predicate, timeout_s=timeout_s, interval_s=0.1)
    return status, time.monotonic() - start


def statuses(status: dict) -> dict[str, str]:
    return {m["id"]: m["status"] for m in status["members"]}


def handing_over(cluster: LocalCluster, node_ids: tuple[str, ...]) -> dict[str, float]:
    """Each node's count of partitions it no longer owns and still holds (``legion_partitions_handing_over``)."""
    return {node_id: node_metric(cluster.directory, node_id, "legion_partitions_handing_over") for node_id in node_ids}


@pytest.mark.cluster(nodes=3, partitions=64, replicas=1)
def test_up_returns_once_the_first_node_handed_over_what_the_others_took(local_cluster: LocalCluster):
    # n1 owned all 64 partitions until n2 and n3 joined; with N=1 it keeps 22 of them.
    assert handing_over(local_cluster, ("n1", "n2", "n3")) == {"n1": 0, "n2": 0, "n3": 0}
    with local_cluster.node_client("n1") as client:
        loads = node_loads(client.status()["placement"])
    assert sorted(loads.values()) == [21, 21, 22]


def test_three_nodes_write_through_one_read_through_the_others(local_cluster: LocalCluster):
    keys = [f"user:{i:04d}" for i in range(1_000)]
    with local_cluster.node_client("n1") as c1:
        write_keys(KVClient(c1), keys)
    for node_id in ("n2", "n3"):
        with local_cluster.node_client(node_id) as c:
            assert_all_readable(KVClient(c), keys)
    with local_cluster.node_client("n2") as c:
        status = c.status()
    assert statuses(status) == {"n1": "up", "n2": "up", "n3": "up"}
    assert len(status["placement"]) == PARTITIONS
    for nodes in status["placement"]:
        assert len(nodes) == len(set(nodes)) == 3
    assert status["rebalancing"] is False


def test_kill_9_marks_down_keeps_quorum_writes_and_rejoins_as_itself(local_cluster: LocalCluster):
    before = [f"before:{i}" for i in range(300)]
    after = [f"after:{i}" for i in range(300)]
    with local_cluster.node_client("n1") as c1:
        write_keys(KVClient(c1), before)
    victim = next(n for n in local_cluster.nodes() if n["id"] == "n2")
    os.kill(victim["pid"], signal.SIGKILL)
    killed_at = time.monotonic()

    with local_cluster.node_client("n3") as c3:
        status, _ = wait_status(c3, lambda s: statuses(s)["n2"] == "down", timeout_s=15)
        print(f"n2 marked down {time.monotonic() - killed_at:.1f} s after kill -9")
        assert statuses(status)["n1"] == "up" and statuses(status)["n3"] == "up"
        kv3 = KVClient(c3)
        write_keys(kv3, after, w=2)
        assert_all_readable(kv3, before + after)

    cluster_processes.start_node(local_cluster.directory, "n2")
    with local_cluster.node_client("n2") as c2:
        assert c2.health()["node_id"] == "n2"
        status, _ = wait_status(c2, lambda s: all(m["status"] == "up" for m in s["members"]), timeout_s=20)
        assert sorted(statuses(status)) == ["n1", "n2", "n3"], "the restarted node must not join as a new member"
        assert_all_readable(KVClient(c2), before + after)


def test_a_fourth_node_takes_only_what_must_move_and_serves_every_key(local_cluster: LocalCluster):
    keys = [f"doc:{i}" for i in range(600)]
    with local_cluster.node_client("n1") as c1:
        write_keys(KVClient(c1), keys)
        old = tuple(tuple(nodes) for nodes in c1.status()["placement"])

    cluster_processes.add_node(local_cluster.directory, timeout_s=60)

    # add_node returns once the old owners handed over what moved, not while they still ship it.
    assert handing_over(local_cluster, ("n1", "n2", "n3")) == {"n1": 0, "n2": 0, "n3": 0}
    with local_cluster.node_client("n1") as c1:
        status = c1.status()
    new = tuple(tuple(nodes) for nodes in status["placement"])
    assert statuses(status) == {f"n{i}": "up" for i in range(1, 5)}
    loads = node_loads(new)
    assert sorted(loads) == ["n1", "n2", "n3", "n4"]
    assert max(loads.values()) - min(loads.values()) <= 1
    # With N=3 every node held all 64 partitions; the newcomer's share is all that may move.
    assert moved_slots(old, new) == loads["n4"] == PARTITIONS * 3 // 4
    assert all(set(n) - set(o) <= {"n4"} for o, n in zip(old, new))

    for node_id in ("n1", "n2", "n3", "n4"):
        with local_cluster.node_client(node_id) as c:
            assert_all_readable(KVClient(c), keys)
    # r=1 through n4 reads n4's own replica where it holds one: proof it pulled the data before serving.
    with local_cluster.node_client("n4") as c4:
        assert_all_readable(KVClient(c4), keys, r=1)


def test_a_node_joins_while_another_is_down_and_the_copies_it_owns_are_handed_over_once_it_is_back(
    local_cluster: LocalCluster,
):
    keys = [f"doc:{i}" for i in range(300)]
    with local_cluster.node_client("n1") as c1:
        write_keys(KVClient(c1), keys)
    local_cluster.kill("n2")
    started = time.monotonic()
    # n2 is a replica of every partition: what moves to n4 cannot be handed over in full before it is back.
    cluster_processes.add_node(local_cluster.directory, timeout_s=60)
    assert time.monotonic() - started < 45, "add_node waited for a hand-over that needs the stopped node"
    with local_cluster.node_client("n4") as c4:
        assert statuses(c4.status())["n4"] == "up"
        assert_all_readable(KVClient(c4), keys)
    local_cluster.restart("n2")
    deadline = time.monotonic() + 60
    for node_id in ("n1", "n3"):
        readiness.wait_handed_over(local_cluster.directory, local_cluster.node(node_id), deadline, 60)
    assert handing_over(local_cluster, ("n1", "n2", "n3", "n4")) == {"n1": 0, "n2": 0, "n3": 0, "n4": 0}


def test_a_change_forwarded_to_a_stalled_claimant_is_504_outcome_unknown_and_never_applied_late(
    local_cluster: LocalCluster,
):
    with local_cluster.node_client("n1") as c:
        claimant = c.status()["claimant"]
    asked, target = [n for n in ("n1", "n2", "n3") if n != claimant]
    pid = local_cluster.node(claimant)["pid"]
    os.kill(pid, signal.SIGSTOP)  # stalled, not dead: its socket still takes the forwarded request
    try:
        with local_cluster.node_client(asked) as c:
            with pytest.raises(DeadlineExceeded, match="outcome unknown"):
                c.remove_node(target)
    finally:
        os.kill(pid, signal.SIGCONT)
    # Resumed, the claimant reads the forwarded request; its deadline passed while it was stalled.
    with local_cluster.node_client(claimant) as c:
        c.wait_for(lambda s: s["claimant"] is not None and statuses(s).get(claimant) == "up", timeout_s=20)
        time.sleep(2)
        assert statuses(c.status())[target] == "up"


def test_a_forwarded_change_read_after_its_deadline_is_dropped(local_cluster: LocalCluster):
    """What a stalled claimant does when it resumes, made deterministic: an expired change is refused."""
    with local_cluster.node_client("n1") as c:
        claimant = c.status()["claimant"]
    target = next(n for n in ("n1", "n2", "n3") if n != claimant)
    expired = str(int(time.time() * 1000) - 1_000)
    with local_cluster.node_client(claimant) as c:
        with pytest.raises(DeadlineExceeded, match="expired .* it was not applied"):
            c.request("POST", "/v1/cluster/remove", json={"node_id": target}, headers={DEADLINE_HEADER: expired})
        time.sleep(1)
        assert statuses(c.status())[target] == "up"
        with pytest.raises(BadRequest, match=DEADLINE_HEADER):
            c.request("POST", "/v1/cluster/remove", json={"node_id": target}, headers={DEADLINE_HEADER: "soon"})
