"""Local clusters: real node processes on loopback, for development, the demo and tests.

Does I/O: spawns and signals processes (through ``local_processes``), probes
ports, reads and writes the cluster directory. Nothing here is needed to run a production node; it is
what ``legion cluster up`` and the test fixtures use to get a cluster of real
``legion node start`` processes on one machine.

A cluster directory ``DIR`` holds::

    DIR/cluster.json        {"partitions", "replicas", "durability", "options", "services", "metrics_open", "tls",
                            "nodes": [node, ...]}
    DIR/token               the cluster token (mode 0600)
    DIR/tls/ca.pem, ca.key  the private CA of a ``--tls`` cluster (the key mode 0600)
    DIR/nodes/<id>/tls/     that node's certificate and key, signed by the CA
    DIR/nodes/<id>/         one node's data directory
    DIR/nodes/<id>/node.log that node's stdout and stderr
    DIR/services/<engine>/  the local services an engine asked for (``local_services``)

where each node is ``{"id", "url", "data_dir", "pid", "log", "join", "removed"}``:
``pid`` is null while the node is stopped, ``join`` the seed URL it was first
started with, ``removed`` true once it has left the cluster for good (its
entry stays so that its id is never reused). ``options`` are what every node
is started with (``--option KEY=VALUE``: the user's, plus what the local
services yield), kept so that restarted and added nodes get the same; so is
``durability``, every node's ``--durability`` (``legion.durability``).
``legion.client.Client.connect`` reads the same file.

Node processes run in their own session, so they outlive the command that
started them and a Ctrl-C in its terminal does not reach them. Two commands
must not change one cluster directory at the same time.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from legion.client import CA_FILE_NAME, CLUSTER_FILE_NAME, TOKEN_FILE_NAME, Client
from legion.durability import DEFAULT as DEFAULT_DURABILITY, check_durability
from legion.errors import ConfigError, DeadlineExceeded, NotFound, Unavailable
from legion.keyspace import check_partition_count
from legion.limits import REPLICAS_MAX
from legion.options import check_options, to_argv
from legion.runtime import local_processes as processes
from legion.runtime import certificates, local_services
from legion.runtime.tls import TlsFiles
from legion.runtime.local_processes import POLL_INTERVAL_S, is_running as _is_running

HOST = "127.0.0.1"
TLS_DIR = "tls"  # the cluster CA of a --tls cluster (its certificate is CA_FILE_NAME)
NODES_MAX = 64
# How often a long wait on the cluster checks that its node processes live.
LIVENESS_CHECK_INTERVAL_S = 1.0
CLIENT_TIMEOUT_S = 5.0

Progress = Callable[[str], None]


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
) -> dict[str, Any]:
    """Start a new cluster of ``nodes`` processes in ``directory``; its ``cluster.json`` once all are up.

    ``base_port=0`` picks free ports. ``reset=True`` deletes the data of a
    stopped cluster in ``directory`` first; without it such a directory is
    refused. ``options`` go to every node (``--option``), and so does
    ``durability`` (``--durability``); the engines' local
    services are started first and add theirs. ``metrics_open`` serves ``/metrics``
    to loopback clients without the token (``--metrics-open``). ``tls`` makes a private
    CA in ``DIR/tls`` and a certificate per node: nodes serve HTTPS only and talk to
    each other with mutual TLS (``legion.runtime.tls``). If start-up fails, the nodes
    and services already started are stopped again.
    """
    directory = Path(directory).resolve()
    user_options = check_options(options or {})
    durability = check_durability(durability)
    _check_new_cluster(directory, nodes=nodes, partitions=partitions, replicas=replicas, reset=reset)
    ports = _choose_ports(nodes, base_port)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        _write_token(directory)
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
        "nodes": [_node_entry(directory, f"n{index + 1}", port, tls=tls) for index, port in enumerate(ports)],
    }
    _save(directory, document)
    deadline = time.monotonic() + timeout_s
    try:
        # On a TLS cluster the local services (a Dask scheduler) get a certificate of their own from the CA,
        # through the same tls.* options a node hands its engines; the nodes get theirs from --tls-*.
        service_options = {**user_options, **_services_tls(directory).as_options()} if tls else user_options
        node_options = local_services.start_all(
            directory, document, service_options, deadline=deadline, save=lambda: _save(directory, document), progress=progress
        )
        document["options"] = {key: value for key, value in node_options.items() if key not in service_options or key in user_options}
        _save(directory, document)
        first, rest = document["nodes"][0], document["nodes"][1:]
        _start(directory, document, first, join=None, progress=progress)
        _wait_healthy(directory, first, deadline, timeout_s)
        for node in rest:
            _start(directory, document, node, join=first["url"], progress=progress)
        _report(progress, f"waiting for {nodes} nodes to be up and partitions placed")
        with _client(directory, document["nodes"]) as client:
            ids = [node["id"] for node in document["nodes"]]
            _wait_settled(client, document["nodes"], _all_up(ids), deadline, timeout_s, "the cluster to settle")
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
    _save(directory, document)
    # After the nodes: a node may talk to its services while it shuts down.
    stopped += local_services.stop_all(document)
    _save(directory, document)
    return stopped


def add_node(directory: Path, *, timeout_s: float = 60, progress: Progress | None = None) -> dict[str, Any]:
    """Start one more node, join it to the cluster, wait until it is up and rebalanced; its entry."""
    directory = Path(directory).resolve()
    document = load(directory)
    live = _running(document)
    if not live:
        raise ConfigError(
            f"no node of the cluster in {directory} is running: start one with `legion cluster start-node ID --cluster {directory}`"
        )
    node_id = f"n{max(_id_number(node['id']) for node in document['nodes']) + 1}"
    node = _node_entry(directory, node_id, _next_port(document), tls=bool(document.get("tls")))
    document["nodes"].append(node)
    deadline = time.monotonic() + timeout_s
    _ensure_services(directory, document, deadline, progress)
    _start(directory, document, node, join=live[0]["url"], progress=progress)
    _wait_healthy(directory, node, deadline, timeout_s)
    _report(progress, f"waiting for {node_id} to be up and partitions to move")
    with _client(directory, live + [node]) as client:
        _wait_settled(client, [node], _all_up([node_id]), deadline, timeout_s, f"{node_id} to join")
    return node


def remove_node(
    directory: Path, node_id: str, *, timeout_s: float = 60, progress: Progress | None = None
) -> dict[str, Any]:
    """Remove ``node_id`` for good: hand off its partitions, then stop it; the final status document."""
    directory = Path(directory).resolve()
    document = load(directory)
    node = _find(document, node_id)
    if node.get("removed"):
        raise ConfigError(f"node {node_id} was already removed from the cluster in {directory}")
    others = [other for other in _running(document) if other is not node]
    if not others:
        raise ConfigError(f"cannot remove {node_id}: no other node of the cluster in {directory} is running")
    deadline = time.monotonic() + timeout_s
    with _client(directory, others) as client:
        client.remove_node(node_id)
        _report(progress, f"waiting for {node_id}'s partitions to move to other nodes")

        def removed(status: dict[str, Any]) -> bool:
            member = _member(status, node_id)
            return (member is None or member.get("status") == "removed") and not status.get("rebalancing")

        status = _wait_settled(client, others, removed, deadline, timeout_s, f"{node_id} to be removed")
    processes.stop([node], kill=False)
    node["pid"] = None
    node["removed"] = True
    _save(directory, document)
    return status


def start_node(directory: Path, node_id: str, *, timeout_s: float = 60) -> dict[str, Any]:
    """Restart a stopped or killed node with its own id, port and data; its entry once it answers."""
    directory = Path(directory).resolve()
    document = load(directory)
    node = _find(document, node_id)
    if node.get("removed"):
        raise ConfigError(
            f"node {node_id} was removed from the cluster; add a new one with `legion cluster add-node --cluster {directory}`"
        )
    if _is_running(node):
        raise ConfigError(f"node {node_id} is already running (pid {node['pid']})")
    port = _port_of(node["url"])
    if not _port_free(port):
        raise ConfigError(f"port {port} that node {node_id} listens on is taken by another process; stop it first")
    join = _seed_url(document, node) if node.get("join") else None
    deadline = time.monotonic() + timeout_s
    _ensure_services(directory, document, deadline, None)
    _start(directory, document, node, join=join, progress=None)
    _wait_healthy(directory, node, deadline, timeout_s)
    return node


def stop_node(directory: Path, node_id: str, *, kill: bool = False) -> bool:
    """Stop one node (SIGTERM, or SIGKILL with ``kill=True`` to simulate a crash); whether it was running."""
    directory = Path(directory).resolve()
    document = load(directory)
    node = _find(document, node_id)
    stopped = processes.stop([node], kill=kill)
    node["pid"] = None
    _save(directory, document)
    return bool(stopped)


def dashboard_url(directory: Path) -> str:
    """The dashboard's URL on a running node of the cluster in ``directory`` (every node serves it)."""
    directory = Path(directory).resolve()
    live = _running(load(directory))
    if not live:
        raise ConfigError(f"no node of the cluster in {directory} is running: start it with `legion cluster start-node ID --cluster {directory}`")
    return live[0]["url"] + "/ui/"


