"""The cluster directory of a local cluster: ``cluster.json``, the token, the TLS files, a client.

I/O (files). What ``legion.runtime.local_cluster`` documents as the directory
layout is read and written here, and only here: ``cluster.json`` is replaced
atomically, the token is created owner-readable, and node certificates are
made from the cluster CA the first time a node needs one.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from legion.client import CA_FILE_NAME, CLUSTER_FILE_NAME, TOKEN_FILE_NAME, Client
from legion.errors import ConfigError, NotFound
from legion.keyspace import check_partition_count
from legion.limits import REPLICAS_MAX
from legion.runtime import certificates
from legion.runtime.local_cluster import processes
from legion.runtime.local_cluster.ports import HOST
from legion.runtime.tls import TlsFiles

TLS_DIR = "tls"  # the cluster CA of a --tls cluster (its certificate is CA_FILE_NAME)
NODES_MAX = 64
CLIENT_TIMEOUT_S = 5.0


def load(directory: Path) -> dict[str, Any]:
    """The cluster directory's ``cluster.json``; ConfigError if there is none."""
    path = Path(directory) / CLUSTER_FILE_NAME
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"no cluster in {directory}: run `legion cluster up --cluster {directory}`") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    if not isinstance(document, dict) or not isinstance(document.get("nodes"), list):
        raise ConfigError(f"{path} is not a cluster file (no 'nodes' list)")
    return document


def check_new_cluster(directory: Path, *, nodes: int, partitions: int, replicas: int, reset: bool) -> None:
    """Refuse bad sizes, a running cluster, and (unless ``reset``) a stopped cluster's data."""
    if not 1 <= nodes <= NODES_MAX:
        raise ConfigError(f"--nodes must be between 1 and {NODES_MAX}, got {nodes}")
    check_partition_count(partitions)
    if not 1 <= replicas <= REPLICAS_MAX:
        raise ConfigError(f"--replicas must be between 1 and {REPLICAS_MAX}, got {replicas}")
    cluster_file = directory / CLUSTER_FILE_NAME
    if cluster_file.exists() and any(processes.is_running(node) for node in load(directory)["nodes"]):
        raise ConfigError(f"a cluster is already running in {directory}; `legion cluster down --cluster {directory}` first")
    stale = [path for path in (cluster_file, directory / "nodes") if path.exists()]
    if stale and not reset:
        raise ConfigError(
            f"{directory} holds a stopped cluster: restart its nodes with "
            f"`legion cluster start-node ID --cluster {directory}`, or pass --reset to delete its data"
        )
    for path in stale:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def write_token(directory: Path) -> None:
    """A fresh token, readable by its owner only from the moment it exists."""
    path = directory / TOKEN_FILE_NAME
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        # O_CREAT's mode does not apply to a file that already existed.
        os.fchmod(descriptor, 0o600)
        os.write(descriptor, (secrets.token_urlsafe(32) + "\n").encode())
    finally:
        os.close(descriptor)


def save(directory: Path, document: dict[str, Any]) -> None:
    """Replace ``cluster.json`` atomically, so a reader never sees half a file."""
    path = directory / CLUSTER_FILE_NAME
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(document, indent=2) + "\n")
    os.replace(temporary, path)


def node_entry(directory: Path, node_id: str, port: int, *, tls: bool = False) -> dict[str, Any]:
    data_dir = directory / "nodes" / node_id
    return {
        "id": node_id,
        "url": f"{'https' if tls else 'http'}://{HOST}:{port}",
        "data_dir": str(data_dir),
        "pid": None,
        "log": str(data_dir / "node.log"),
        "join": None,
        "removed": False,
    }


def find(document: dict[str, Any], node_id: str) -> dict[str, Any]:
    for node in document["nodes"]:
        if node["id"] == node_id:
            return node
    known = ", ".join(node["id"] for node in document["nodes"]) or "none"
    raise NotFound(f"no node {node_id!r} in this cluster (nodes: {known})")


def running(document: dict[str, Any]) -> list[dict[str, Any]]:
    return [node for node in document["nodes"] if not node.get("removed") and processes.is_running(node)]


def seed_url(document: dict[str, Any], node: dict[str, Any]) -> str:
    """The node's original seed if it still runs, else any running node, else the original seed."""
    live_urls = [other["url"] for other in running(document) if other is not node]
    return node["join"] if node["join"] in live_urls or not live_urls else live_urls[0]


def id_number(node_id: str) -> int:
    match = re.fullmatch(r"n(\d+)", node_id)
    return int(match.group(1)) if match else 0


def node_tls(directory: Path, node: dict[str, Any]) -> TlsFiles:
    """The node's certificate, signed by the cluster CA (made the first time the node starts)."""
    ca_dir = directory / TLS_DIR
    node_dir = Path(node["data_dir"]) / "tls"
    files = TlsFiles(node_dir / certificates.NODE_CERT_FILE, node_dir / certificates.NODE_KEY_FILE, ca_dir / certificates.CA_CERT_FILE)
    if files.cert.exists() and files.key.exists():
        return files
    return certificates.make_node_certificate(
        ca_dir / certificates.CA_CERT_FILE, ca_dir / certificates.CA_KEY_FILE, node_dir, node["id"], hosts=(HOST, "localhost")
    )


def services_tls(directory: Path) -> TlsFiles:
    """The certificate of the cluster's local services, signed by the cluster CA."""
    return node_tls(directory, {"id": "legion-services", "data_dir": str(directory / "services")})


def client(directory: Path, nodes: Sequence[dict[str, Any]]) -> Client:
    token = (directory / TOKEN_FILE_NAME).read_text().strip()
    ca = directory / CA_FILE_NAME
    return Client([node["url"] for node in nodes], token, timeout_s=CLIENT_TIMEOUT_S, ca=ca if ca.is_file() else None)
