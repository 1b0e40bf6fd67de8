"""``legion cluster up`` and ``add-node`` when a port chosen is taken before the node binds it.

Free ports come from the kernel's ephemeral range, so a client socket can
take one between the probe and the node's bind (seen with 32 writers running
during a join). The new node has not joined then: add-node tries another port.
``up`` starts every node at once, the others joining the first: when the first
node moves, they are started again to join it at its new port.
"""

from __future__ import annotations

import http.server
import socket
import threading
from pathlib import Path

import pytest

from legion.client import Client
from legion.runtime import local_cluster as cluster_processes
from legion.runtime.local_cluster import ports
from tests.conftest import NO_DASK


def squatted_port() -> socket.socket:
    """A listening socket on a free loopback port: that port is taken."""
    squatter = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    squatter.bind((ports.HOST, 0))
    squatter.listen()
    return squatter


class _NotFound(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.send_error(404)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - http.server's signature
        pass


def test_up_moves_a_node_whose_port_another_http_server_took_before_it_binds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # Seen when a Dask process's HTTP server (bound to port 0) got the port chosen for n1 and
    # answered its health check with 404: up failed with "no such resource".
    directory = tmp_path / "cluster"
    chosen = ports.choose_ports
    messages: list[str] = []
    server = http.server.ThreadingHTTPServer((ports.HOST, 0), _NotFound)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        taken = server.server_address[1]
        monkeypatch.setattr(ports, "choose_ports", lambda count, base: [taken, *chosen(count - 1, base)])
        cluster_processes.up(directory, nodes=2, partitions=8, base_port=0, timeout_s=120, progress=messages.append, options=NO_DASK)
        assert ports.port_of(cluster_processes.load(directory)["nodes"][0]["url"]) != taken
        assert any("port taken before n1" in m for m in messages)
        with Client.connect(directory) as client:
            assert {m["id"]: m["status"] for m in client.status()["members"]} == {"n1": "up", "n2": "up"}
    finally:
        server.shutdown()
        server.server_close()
        cluster_processes.down(directory)


def test_up_and_add_node_move_a_node_whose_port_is_taken_before_it_binds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    directory = tmp_path / "cluster"
    chosen = ports.choose_ports
    messages: list[str] = []
    try:
        with squatted_port() as squatter:
            taken = squatter.getsockname()[1]
            # The others start at once, told to join the first node at the port it then cannot take.
            monkeypatch.setattr(ports, "choose_ports", lambda count, base: [taken, *chosen(count - 1, base)])
            cluster_processes.up(
                directory, nodes=3, partitions=16, base_port=0, timeout_s=120, progress=messages.append, options=NO_DASK
            )
        assert ports.port_of(cluster_processes.load(directory)["nodes"][0]["url"]) != taken
        assert any("port taken before n1" in m for m in messages)
        with Client.connect(directory) as client:
            assert {m["id"]: m["status"] for m in client.status()["members"]} == {"n1": "up", "n2": "up", "n3": "up"}

        with squatted_port() as squatter:
            taken = squatter.getsockname()[1]
            monkeypatch.setattr(ports, "next_port", lambda document: taken)  # chosen, then taken before the bind
            node = cluster_processes.add_node(directory, timeout_s=120, progress=messages.append)
        assert ports.port_of(node["url"]) != taken
        assert any("port taken before n4" in m for m in messages)
        with Client.connect(directory) as client:
            assert {m["id"]: m["status"] for m in client.status()["members"]}["n4"] == "up"
    finally:
        cluster_processes.down(directory)