# -- checks and files --------------------------------------------------------------


def _check_new_cluster(directory: Path, *, nodes: int, partitions: int, replicas: int, reset: bool) -> None:
    """Refuse bad sizes, a running cluster, and (unless ``reset``) a stopped cluster's data."""
    if not 1 <= nodes <= NODES_MAX:
        raise ConfigError(f"--nodes must be between 1 and {NODES_MAX}, got {nodes}")
    check_partition_count(partitions)
    if not 1 <= replicas <= REPLICAS_MAX:
        raise ConfigError(f"--replicas must be between 1 and {REPLICAS_MAX}, got {replicas}")
    cluster_file = directory / CLUSTER_FILE_NAME
    if cluster_file.exists() and any(_is_running(node) for node in load(directory)["nodes"]):
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


def _write_token(directory: Path) -> None:
    """A fresh token, readable by its owner only from the moment it exists."""
    path = directory / TOKEN_FILE_NAME
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        # O_CREAT's mode does not apply to a file that already existed.
        os.fchmod(descriptor, 0o600)
        os.write(descriptor, (secrets.token_urlsafe(32) + "\n").encode())
    finally:
        os.close(descriptor)


def _save(directory: Path, document: dict[str, Any]) -> None:
    """Replace ``cluster.json`` atomically, so a reader never sees half a file."""
    path = directory / CLUSTER_FILE_NAME
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(document, indent=2) + "\n")
    os.replace(temporary, path)


