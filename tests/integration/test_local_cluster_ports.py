"""``legion cluster add-node`` when the port it chose is taken before the new node binds it.

Free ports come from the kernel's ephemeral range, so a client socket can
take one between the probe and the node's bind (seen with 32 writers running
during a join). The new node has not joined then: add-node tries another port.
"""

from __future__ import annotations

import socket

import pytest

from legion.runtime import local_cluster as cluster_processes
from legion.runtime.local_cluster import ports
from tests.conftest import LocalCluster


def test_add_node_moves_to_another_port_when_its_port_is_taken_first(local_cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind((ports.HOST, 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        monkeypatch.setattr(ports, "next_port", lambda document: taken)  # chosen, then taken before the bind
        messages: list[str] = []
        node = cluster_processes.add_node(local_cluster.directory, timeout_s=120, progress=messages.append)
    assert ports.port_of(node["url"]) != taken
    assert any("port taken" in m for m in messages)
    status = local_cluster.client.status()
    assert {m["id"]: m["status"] for m in status["members"]}["n4"] == "up"
