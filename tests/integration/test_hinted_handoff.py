"""Sloppy quorum and hinted handoff on real node processes on loopback, with kill -9.

Writes made while an owner is down are kept as hints by a live node and reach
the owner once it is back; a restarted owner catches up from those hints (it
re-copies no partition), and the proof is read from that node alone: the
other nodes are killed, and it answers every acknowledged key with r=1.
"""

from __future__ import annotations

import resource
import threading
import time

import pytest

from engines.kv import KVClient
from legion.client import Client
from legion.errors import NotFound
from legion.keyspace import partition_of
from tests.conftest import LocalCluster
from tests.integration.test_metrics import scrape, total

SETTLE_TIMEOUT_S = 60.0


def value_of(key: str) -> bytes:
    return f"value of {key}".encode()


def missing_on(client: Client, keys: list[str]) -> list[str]:
    """The keys ``client``'s node does not answer with their value, read with r=1."""
    kv, missing = KVClient(client), []
    for key in keys:
        try:
            if kv.get(key, r=1).value != value_of(key):
                missing.append(key)
        except NotFound:
            missing.append(key)
    return missing


def member(status: dict, node_id: str) -> dict:
    return next(m for m in status["members"] if m["id"] == node_id)


def wait_settled(cluster: LocalCluster, owner: str, via: str = "n1") -> dict:
    """Wait until no node keeps hints (as ``via`` sees it) and ``owner`` serves every partition it holds
    (as ``owner`` itself says: another node hears that by gossip, a moment later); ``via``'s status."""
    with cluster.node_client(via) as client:
        status = client.wait_for(
            lambda s: not s["hints_pending"] and not member(s, owner)["unhealthy"] and member(s, owner)["status"] == "up",
            timeout_s=SETTLE_TIMEOUT_S,
            interval_s=0.2,
        )
    with cluster.node_client(owner) as client:
        client.wait_for(lambda s: not member(s, owner)["unhealthy"], timeout_s=SETTLE_TIMEOUT_S, interval_s=0.2)
    return status


def assert_verify_clean(client: Client) -> None:
    report = client.request("GET", "/v1/cluster/verify").json()
    assert report["clean"], report


def test_writes_made_while_a_node_is_killed_reach_it_from_hints_without_a_resync(local_cluster: LocalCluster):
    keys = [f"hinted:{i:04d}" for i in range(400)]
    local_cluster.kill("n2")
    for i, node_id in enumerate(("n1", "n3")):  # two coordinators: each keeps the hints of its own writes
        with local_cluster.node_client(node_id) as client:
            kv = KVClient(client)
            for key in keys[i::2]:
                assert kv.put(key, value_of(key), w=2)["acks"] == 2
    with local_cluster.node_client("n1") as c1:
        status = c1.wait_for(lambda s: sum(s["hints_pending"].values()) == len(keys), timeout_s=10, interval_s=0.2)
        assert status["hints_pending"] == {"n2": len(keys)}
        assert member(status, "n1")["hints_pending"] == {"n2": len(keys) // 2}
        assert member(status, "n3")["hints_pending"] == {"n2": len(keys) // 2}

    local_cluster.restart("n2")
    with local_cluster.node_client("n1") as c1:
        wait_settled(local_cluster, "n2")
        assert_verify_clean(c1)
    n2 = scrape(local_cluster, "n2")
    assert total(n2, "legion_handoff_partitions_total") == 0, "the restarted node re-copied partitions"
    replayed = total(scrape(local_cluster, "n1"), "legion_hints_replayed_total")
    replayed += total(scrape(local_cluster, "n3"), "legion_hints_replayed_total")
    assert replayed == len(keys)

    local_cluster.kill("n1")
    local_cluster.kill("n3")
    with local_cluster.node_client("n2") as c2:
        assert missing_on(c2, keys) == []  # n2 alone, from its own copy


def test_a_hint_is_kept_while_its_owner_fails_to_take_it_and_survives_the_holders_restart(local_cluster: LocalCluster):
    keys = [f"kept:{i:04d}" for i in range(200)]
    pid = local_cluster.node("n3")["pid"]
    _, hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (1, hard))  # n3 is up but cannot write (a full disk)
    try:
        with local_cluster.node_client("n1") as c1:
            kv = KVClient(c1)
            for key in keys:
                kv.put(key, value_of(key), w=2)
            status = c1.wait_for(lambda s: member(s, "n1")["hints_pending"].get("n3") == len(keys), timeout_s=10, interval_s=0.2)
            # n1 tries to replay to n3 every round; n3 answers with an error, so nothing is dropped.
            time.sleep(3)
            status = c1.status()
            assert member(status, "n1")["hints_pending"] == {"n3": len(keys)}
        assert total(scrape(local_cluster, "n1"), "legion_hints_replayed_total") == 0
        # The holder crashes and comes back: its hints are still there.
        local_cluster.kill("n1")
        local_cluster.restart("n1")
        with local_cluster.node_client("n1") as c1:
            status = c1.wait_for(lambda s: member(s, "n1")["hints_pending"].get("n3") == len(keys), timeout_s=20, interval_s=0.2)
    finally:
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (hard, hard))  # space is back

    with local_cluster.node_client("n1") as c1:
        wait_settled(local_cluster, "n3")
        assert_verify_clean(c1)
    assert total(scrape(local_cluster, "n1"), "legion_hints_replayed_total") == len(keys)
    local_cluster.kill("n1")
    local_cluster.kill("n2")
    with local_cluster.node_client("n3") as c3:
        assert missing_on(c3, keys) == []


