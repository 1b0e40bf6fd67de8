"""Shared fixtures: real local clusters of node processes, and the CLI as a subprocess.

``local_cluster`` starts a fresh cluster (3 nodes by default; change it with
``@pytest.mark.cluster(nodes=5, partitions=16, replicas=3)``) in the test's
temporary directory and always stops it afterwards, even when the test fails.
It runs no Dask (``--option mr.scheduler=off``): a Dask scheduler and a worker
per node cost about 1.6 s and 3.5 CPU-seconds per cluster, which tests that
run no map/reduce job should not pay; ``cluster(dask=True)`` gives them.
``legion_cli`` runs ``python -m cli …`` with a clean environment and a
timeout, so a hung command fails the test instead of hanging the run.
``etcd_server`` runs a real one-member etcd (Debian's ``etcd-server``, which
CI installs) on free loopback ports in the test's temporary directory, for
``--metadata etcd://``; without the ``etcd`` binary those tests fail, saying
how to install it (``make test`` does).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from legion import etcd_metadata
from legion.runtime.local_cluster.ports import HOST, free_ports
from legion.testing.cluster import CLUSTER_START_TIMEOUT_S, LocalCluster, running_cluster

__all__ = ["CLUSTER_START_TIMEOUT_S", "LocalCluster"]
pytest_plugins = ["legion.testing.pytest_plugin"]  # legion_cluster: a cluster serving given engines

CLI_TIMEOUT_S = 120.0
# Node options for a cluster that runs no map/reduce job: no Dask scheduler, no Dask workers.
NO_DASK = {"mr.scheduler": "off"}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "cluster(nodes=3, partitions=64, replicas=3, metrics_open=False, dask=False): the shape of the local_cluster fixture's cluster"
    )


@pytest.fixture
def no_background_anti_entropy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nodes started after this (list it before ``local_cluster``) run no background anti-entropy rounds:
    for tests that keep a divergence until ``repair``, or count every operation and peer request."""
    monkeypatch.setenv("LEGION_ANTI_ENTROPY_INTERVAL_MS", "0")


@pytest.fixture
def fast_anti_entropy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nodes started after this (list it before ``local_cluster``) run a background round every second."""
    monkeypatch.setenv("LEGION_ANTI_ENTROPY_INTERVAL_MS", "1000")


@pytest.fixture
def local_cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LocalCluster]:
    """A fresh cluster of real node processes on loopback, stopped after the test."""
    marker = request.node.get_closest_marker("cluster")
    shape = dict(marker.kwargs) if marker else {}
    with running_cluster(
        tmp_path / "cluster",
        nodes=shape.get("nodes", 3),
        partitions=shape.get("partitions", 64),
        replicas=shape.get("replicas", 3),
        timeout_s=CLUSTER_START_TIMEOUT_S,
        metrics_open=shape.get("metrics_open", False),
        options=None if shape.get("dask", False) else NO_DASK,
    ) as cluster:
        yield cluster


CliRunner = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="session")
def legion_cli(tmp_path_factory: pytest.TempPathFactory) -> CliRunner:
    """``run(*args, input=None, cwd=None, env=None)``: the ``legion`` command as a real subprocess.

    Session-scoped so module-scoped fixtures can use it; without ``cwd`` it
    runs in an empty directory of its own (so no stray ``./.legion`` is found).
    """
    default_cwd = tmp_path_factory.mktemp("cli")
    environment = {name: value for name, value in os.environ.items() if not name.startswith("LEGION_")}
    # A wide, colourless terminal: assertions read plain lines.
    environment.update({"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"})

    def run(
        *args: str, input: str | None = None, cwd: Path | None = None, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cli", *args],
            input=input,
            capture_output=True,
            text=True,
            cwd=cwd or default_cwd,
            env={**environment, **(env or {})},
            timeout=CLI_TIMEOUT_S,
        )

    return run


ETCD_START_TIMEOUT_S = 20.0
ETCD_START_ATTEMPTS = 3


@dataclass
class EtcdServer:
    """A running etcd: ``url`` is what ``--metadata`` takes (add a prefix for a cluster of its own)."""

    process: subprocess.Popen[bytes]
    client_port: int
    log: Path

    @property
    def url(self) -> str:
        return f"etcd://{HOST}:{self.client_port}"

    def pause(self) -> None:
        """``kill -STOP``: etcd answers nothing until ``resume``."""
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.process.pid, signal.SIGCONT)

    def post(self, path: str, body: dict[str, Any]) -> Any:
        """A request to etcd's v3 JSON gateway (``kv/range``, ``kv/txn``, ...)."""
        request = urllib.request.Request(
            f"http://{HOST}:{self.client_port}/v3/{path}", data=json.dumps(body).encode(), method="POST"
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read())

    def state(self, url: str | None = None) -> etcd_metadata.Read | None:
        """The cluster state etcd holds for ``url`` (default: ``self.url``, key ``/legion/state``)."""
        target = etcd_metadata.parse_metadata_url(url or self.url)
        return etcd_metadata.read_from_range(self.post("kv/range", etcd_metadata.range_request(target)), target)


def _start_etcd(directory: Path) -> EtcdServer:
    binary = shutil.which("etcd")
    if binary is None:
        pytest.fail("etcd is not installed: `apt-get install etcd-server` (`make test` installs it)")
    for attempt in range(1, ETCD_START_ATTEMPTS + 1):
        client_port, peer_port = free_ports(2)
        client, peer = f"http://{HOST}:{client_port}", f"http://{HOST}:{peer_port}"
        log = directory / f"etcd-{attempt}.log"
        argv = [
            binary, "--name", "test", "--data-dir", str(directory / f"etcd-{attempt}"),
            "--listen-client-urls", client, "--advertise-client-urls", client,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"test={peer}", "--logger", "zap", "--log-level", "warn",
        ]  # fmt: skip
        with open(log, "wb") as out:
            process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        server = EtcdServer(process, client_port, log)
        deadline = time.monotonic() + ETCD_START_TIMEOUT_S
        while process.poll() is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{client}/health", timeout=1) as response:
                    if json.loads(response.read()).get("health") == "true":
                        return server
            except (OSError, ValueError):
                pass
            time.sleep(0.1)
        _stop_etcd(server)
        if "address already in use" not in log.read_text():
            break  # not a port taken between choosing and binding it: trying again will not help
    raise RuntimeError(f"etcd did not start; its log:\n{log.read_text()[-3000:]}")


def _stop_etcd(server: EtcdServer) -> None:
    if server.process.poll() is None:
        server.resume()  # a paused etcd takes no SIGTERM
        server.process.terminate()
        try:
            server.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait(timeout=10)


@contextmanager
def running_etcd(directory: Path) -> Iterator[EtcdServer]:
    """A fresh one-member etcd on free loopback ports, data in ``directory``, stopped on the way out
    (the test fails if there is no etcd)."""
    server = _start_etcd(directory)
    try:
        yield server
    finally:
        _stop_etcd(server)


@pytest.fixture
def etcd_server(tmp_path: Path) -> Iterator[EtcdServer]:
    """A fresh etcd for one test (``running_etcd``)."""
    with running_etcd(tmp_path) as server:
        yield server