def _node_entry(directory: Path, node_id: str, port: int, *, tls: bool = False) -> dict[str, Any]:
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


def _find(document: dict[str, Any], node_id: str) -> dict[str, Any]:
    for node in document["nodes"]:
        if node["id"] == node_id:
            return node
    known = ", ".join(node["id"] for node in document["nodes"]) or "none"
    raise NotFound(f"no node {node_id!r} in this cluster (nodes: {known})")


def _running(document: dict[str, Any]) -> list[dict[str, Any]]:
    return [node for node in document["nodes"] if not node.get("removed") and _is_running(node)]


def _seed_url(document: dict[str, Any], node: dict[str, Any]) -> str:
    """The node's original seed if it still runs, else any running node, else the original seed."""
    live_urls = [other["url"] for other in _running(document) if other is not node]
    return node["join"] if node["join"] in live_urls or not live_urls else live_urls[0]


def _id_number(node_id: str) -> int:
    match = re.fullmatch(r"n(\d+)", node_id)
    return int(match.group(1)) if match else 0


# -- ports -----------------------------------------------------------------------


def _port_of(url: str) -> int:
    port = urlsplit(url).port
    assert port is not None, url
    return port


def _port_free(port: int) -> bool:
    """Whether a server could listen on ``HOST:port`` now (TIME_WAIT leftovers do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((HOST, port))
        except OSError:
            return False
    return True


def _free_ports(count: int) -> list[int]:
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


def _choose_ports(count: int, base_port: int) -> list[int]:
    if base_port == 0:
        return _free_ports(count)
    if not 1024 <= base_port <= 65535 - count + 1:
        raise ConfigError(f"--base-port must be 0 (pick free ports) or between 1024 and {65536 - count}, got {base_port}")
    ports = list(range(base_port, base_port + count))
    busy = [port for port in ports if not _port_free(port)]
    if busy:
        ports_are = "ports " + ", ".join(map(str, busy)) + " are" if len(busy) > 1 else f"port {busy[0]} is"
        raise ConfigError(
            f"{ports_are} already in use on {HOST}: choose others with --base-port N, or --base-port 0 for free ones"
        )
    return ports


def _next_port(document: dict[str, Any]) -> int:
    """One past the highest port in use when free (URLs stay tidy), else any free port."""
    candidate = max(_port_of(node["url"]) for node in document["nodes"]) + 1
    if candidate <= 65535 and _port_free(candidate):
        return candidate
    return _free_ports(1)[0]


# -- processes ---------------------------------------------------------------------


def _start(
    directory: Path, document: dict[str, Any], node: dict[str, Any], *, join: str | None, progress: Progress | None
) -> None:
    """Spawn ``legion node start`` for ``node`` and record its pid in ``cluster.json`` at once."""
    data_dir = Path(node["data_dir"])
    data_dir.mkdir(parents=True, exist_ok=True)
    argv = [
        sys.executable, "-m", "cli", "node", "start",
        "--data-dir", str(data_dir),
        "--listen", f"{HOST}:{_port_of(node['url'])}",
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
    if document.get("tls"):
        files = _node_tls(directory, node)
        argv += ["--tls-cert", str(files.cert), "--tls-key", str(files.key), "--tls-ca", str(files.ca)]
    child = processes.spawn(argv, log_path=Path(node["log"]))
    node["pid"] = child.pid
    node["join"] = node["join"] or join
    _save(directory, document)
    _report(progress, f"started {node['id']} (pid {child.pid}) on {node['url']}")


# -- waiting -------------------------------------------------------------------------


def _ensure_services(directory: Path, document: dict[str, Any], deadline: float, progress: Progress | None) -> None:
    """Start the cluster's local services again if they are not running (the cluster was down)."""
    local_services.ensure_running(document, deadline=deadline, save=lambda: _save(directory, document), progress=progress)


