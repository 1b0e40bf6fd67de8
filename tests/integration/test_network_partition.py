"""A real network partition: five nodes, each in a network namespace of its own, cut 3 | 2.

Needs root (``ip netns``, veth pairs, bridges), as CI has. The nodes sit on
one layer-2 segment made of two bridges joined by a veth "trunk": bridge A
holds n1, n2, n3 and bridge B holds n4, n5. Taking the trunk's link down cuts
the cluster 3 | 2 while the test (in the root namespace, with an address on
each bridge) still reaches every node. During the cut the majority side
completes a membership change (the removal of n5 is acknowledged) and keeps
taking w=2 writes, while the minority side answers a membership change with
503 ``no_quorum`` saying why; after the link comes back up every node holds
one committed state and the acknowledged removal holds.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from engines.kv import KVClient
from legion.client import Client
from legion.errors import DeadlineExceeded, LegionError, NoQuorum, Unavailable
from legion.keyspace import partition_of

pytestmark = pytest.mark.slow

SUBNET = "10.77.0"
PORT = 7400
PARTITIONS = 16
MAJORITY = ("n1", "n2", "n3")
MINORITY = ("n4", "n5")
READY_WITHIN_S = 90


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def address(node_id: str) -> str:
    return f"{SUBNET}.{node_id[1:]}"


def url(node_id: str) -> str:
    return f"http://{address(node_id)}:{PORT}"


class Network:
    """Namespaces, veth pairs and the two bridges; ``cut`` and ``heal`` take the trunk down and up."""

    def __init__(self) -> None:
        tag = secrets.token_hex(2)
        self.namespaces = {n: f"lg{tag}{n}" for n in (*MAJORITY, *MINORITY)}
        self.bridges = {"a": f"lg{tag}ba", "b": f"lg{tag}bb"}
        self.trunk = (f"lg{tag}ta", f"lg{tag}tb")
        self.links: list[str] = []

    def build(self) -> None:
        for side, bridge in self.bridges.items():
            ip("link", "add", bridge, "type", "bridge")
            ip("link", "set", bridge, "up")
            self.links.append(bridge)
        ip("link", "add", self.trunk[0], "type", "veth", "peer", "name", self.trunk[1])
        self.links.append(self.trunk[0])
        ip("link", "set", self.trunk[0], "master", self.bridges["a"])
        ip("link", "set", self.trunk[1], "master", self.bridges["b"])
        for end in self.trunk:
            ip("link", "set", end, "up")
        # The test's own addresses: one on each bridge, each reaching its side by host routes.
        ip("addr", "add", f"{SUBNET}.254/32", "dev", self.bridges["a"])
        ip("addr", "add", f"{SUBNET}.253/32", "dev", self.bridges["b"])
        for node_id, namespace in self.namespaces.items():
            side = "a" if node_id in MAJORITY else "b"
            outside, inside = f"{namespace}h", f"{namespace}n"
            ip("netns", "add", namespace)
            ip("link", "add", outside, "type", "veth", "peer", "name", inside)
            self.links.append(outside)
            ip("link", "set", inside, "netns", namespace)
            ip("link", "set", outside, "master", self.bridges[side])
            ip("link", "set", outside, "up")
            ip("-n", namespace, "link", "set", "lo", "up")
            ip("-n", namespace, "addr", "add", f"{address(node_id)}/24", "dev", inside)
            ip("-n", namespace, "link", "set", inside, "up")
            source = f"{SUBNET}.254" if side == "a" else f"{SUBNET}.253"
            ip("route", "add", f"{address(node_id)}/32", "dev", self.bridges[side], "src", source)
            # The test's addresses answer from the namespace too (replies find their way back).
            ip("-n", namespace, "route", "add", f"{source}/32", "dev", inside)

    def cut(self) -> None:
        ip("link", "set", self.trunk[0], "down")

    def heal(self) -> None:
        ip("link", "set", self.trunk[0], "up")

    def destroy(self) -> None:
        for namespace in self.namespaces.values():
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True)
        for link in self.links:
            subprocess.run(["ip", "link", "del", link], capture_output=True)


class Nodes:
    """``legion node start`` in each namespace; stopped (by pid) at the end."""

    def __init__(self, network: Network, directory: Path) -> None:
        self.network = network
        self.directory = directory
        self.token_file = directory / "token"
        self.token_file.write_text(secrets.token_urlsafe(32) + "\n")
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, node_id: str, join: str | None) -> None:
        data_dir = self.directory / node_id
        data_dir.mkdir()
        argv = [
            "ip", "netns", "exec", self.network.namespaces[node_id],
            sys.executable, "-m", "cli", "node", "start",
            "--data-dir", str(data_dir), "--listen", f"{address(node_id)}:{PORT}",
            "--token-file", str(self.token_file), "--node-id", node_id,
            "--partitions", str(PARTITIONS), "--replicas", "3",
        ]  # fmt: skip
        if join:
            argv += ["--join", join]
        log = open(data_dir / "node.log", "wb")
        self.processes[node_id] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=os.getcwd())

    def client(self, *node_ids: str) -> Client:
        return Client([url(n) for n in node_ids], self.token_file.read_text().strip(), timeout_s=10)

    def stop(self) -> None:
        for process in self.processes.values():
            process.terminate()
        for process in self.processes.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


@pytest.fixture
def partitioned_cluster(tmp_path: Path) -> Iterator[tuple[Network, Nodes]]:
    network = Network()
    nodes = Nodes(network, tmp_path)
    try:
        network.build()
        nodes.start("n1", None)
        wait_healthy(nodes, "n1")
        for node_id in ("n2", "n3", "n4", "n5"):
            nodes.start(node_id, url("n1"))
            wait_healthy(nodes, node_id)
        with nodes.client("n1") as client:
            client.wait_for(
                lambda s: all(m["status"] == "up" for m in s["members"])
                and len(s["members"]) == 5
                and len(s["voters"]) == 5
                and not s["rebalancing"],
                timeout_s=READY_WITHIN_S,
            )
        yield network, nodes
    finally:
        nodes.stop()
        network.destroy()


def wait_healthy(nodes: Nodes, node_id: str) -> None:
    deadline = time.monotonic() + READY_WITHIN_S
    while True:
        try:
            with nodes.client(node_id) as client:
                client.health()
                return
        except LegionError:
            assert time.monotonic() < deadline, f"{node_id} did not start: see {nodes.directory / node_id / 'node.log'}"
            time.sleep(0.3)


def member_status(status: dict, node_id: str) -> str | None:
    return next((m["status"] for m in status["members"] if m["id"] == node_id), None)


def majority_keys(status: dict, count: int) -> list[str]:
    """Keys whose preference list has at least two majority-side replicas, so w=2 can be met on that side
    (Legion has no sloppy quorum: a key with two replicas across the cut cannot take w=2 writes there)."""
    keys = []
    for i in range(100_000):
        key = f"during:{i}"
        row = status["placement"][partition_of(key.encode(), status["partitions"])]
        if sum(1 for n in row if n in MAJORITY) >= 2:
            keys.append(key)
            if len(keys) == count:
                return keys
    raise AssertionError("no such keys")


def test_a_3_2_split_decides_on_the_majority_side_only_and_heals_into_one_state(partitioned_cluster):
    network, nodes = partitioned_cluster
    with nodes.client("n1") as client:
        before = client.status()
    keys = majority_keys(before, 400)
    failures: list[str] = []
    written: list[str] = []
    stop = threading.Event()

    def writer() -> None:
        with nodes.client(*MAJORITY) as client:
            kv = KVClient(client)
            for key in keys:
                if stop.is_set():
                    return
                try:
                    kv.put(key, key.encode(), content_type="text/plain", w=2)
                    written.append(key)
                except LegionError as exc:
                    failures.append(f"{key}: {exc}")
                time.sleep(0.02)

    thread = threading.Thread(target=writer)
    network.cut()
    thread.start()
    try:
        # The majority side: the removal of n5 (unreachable) is committed and acknowledged.
        with nodes.client("n2") as client:
            acknowledged = retry_until_answered(lambda: client.remove_node("n5"))
        assert member_status(acknowledged, "n5") in ("leaving", "removed")
        # The minority side: once it has timed the others out, a change there gets 503 no_quorum.
        with nodes.client("n4") as client:
            refusal = refused_for_lack_of_quorum(lambda: client.remove_node("n1"))
        assert "majority" in refusal.message and refusal.http_status == 503
    finally:
        thread.join(timeout=120)
        stop.set()
    assert not failures, f"w=2 writes on the majority side failed during the split: {failures[:5]}"
    assert written, "the writer wrote nothing"

    network.heal()
    deadline = time.monotonic() + READY_WITHIN_S
    while True:
        documents = {}
        for node_id in (*MAJORITY, *MINORITY):
            with nodes.client(node_id) as client:
                documents[node_id] = client.status()
        members = [documents[n] for n in (*MAJORITY, "n4")]
        states = {(d["epoch"], str(d["members"]), str(d["placement"])) for d in members}
        if len(states) == 1 and not members[0]["rebalancing"] and member_status(members[0], "n5") == "removed":
            break
        assert time.monotonic() < deadline, f"no convergence: {[(n, d['epoch']) for n, d in documents.items()]}"
        time.sleep(0.5)
    # n5 itself, removed, hears of it from its first gossip exchange after the heal: wait for it too.
    while member_status(documents["n5"], "n5") != "removed" and time.monotonic() < deadline:
        time.sleep(0.5)
        with nodes.client("n5") as client:
            documents["n5"] = client.status()
    for node_id, document in documents.items():
        assert member_status(document, "n5") == "removed", f"{node_id} lost the acknowledged removal of n5"
        assert member_status(document, "n1") == "up", f"{node_id} holds a change the minority side was refused"
    with nodes.client("n4") as client:
        kv = KVClient(client)
        assert all(kv.get(key).value == key.encode() for key in written)


def retry_until_answered(request) -> dict:
    deadline = time.monotonic() + READY_WITHIN_S
    while True:
        try:
            return request()
        except (Unavailable, DeadlineExceeded):
            assert time.monotonic() < deadline, "the majority side never acknowledged the change"
            time.sleep(0.3)


def refused_for_lack_of_quorum(request) -> NoQuorum:
    deadline = time.monotonic() + READY_WITHIN_S
    while True:
        try:
            answer = request()
        except NoQuorum as exc:
            return exc
        except (Unavailable, DeadlineExceeded):
            pass  # still forwarding to a claimant it has not yet timed out
        else:
            raise AssertionError(f"the minority side decided a membership change: {answer}")
        assert time.monotonic() < deadline, "the minority side never refused with no_quorum"
        time.sleep(0.3)
