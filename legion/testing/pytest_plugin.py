"""pytest fixtures for engine authors: ``legion_cluster`` starts real nodes serving your engine.

Does I/O (through ``legion.testing.cluster``). Enable it in a ``conftest.py``::

    pytest_plugins = ["legion.testing.pytest_plugin"]

then, in a test::

    def test_totals_survive_a_crash(legion_cluster):
        cluster = legion_cluster(CountersEngine, nodes=3)
        cluster.client.request("POST", "/v1/counters/apples", body=b"1")
        cluster.kill("n2"); cluster.restart("n2")

Every cluster a test started is stopped when the test ends, pass or fail.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from legion.engine import Engine
from legion.testing.cluster import LocalCluster, running_cluster

ClusterFactory = Callable[..., LocalCluster]


@pytest.fixture
def legion_cluster(tmp_path: Path) -> Iterator[ClusterFactory]:
    """``legion_cluster(*engines, nodes=3, partitions=16, replicas=3, options=None)``: a running ``LocalCluster``."""
    with ExitStack() as stack:
        count = 0

        def start(*engines: type[Engine], **shape: Any) -> LocalCluster:
            nonlocal count
            count += 1
            return stack.enter_context(running_cluster(tmp_path / f"cluster-{count}", engines=engines, **shape))

        yield start
