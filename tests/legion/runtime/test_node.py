"""A node hands its configuration to the parts that act on it (without starting it: no sockets)."""

from __future__ import annotations

from pathlib import Path

import pytest

from legion.errors import ConfigError
from legion.runtime.node import Node, NodeConfig


@pytest.mark.parametrize(("mode", "synchronous"), [("fsync", 2), ("async", 1)])
def test_the_durability_mode_reaches_the_log_every_engine_and_the_kv_database(
    tmp_path: Path, mode: str, synchronous: int
) -> None:
    node = Node(NodeConfig(data_dir=tmp_path, durability=mode))  # type: ignore[arg-type]
    try:
        assert node.store.reader().execute("PRAGMA synchronous").fetchone()[0] == synchronous
        assert {engine.durability for engine in node.engines.values()} == {mode}
        kv = node.engines["kv"]
        kv.open(0, tmp_path / "p0")  # what the log writer does first for a partition this node holds
        with kv._store(0).writer.use() as conn:  # type: ignore[attr-defined]
            assert conn.execute("PRAGMA synchronous").fetchone()[0] == synchronous
        kv.close(0)
    finally:
        node.store.close()


def test_a_node_refuses_an_unknown_durability_mode(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--durability must be fsync or async .*got 'sometimes'"):
        Node(NodeConfig(data_dir=tmp_path, durability="sometimes"))  # type: ignore[arg-type]
