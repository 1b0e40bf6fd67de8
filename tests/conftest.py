"""Shared fixtures: real local clusters of node processes, and the CLI as a subprocess.

``local_cluster`` starts a fresh cluster (3 nodes by default; change it with
``@pytest.mark.cluster(nodes=5, partitions=16, replicas=3)``) in the test's
temporary directory and always stops it afterwards, even when the test fails.
``legion_cli`` runs ``python -m cli …`` with a clean environment and a
timeout, so a hung command fails the test instead of hanging the run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from legion.testing.cluster import CLUSTER_START_TIMEOUT_S, LocalCluster, running_cluster

__all__ = ["CLUSTER_START_TIMEOUT_S", "LocalCluster"]
pytest_plugins = ["legion.testing.pytest_plugin"]  # legion_cluster: a cluster serving given engines

CLI_TIMEOUT_S = 120.0


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "cluster(nodes=3, partitions=64, replicas=3, metrics_open=False): the shape of the local_cluster fixture's cluster"
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
