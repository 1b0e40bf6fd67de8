"""The commands on a local cluster: up, down, add, remove, start and stop a node, the dashboard's URL.

I/O. Each command loads the cluster directory (``directory``), spawns or
signals processes (``processes``, ``services``) and waits for the cluster to
settle (``readiness``); ``legion cluster …`` and the test fixtures call these.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from legion.client import TOKEN_FILE_NAME
from legion.durability import DEFAULT as DEFAULT_DURABILITY, check_durability
from legion.errors import ConfigError
from legion.etcd_metadata import parse_metadata_url
from legion.options import check_options, to_argv
from legion.runtime import certificates
from legion.runtime.local_cluster import directory as cluster_directory, ports, processes, readiness, services as local_services
from legion.runtime.local_cluster.directory import load
from legion.runtime.local_cluster.directory import TLS_DIR
from legion.runtime.local_cluster.ports import HOST

Progress = Callable[[str], None]
# Ports tried for a new node whose chosen port another process took first.
PORT_ATTEMPTS = 3


def up(
    directory: Path,
    *,
    nodes: int = 3,
    partitions: int = 64,
    replicas: int = 3,
    base_port: int = 7400,
    timeout_s: float = 60,
    reset: bool = False,
    progress: Progress | None = None,
    options: Mapping[str, str] | None = None,
    durability: str = DEFAULT_DURABILITY,
    metrics_open: bool = False,
    tls: bool = False,
    metadata: str | None = None,
) -> dict[str, Any]:
    """Start a new cluster of ``nodes`` processes in ``directory``; its ``cluster.json`` once all are up,
    every partition is placed, and no node still holds a copy of one it gave away.

    ``base_port=0`` picks free ports. ``reset=True`` deletes the data of a
    stopped cluster in ``directory`` first; without it such a directory is
    refused. ``options`` go to every node (``--option``), and so does
    ``durability`` (``--durability``); the engines' local
    services are started first and add theirs. ``metrics_open`` serves ``/metrics``
    to loopback clients without the token (``--metrics-open``). ``tls`` makes a private
    CA in ``DIR/tls`` and a certificate per node: nodes serve HTTPS only and talk to
    each other with mutual TLS (``legion.runtime.tls``). ``metadata`` (``etcd://HOST:PORT[/PREFIX]``)
    keeps the cluster state in that etcd (``--metadata``) rather than by consensus among the nodes.
    If start-up fails, the nodes and services already started are stopped again.
    """
    directory = Path(directory).resolve()
    user_options = check_options(options or {})
    durability = check_durability(durability)
    if metadata is not None:
        parse_metadata_url(metadata)
    cluster_directory.check_new_cluster(directory, nodes=nodes, partitions=partitions, replicas=replicas, reset=reset)
    chosen_ports = ports.choose_ports(nodes, base_port)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        cluster_directory.write_token(directory)
        if tls:
            certificates.make_ca(directory / TLS_DIR)
    except OSError as exc:
        raise ConfigError(f"cannot create the cluster directory {directory}: {exc.strerror}") from None
    document: dict[str, Any] = {
        "partitions": partitions,
        "replicas": replicas,
        "durability": durability,
        "options": user_options,
        "services": [],
        "metrics_open": metrics_open,
        "tls": tls,
        "metadata": metadata,
        "nodes": [cluster_directory.node_entry(directory, f"n{index + 1}", port, tls=tls) for index, port in enumerate(chosen_ports)],
    }
    cluster_directory.save(directory, document)
    deadline = time.monotonic() + timeout_s
    try:
        # On a TLS cluster the local services (a Dask scheduler) get a certificate of their own from the CA,
        # through the same tls.* options a node hands its engines; the nodes get theirs from --tls-*.
        service_options = {**user_options, **cluster_directory.services_tls(directory).as_options()} if tls else user_options
        node_options = local_services.start_all(
            directory, document, service_options, deadline=deadline, save=lambda: cluster_directory.save(directory, document), progress=progress
        )
        document["options"] = {key: value for key, value in node_options.items() if key not in service_options or key in user_options}
        cluster_directory.save(directory, document)
        first, rest = document["nodes"][0], document["nodes"][1:]
        # All at once: a node spends about a second importing before it listens, and a joining
        # node retries until the first one answers.
        _start(directory, document, first, join=None, progress=progress)
        for node in rest:
            _start(directory, document, node, join=first["url"], progress=progress)
        if _ensure_listening(directory, document, first, join=None, progress=progress, deadline=deadline, timeout_s=timeout_s):
            # The others were told to join the address the first node could not take.
            processes.stop(rest, kill=True)
            for node in rest:
                _start(directory, document, node, join=first["url"], progress=progress)
        for node in rest:
            _ensure_listening(directory, document, node, join=first["url"], progress=progress, deadline=deadline, timeout_s=timeout_s)
        _report(progress, f"waiting for {nodes} nodes to be up and partitions placed")
        with cluster_directory.client(directory, document["nodes"]) as client:
            ids = [node["id"] for node in document["nodes"]]
            readiness.wait_settled(client, document["nodes"], readiness.all_up(ids), deadline, timeout_s, "the cluster to settle")
        # The first node owned every partition until the others joined: a cluster is ready once it
        # handed the rest over, not while that work still competes with the first writes.
        for node in document["nodes"]:
            readiness.wait_handed_over(directory, node, deadline, timeout_s)
    except BaseException:
        # Ctrl-C or a failed node: leave no orphan processes; the logs stay.
        down(directory)
        raise
    return load(directory)


def down(directory: Path) -> list[str]:
    """Stop every running node, then every local service, of the cluster in ``directory``.

    Returns the ids of the nodes and services (``engine/name``) that were running."""
    directory = Path(directory).resolve()
    document = load(directory)
    stopped = processes.stop(document["nodes"], kill=False)
    for node in document["nodes"]:
        node["pid"] = None
    cluster_directory.save(directory, document)
    # After the nodes: a node may talk to its services while it shuts down.
    stopped += local_services.stop_all(document)
    cluster_directory.save(directory, document)
    return stopped


def add_node(directory: Path, *, timeout_s: float = 60, progress: Progress | None = None) -> dict[str, Any]:
    """Start one more node, join it to the cluster, wait until it is up and rebalanced and (when every
    member runs) the old owners handed over what moved; its entry."""
    directory = Path(directory).resolve()
    document = load(directory)
    live = cluster_directory.running(document)
    if not live:
        raise ConfigError(
            f"no node of the cluster in {directory} is running: start one with `legion cluster start-node ID --cluster {directory}`"
        )
    node_id = f"n{max(cluster_directory.id_number(node['id']) for node in document['nodes']) + 1}"
    node = cluster_directory.node_entry(directory, node_id, ports.next_port(document), tls=bool(document.get("tls")))
    document["nodes"].append(node)
    deadline = time.monotonic() + timeout_s
    _ensure_services(directory, document, deadline, progress)
    _start(directory, document, node, join=live[0]["url"], progress=progress)
    _ensure_listening(directory, document, node, join=live[0]["url"], progress=progress, deadline=deadline, timeout_s=timeout_s)
    _report(progress, f"waiting for {node_id} to be up and partitions to move")
    with cluster_directory.client(directory, live + [node]) as client:
        readiness.wait_settled(client, [node], readiness.all_up([node_id]), deadline, timeout_s, f"{node_id} to join")
    stopped = [other["id"] for other in document["nodes"] if not other.get("removed") and other not in live and other is not node]
    if stopped:  # a stopped member may own some of what moved: those copies are handed over once it is back
        _report(progress, f"{', '.join(stopped)} stopped: the old owners hand over the rest once they are back")
    else:
        for other in live:
            readiness.wait_handed_over(directory, other, deadline, timeout_s)
    return node


def remove_node(
    directory: Path, node_id: str, *, timeout_s: float = 60, progress: Progress | None = None
) -> dict[str, Any]:
    """Remove ``node_id`` for good: hand off its partitions, wait until it handed over every copy
    it held, then stop it; the final status document."""
    directory = Path(directory).resolve()
    document = load(directory)
    node = cluster_directory.find(document, node_id)
    if node.get("removed"):
        raise ConfigError(f"node {node_id} was already removed from the cluster in {directory}")
    others = [other for other in cluster_directory.running(document) if other is not node]
    if not others:
        raise ConfigError(f"cannot remove {node_id}: no other node of the cluster in {directory} is running")
    deadline = time.monotonic() + timeout_s
    with cluster_directory.client(directory, others) as client:
        client.remove_node(node_id)
        _report(progress, f"waiting for {node_id}'s partitions to move to other nodes")

        def removed(status: dict[str, Any]) -> bool:
            member = readiness.member(status, node_id)
            return (member is None or member.get("status") == "removed") and not status.get("rebalancing")

        status = readiness.wait_settled(client, others, removed, deadline, timeout_s, f"{node_id} to be removed")
    if processes.is_running(node):  # a dead node hands nothing over: its copies went with it
        _report(progress, f"waiting for {node_id} to hand its copies over")
        readiness.wait_handed_over(directory, node, deadline, timeout_s)
    processes.stop([node], kill=False)
    node["pid"] = None
    node["removed"] = True
    cluster_directory.save(directory, document)
    return status


def start_node(directory: Path, node_id: str, *, timeout_s: float = 60) -> dict[str, Any]:
    """Restart a stopped or killed node with its own id, port and data; its entry once it answers."""
    directory = Path(directory).resolve()
    document = load(directory)
    node = cluster_directory.find(document, node_id)
    if node.get("removed"):
        raise ConfigError(
            f"node {node_id} was removed from the cluster; add a new one with `legion cluster add-node --cluster {directory}`"
        )
    if processes.is_running(node):
        raise ConfigError(f"node {node_id} is already running (pid {node['pid']})")
    port = ports.port_of(node["url"])
    if not ports.port_free(port):
        raise ConfigError(f"port {port} that node {node_id} listens on is taken by another process; stop it first")
    join = cluster_directory.seed_url(document, node) if node.get("join") else None
    deadline = time.monotonic() + timeout_s
    _ensure_services(directory, document, deadline, None)
    _start(directory, document, node, join=join, progress=None)
    readiness.wait_healthy(directory, node, deadline, timeout_s)
    return node


def stop_node(directory: Path, node_id: str, *, kill: bool = False) -> bool:
    """Stop one node (SIGTERM, or SIGKILL with ``kill=True`` to simulate a crash); whether it was running."""
    directory = Path(directory).resolve()
    document = load(directory)
    node = cluster_directory.find(document, node_id)
    stopped = processes.stop([node], kill=kill)
    node["pid"] = None
    cluster_directory.save(directory, document)
    return bool(stopped)


def dashboard_url(directory: Path) -> str:
    """The dashboard's URL on a running node of the cluster in ``directory`` (every node serves it)."""
    directory = Path(directory).resolve()
    live = cluster_directory.running(load(directory))
    if not live:
        raise ConfigError(f"no node of the cluster in {directory} is running: start it with `legion cluster start-node ID --cluster {directory}`")
    return live[0]["url"] + "/ui/"


def _start(
    directory: Path, document: dict[str, Any], node: dict[str, Any], *, join: str | None, progress: Progress | None
) -> None:
    """Spawn ``legion node start`` for ``node`` and record its pid in ``cluster.json`` at once."""
    data_dir = Path(node["data_dir"])
    data_dir.mkdir(parents=True, exist_ok=True)
    argv = [
        sys.executable, "-m", "cli", "node", "start",
        "--data-dir", str(data_dir),
        "--listen", f"{HOST}:{ports.port_of(node['url'])}",
        "--token-file", str(directory / TOKEN_FILE_NAME),
        "--node-id", node["id"],
        "--partitions", str(document["partitions"]),
        "--replicas", str(document["replicas"]),
    ]  # fmt: skip
    if join:
        argv += ["--join", join]
    argv += ["--durability", document.get("durability", DEFAULT_DURABILITY)]
    argv += to_argv(document.get("options", {}))
    if document.get("metrics_open"):
        argv.append("--metrics-open")
    if document.get("metadata"):
        argv += ["--metadata", document["metadata"]]
    if document.get("tls"):
        files = cluster_directory.node_tls(directory, node)
        argv += ["--tls-cert", str(files.cert), "--tls-key", str(files.key), "--tls-ca", str(files.ca)]
    child = processes.spawn(argv, log_path=Path(node["log"]))
    node["pid"] = child.pid
    node["join"] = node["join"] or join
    cluster_directory.save(directory, document)
    _report(progress, f"started {node['id']} (pid {child.pid}) on {node['url']}")


def _ensure_listening(
    directory: Path, document: dict[str, Any], node: dict[str, Any], *, join: str | None,
    progress: Progress | None, deadline: float, timeout_s: float,
) -> bool:
    """Wait until the started ``node`` answers; whether it had to move. If the port chosen for it was taken
    before it could bind it — free ports come from the kernel's ephemeral range, where clients' sockets
    live too — the node never joined: move it to another free port and start it again."""
    for attempt in range(1, PORT_ATTEMPTS + 1):
        try:
            readiness.wait_healthy(directory, node, deadline, timeout_s)
            return attempt > 1
        except ConfigError as exc:
            if "address already in use" not in str(exc) or attempt == PORT_ATTEMPTS:
                raise
        node["url"] = cluster_directory.node_entry(directory, node["id"], ports.free_ports(1)[0], tls=bool(document.get("tls")))["url"]
        _report(progress, f"port taken before {node['id']} could listen; trying {node['url']}")
        _start(directory, document, node, join=join, progress=progress)


def _ensure_services(directory: Path, document: dict[str, Any], deadline: float, progress: Progress | None) -> None:
    """Start the cluster's local services again if they are not running (the cluster was down)."""
    local_services.ensure_running(document, deadline=deadline, save=lambda: cluster_directory.save(directory, document), progress=progress)


def _report(progress: Progress | None, message: str) -> None:
    if progress is not None:
        progress(message)
