"""The map/reduce engine on real clusters: datasets stored in the partitions, jobs on Dask workers beside them.

Each test starts its own cluster of real node processes on loopback (with a
Dask scheduler and a worker per node) and talks to it like a user: through
``MRClient`` over HTTP, or the ``legion`` command. Results are checked
against DuckDB on the same Parquet file and against ``collections.Counter``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engines.mapreduce.client import MRClient
from engines.mapreduce.testing import lineitem_parquet
from legion.client import Client
from legion.errors import BadRequest, Conflict, NotFound
from legion.runtime import local_cluster
from tests.conftest import CLUSTER_START_TIMEOUT_S

SCALE = 0.01


@pytest.fixture(scope="module")
def lineitem(tmp_path_factory) -> Path:
    return lineitem_parquet(tmp_path_factory.mktemp("tpch"), SCALE)


@pytest.fixture
def cluster_of(tmp_path):
    started: list[Path] = []

    def make(nodes: int = 3, replicas: int = 3, partitions: int = 16) -> tuple[Path, MRClient]:
        directory = tmp_path / f"cluster{len(started)}"
        local_cluster.up(directory, nodes=nodes, partitions=partitions, replicas=replicas, base_port=0, timeout_s=CLUSTER_START_TIMEOUT_S)
        started.append(directory)
        return directory, MRClient(Client.connect(directory, timeout_s=60))

    yield make
    for directory in started:
        local_cluster.down(directory)


def test_ingest_spreads_rows_over_every_partition_and_replica_and_drop_removes_them(cluster_of, lineitem, legion_cli):
    directory, mr = cluster_of()
    ingest = legion_cli("mr", "ingest", "lineitem", str(lineitem), "--cluster", str(directory))
    assert ingest.returncode == 0, ingest.stderr
    rows = pq.ParquetFile(lineitem).metadata.num_rows
    assert f"ingested {rows:,} rows" in ingest.stdout
    found = mr.dataset("lineitem")
    assert found["rows"] == rows and found["partitions_missing"] == []
    assert {node: v["rows"] for node, v in found["nodes"].items()} == {"n1": rows, "n2": rows, "n3": rows}  # N=3: all of it on each
    types = {f["name"]: f["type"] for f in found["schema"]}
    assert types["l_extendedprice"] == "decimal128(15, 2)" and types["l_shipdate"] == "date32[day]"
    assert types["l_comment"] == "string"  # string_view in the Parquet file, stored as a plain string

    listing = legion_cli("mr", "datasets", "--json", "--cluster", str(directory))
    assert json.loads(listing.stdout)[0]["rows"] == rows

    keyed = pa.table({"id": [f"u{i}" for i in range(500)], "n": list(range(500))})
    mr.ingest_table("users", keyed, key="id")
    assert mr.dataset("users")["key"] == "id" and mr.dataset("users")["rows"] == 500
    with pytest.raises(Conflict):
        mr.ingest_table("users", keyed, key="n")
    with pytest.raises(BadRequest):
        mr.ingest_table("users", pa.table({"other": [1]}))

    mr.drop("lineitem")
    with pytest.raises(NotFound):
        mr.dataset("lineitem")
    assert [d["name"] for d in mr.datasets()] == ["users"]
