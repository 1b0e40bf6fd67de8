"""Ports of a local cluster: which are free on loopback, and which a new node gets.

I/O (binds probe sockets). ``base_port=0`` everywhere means "any free port".
"""

from __future__ import annotations

import socket
from typing import Any
from urllib.parse import urlsplit

from legion.errors import ConfigError

HOST = "127.0.0.1"


def port_of(url: str) -> int:
    port = urlsplit(url).port
    assert port is not None, url
    return port


def port_free(port: int) -> bool:
    """Whether a server could listen on ``HOST:port`` now (TIME_WAIT leftovers do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((HOST, port))
        except OSError:
            return False
    return True


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports the kernel considers free right now."""
    probes: list[socket.socket] = []
    try:
        for _ in range(count):
            probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            probes.append(probe)
            probe.bind((HOST, 0))
        return [probe.getsockname()[1] for probe in probes]
    finally:
        for probe in probes:
            probe.close()


def choose_ports(count: int, base_port: int) -> list[int]:
    if base_port == 0:
        return free_ports(count)
    if not 1024 <= base_port <= 65535 - count + 1:
        raise ConfigError(f"--base-port must be 0 (pick free ports) or between 1024 and {65536 - count}, got {base_port}")
    ports = list(range(base_port, base_port + count))
    busy = [port for port in ports if not port_free(port)]
    if busy:
        ports_are = "ports " + ", ".join(map(str, busy)) + " are" if len(busy) > 1 else f"port {busy[0]} is"
        raise ConfigError(
            f"{ports_are} already in use on {HOST}: choose others with --base-port N, or --base-port 0 for free ones"
        )
    return ports


def next_port(document: dict[str, Any]) -> int:
    """One past the highest port in use when free (URLs stay tidy), else any free port."""
    candidate = max(port_of(node["url"]) for node in document["nodes"]) + 1
    if candidate <= 65535 and port_free(candidate):
        return candidate
    return free_ports(1)[0]