def _node_tls(directory: Path, node: dict[str, Any]) -> TlsFiles:
    """The node's certificate, signed by the cluster CA (made the first time the node starts)."""
    ca_dir = directory / TLS_DIR
    node_dir = Path(node["data_dir"]) / "tls"
    files = TlsFiles(node_dir / certificates.NODE_CERT_FILE, node_dir / certificates.NODE_KEY_FILE, ca_dir / certificates.CA_CERT_FILE)
    if files.cert.exists() and files.key.exists():
        return files
    return certificates.make_node_certificate(
        ca_dir / certificates.CA_CERT_FILE, ca_dir / certificates.CA_KEY_FILE, node_dir, node["id"], hosts=(HOST, "localhost")
    )


def _services_tls(directory: Path) -> TlsFiles:
    """The certificate of the cluster's local services, signed by the cluster CA."""
    return _node_tls(directory, {"id": "legion-services", "data_dir": str(directory / "services")})


def _client(directory: Path, nodes: Sequence[dict[str, Any]]) -> Client:
    token = (directory / TOKEN_FILE_NAME).read_text().strip()
    ca = directory / CA_FILE_NAME
    return Client([node["url"] for node in nodes], token, timeout_s=CLIENT_TIMEOUT_S, ca=ca if ca.is_file() else None)


def _wait_healthy(directory: Path, node: dict[str, Any], deadline: float, timeout_s: float) -> None:
    """Wait until the node answers ``/v1/health``; ConfigError with its log if it dies first."""
    with _client(directory, [node]) as client:
        while True:
            if not _is_running(node):
                raise processes.exited_error(node, f"node {node['id']}")
            try:
                client.health()
                return
            except Unavailable:
                pass
            if time.monotonic() >= deadline:
                raise DeadlineExceeded(
                    f"node {node['id']} did not answer at {node['url']} within {timeout_s:g}s; see {node['log']}"
                )
            time.sleep(POLL_INTERVAL_S)


def _wait_settled(
    client: Client,
    watched: Sequence[dict[str, Any]],
    predicate: Callable[[dict[str, Any]], bool],
    deadline: float,
    timeout_s: float,
    what: str,
) -> dict[str, Any]:
    """``client.wait_for(predicate)`` in short slices, failing fast if a watched node dies."""
    while True:
        for node in watched:
            if not _is_running(node):
                raise processes.exited_error(node, f"node {node['id']}")
        remaining = max(0.0, deadline - time.monotonic())
        try:
            return client.wait_for(predicate, timeout_s=min(remaining, LIVENESS_CHECK_INTERVAL_S))
        except DeadlineExceeded as exc:
            if time.monotonic() >= deadline:
                logs = Path(watched[0]["log"]).parent.parent if watched else "the node directories"
                last = exc.details.get("last_status", "none")
                raise DeadlineExceeded(
                    f"timed out after {timeout_s:g}s waiting for {what}; last status: {last}; node logs are under {logs}"
                ) from None


def _all_up(node_ids: Sequence[str]) -> Callable[[dict[str, Any]], bool]:
    """Predicate: every named node is an ``up`` member and a voter, and no rebalance is in flight.

    Members become voters one commit at a time after they are up (``legion.consensus``): until
    they all vote, losing one node may leave the cluster unable to decide anything."""

    def check(status: dict[str, Any]) -> bool:
        members = [_member(status, node_id) for node_id in node_ids]
        voting = set(status.get("voters", ()))
        return (
            all(m is not None and m.get("status") == "up" for m in members)
            and voting.issuperset(node_ids)
            and not status.get("rebalancing")
        )

    return check


def _member(status: dict[str, Any], node_id: str) -> dict[str, Any] | None:
    for member in status.get("members", ()):
        if member.get("id") == node_id:
            return member
    return None


def _report(progress: Progress | None, message: str) -> None:
    if progress is not None:
        progress(message)