@pytest.mark.cluster(nodes=4, partitions=16, replicas=3)
def test_a_fallback_outside_the_preference_list_counts_towards_w_and_hands_the_writes_to_the_owner(local_cluster: LocalCluster):
    local_cluster.kill("n4")
    with local_cluster.node_client("n1") as c1:
        status = c1.wait_for(lambda s: member(s, "n4")["status"] == "down", timeout_s=15, interval_s=0.2)
        placement = status["placement"]
        keys = [f"sloppy:{i:04d}" for i in range(300)]
        owned_by_n4 = [k for k in keys if "n4" in placement[partition_of(k.encode(), 16)]]
        assert owned_by_n4
        kv = KVClient(c1)
        for key in keys:
            # w=3 with one of the three owners down: only a fallback's hint can make the third acknowledgement.
            assert kv.put(key, value_of(key), w=3)["acks"] == 3
        status = c1.wait_for(lambda s: s["hints_pending"].get("n4") == len(owned_by_n4), timeout_s=10, interval_s=0.2)
        for key in owned_by_n4:
            (fallback,) = {"n1", "n2", "n3"} - set(placement[partition_of(key.encode(), 16)])
            assert member(status, fallback)["hints_pending"].get("n4", 0) > 0

    local_cluster.restart("n4")
    with local_cluster.node_client("n1") as c1:
        wait_settled(local_cluster, "n4")
        assert_verify_clean(c1)
    for node_id in ("n1", "n2", "n3"):
        local_cluster.kill(node_id)
    with local_cluster.node_client("n4") as c4:
        assert missing_on(c4, owned_by_n4) == []


WRITERS = 32
KEYS_PER_WRITER = 40


class _Writer:
    """One of the concurrent writers: overwrites its own keys in turn, remembering what was acknowledged.

    A write that failed may still have been applied, so for each key it also
    remembers the newest sequence number it tried: a read may return anything
    from the last acknowledged value up to that."""

    def __init__(self, index: int, client: Client) -> None:
        self.index = index
        self.kv = KVClient(client)
        self.acked: dict[str, int] = {}
        self.tried: dict[str, int] = {}
        self.failures = 0
        self.writes = 0

    def key(self, k: int) -> str:
        return f"load:{self.index:02d}:{k:03d}"

    def run(self, stop) -> None:
        seq = 0
        while not stop.is_set():
            seq += 1
            self.writes = seq
            key = self.key(seq % KEYS_PER_WRITER)
            self.tried[key] = seq
            try:
                self.kv.put(key, f"{key}#{seq}", w=2)
                self.acked[key] = seq
            except Exception:  # noqa: BLE001 - any failure only means "not acknowledged"
                self.failures += 1


def test_32_writers_with_w2_lose_nothing_acknowledged_when_a_node_is_killed_and_restarted(local_cluster: LocalCluster):
    """Issue 7's acceptance run for kill -9: every acknowledged key reads back with its last acknowledged
    value through every node with r=1, and verify is clean within 30 s."""
    stop = threading.Event()
    clients = [local_cluster.client.copy(timeout_s=10, start_at=i) for i in range(WRITERS)]
    writers = [_Writer(i, client) for i, client in enumerate(clients)]
    threads = [threading.Thread(target=w.run, args=(stop,), name=f"writer-{w.index}") for w in writers]
    try:
        for t in threads:
            t.start()
        time.sleep(2)
        local_cluster.kill("n2")
        time.sleep(4)  # longer than FAILURE_TIMEOUT_MS: n2 is marked down, and writes go to fallbacks as hints
        local_cluster.restart("n2")
        time.sleep(2)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
        for client in clients:
            client.close()
    acknowledged = sum(len(w.acked) for w in writers)
    print(f"{sum(w.writes for w in writers)} writes tried, {sum(w.failures for w in writers)} failed")
    assert acknowledged > WRITERS * KEYS_PER_WRITER // 2

    started = time.monotonic()
    with local_cluster.node_client("n1") as c1:
        wait_settled(local_cluster, "n2")
        c1.wait_for(lambda s: c1.request("GET", "/v1/cluster/verify").json()["clean"], timeout_s=30, interval_s=0.5)
    print(f"hints delivered and verify clean {time.monotonic() - started:.1f} s after the writers stopped")
    assert time.monotonic() - started < 30

    for node_id in ("n1", "n2", "n3"):
        with local_cluster.node_client(node_id) as client:
            kv, wrong = KVClient(client), []
            for w in writers:
                for key, seq in w.acked.items():
                    got = kv.get(key, r=1).value.decode()
                    got_seq = int(got.rsplit("#", 1)[1])
                    if not (got.startswith(key + "#") and seq <= got_seq <= w.tried[key]):
                        wrong.append((key, seq, got))
            assert not wrong, f"through {node_id}: {len(wrong)} keys lost their acknowledged value, e.g. {wrong[:3]}"
