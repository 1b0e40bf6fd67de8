"""``legion engine new counters`` writes a package that installs, passes its own tests and runs on a cluster.

As a new engine author would: generate the package outside the repository,
``pip install -e`` it into this environment (no build isolation: the build
backend is already here, no index is needed) and run its generated tests.
One of them starts a 3-node cluster of real node processes — which find the
installed engine through its entry point — increments through every node
and reads the same total through every node, across a ``kill -9`` of one
node and its restart. Then this test runs a cluster of its own and drives it
with the generated ``legion counters`` commands. The package is uninstalled
at the end, so no other test sees the engine.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from legion.engine import load_engines
from legion.testing.cluster import running_cluster
from tests.conftest import NO_DASK, CliRunner

PIP_TIMEOUT_S = 300
GENERATED_TESTS_TIMEOUT_S = 300
DISTRIBUTION = "legion-counters"


def pip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pip", *args], capture_output=True, text=True, timeout=PIP_TIMEOUT_S
    )


@pytest.fixture
def generated(tmp_path: Path, legion_cli: CliRunner, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The generated package, installed editable for the duration of the test."""
    package = tmp_path / "legion-counters"
    made = legion_cli("engine", "new", "counters", "--dir", str(package))
    assert made.returncode == 0, made.stderr
    assert "pip install -e" in made.stdout
    installed = pip("install", "--no-deps", "--no-build-isolation", "--quiet", "-e", str(package))
    assert installed.returncode == 0, installed.stderr
    # An editable install takes effect in new processes (nodes, the CLI); this one imports it from its directory.
    monkeypatch.syspath_prepend(str(package))
    try:
        yield package
    finally:
        removed = pip("uninstall", "--yes", DISTRIBUTION)
        for name in [module for module in sys.modules if module.split(".")[0] == "legion_counters"]:
            del sys.modules[name]
        importlib.invalidate_caches()
        assert removed.returncode == 0, removed.stderr


def test_a_generated_engine_installs_passes_its_tests_and_counts_right_across_a_kill_9(
    generated: Path, tmp_path: Path, legion_cli: CliRunner
):
    readme = (generated / "README.md").read_text()
    assert f"pip install -e {generated}" in readme and "restart the nodes" in readme
    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider"],
        cwd=generated, capture_output=True, text=True, timeout=GENERATED_TESTS_TIMEOUT_S,
    )  # fmt: skip
    assert tests.returncode == 0, tests.stdout[-3000:]
    assert "3 passed" in tests.stdout
    assert "test_increments_through_every_node_add_up_on_every_node_across_a_kill_9 PASSED" in tests.stdout
    assert "counters" in load_engines()  # found through the entry point the package declares

    from legion_counters import CountersClient

    directory = tmp_path / "cluster"
    with running_cluster(directory, nodes=3, partitions=16, options=NO_DASK) as cluster:
        node_ids = [node["id"] for node in cluster.nodes()]
        for amount, node_id in enumerate(node_ids, start=1):
            with cluster.node_client(node_id) as client:
                CountersClient(client).add("apples", amount)
        added = legion_cli("counters", "add", "apples", "4", "--cluster", str(directory))  # the generated CLI
        assert added.returncode == 0, added.stderr
        for node_id in node_ids:
            with cluster.node_client(node_id) as client:
                assert CountersClient(client).total("apples", r=3) == 1 + 2 + 3 + 4

        listed = legion_cli("counters", "list", "--cluster", str(directory))
        assert listed.returncode == 0 and "apples: 10" in listed.stdout
        shown = legion_cli("counters", "get", "apples", "--cluster", str(directory))
        assert shown.returncode == 0 and shown.stdout.strip() == "10"
