"""A local cluster of real node processes for tests, with the engines under test installed.

Does I/O: starts and kills processes (through ``legion.runtime.local_cluster``),
writes a small ``.dist-info`` for engines that are not installed, and sets
``PYTHONPATH`` while the cluster runs. Legion's own integration tests use it
(``tests/conftest.py``), and so do the tests ``legion engine new`` generates.

``running_cluster(directory, engines=[MyEngine])`` starts the cluster and
stops it on the way out, even when the test fails. An engine class that this
process does not find under the ``legion.engines`` entry point (a class in a
test module, a package not yet ``pip install``-ed) is registered for the node
processes: a ``.dist-info`` naming it goes on their ``PYTHONPATH``, with the
directory its module is imported from. Define such a class at module level.

``LocalCluster`` is the handle a test gets: the cluster's directory, a client
for all its nodes, one for a single node (``node_client``), and ``kill``
(``SIGKILL``, as a crash) and ``restart`` of one node.

The pytest fixture ``legion_cluster`` (``legion.testing.pytest_plugin``)
wraps it: ``legion_cluster(MyEngine, nodes=3)`` in a test.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from legion.client import TOKEN_FILE_NAME, Client
from legion.durability import DEFAULT as DEFAULT_DURABILITY
from legion.engine import ENTRY_POINT_GROUP, Engine, load_engines
from legion.errors import ConfigError, Unavailable
from legion.node_figures import sample_sum
from legion.runtime import local_cluster

CLUSTER_START_TIMEOUT_S = 60.0
PORT_FREE_TIMEOUT_S = 30.0
SERVED_TIMEOUT_S = 60.0
POLL_INTERVAL_S = 0.1


@dataclass
class LocalCluster:
    """A running local cluster: its directory, a client for all its nodes, and handles on each node."""

    directory: Path
    client: Client

    @property
    def token(self) -> str:
        return (self.directory / TOKEN_FILE_NAME).read_text().strip()

    def nodes(self) -> list[dict[str, Any]]:
        """The node entries of ``cluster.json`` as they are now (pids change on restart)."""
        return local_cluster.load(self.directory)["nodes"]

    def node(self, node_id: str) -> dict[str, Any]:
        return next(node for node in self.nodes() if node["id"] == node_id)

    def node_client(self, node_id: str, *, timeout_s: float | None = None) -> Client:
        """A client bound to one node only (the caller closes it)."""
        options = {} if timeout_s is None else {"timeout_s": timeout_s}
        return Client([self.node(node_id)["url"]], self.token, **options)

    def kill(self, node_id: str) -> None:
        """``kill -9`` of one node process, as a crash: nothing of it runs a line more."""
        pid = self.node(node_id)["pid"]
        if pid:
            os.kill(pid, signal.SIGKILL)
        local_cluster.stop_node(self.directory, node_id, kill=True)  # reaps it and records it stopped

    def restart(self, node_id: str) -> None:
        """Start a stopped or killed node again as itself (same id, port and data); returns once it answers."""
        wait_until_listenable(self.node(node_id)["url"])  # a killed node's sockets may linger a moment
        local_cluster.start_node(self.directory, node_id)


@contextmanager
def running_cluster(
    directory: Path,
    *,
    engines: Sequence[type[Engine]] = (),
    nodes: int = 3,
    partitions: int = 16,
    replicas: int = 3,
    options: Mapping[str, str] | None = None,
    timeout_s: float = CLUSTER_START_TIMEOUT_S,
    durability: str = DEFAULT_DURABILITY,
    metrics_open: bool = False,
    metadata: str | None = None,
) -> Iterator[LocalCluster]:
    """A fresh cluster of real node processes on loopback, serving ``engines``; stopped on the way out.

    ``metrics_open`` serves ``/metrics`` to loopback scrapers without the token (``legion cluster up --metrics-open``);
    ``metadata`` keeps the cluster state in etcd (``etcd://HOST:PORT[/PREFIX]``, ``--metadata``)."""
    directory = Path(directory)
    with _engines_installed(directory.parent / f"{directory.name}-site", engines):
        local_cluster.up(
            directory, nodes=nodes, partitions=partitions, replicas=replicas, base_port=0, timeout_s=timeout_s,
            options=options, durability=durability, metrics_open=metrics_open, metadata=metadata,
        )  # fmt: skip
        client = Client.connect(directory)
        try:
            yield LocalCluster(directory=directory, client=client)
        finally:
            client.close()
            local_cluster.down(directory)


def node_metric(directory: Path, node_id: str, sample: str) -> float:
    """The sum of ``sample`` (a sample name, e.g. ``legion_handoff_snapshots_total``) over one node's ``/metrics``."""
    node = next(n for n in local_cluster.load(directory)["nodes"] if n["id"] == node_id)
    with Client.connect(directory) as client:
        return sample_sum(client.for_node(node["url"]).metrics(), sample)


def read_when_served(client: Client, method: str, path: str, **request: Any) -> Any:
    """``client.request(...)`` retried while the cluster answers ``Unavailable`` (restarted replicas re-syncing)."""
    deadline = time.monotonic() + SERVED_TIMEOUT_S
    while True:
        try:
            return client.request(method, path, **request)
        except Unavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(POLL_INTERVAL_S * 2)


def wait_until_listenable(url: str, timeout_s: float = PORT_FREE_TIMEOUT_S) -> None:
    """Wait until a server could listen on ``url``'s port again (TIME_WAIT leftovers do not count)."""
    deadline = time.monotonic() + timeout_s
    address = urlsplit(url)
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((address.hostname, address.port))
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
        time.sleep(POLL_INTERVAL_S)


@contextmanager
def _engines_installed(site: Path, engines: Sequence[type[Engine]]) -> Iterator[None]:
    """Make ``engines`` visible to node processes started inside the block (and to this process)."""
    installed = load_engines()
    missing = [cls for cls in engines if installed.get(cls.name) is not cls]
    if not missing:
        yield
        return
    roots = [_import_root(cls) for cls in missing]
    info = site / "legion_testing_engines-0.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: legion-testing-engines\nVersion: 0\n")
    lines = [f"{cls.name} = {cls.__module__}:{cls.__qualname__}" for cls in missing]
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n" + "\n".join(lines) + "\n")
    paths = [str(site), *dict.fromkeys(str(root) for root in roots)]
    saved_env, saved_path = os.environ.get("PYTHONPATH"), list(sys.path)
    os.environ["PYTHONPATH"] = os.pathsep.join(paths + ([saved_env] if saved_env else []))
    sys.path[:0] = paths  # local_cluster.up asks every engine of this process for its local services
    try:
        yield
    finally:
        sys.path[:] = saved_path
        if saved_env is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved_env


def _import_root(cls: type[Engine]) -> Path:
    """The directory ``cls``'s module is imported from (the one holding its top-level package)."""
    module = sys.modules.get(cls.__module__)
    source = getattr(module, "__file__", None)
    if cls.__module__ == "__main__" or "<locals>" in cls.__qualname__ or source is None:
        raise ConfigError(f"engine class {cls.__qualname__} must be defined at module level of an importable module")
    path = Path(source).resolve()
    depth = cls.__module__.count(".") + (1 if path.name == "__init__.py" else 0)
    return path.parents[depth]
