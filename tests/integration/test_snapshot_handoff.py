"""Snapshot handoff against a real node: files served from any offset, a cut-short fetch resumed, names checked.

Real node processes on loopback serve the snapshots (the map/reduce engine's
Arrow files). The receiving side is a ``SnapshotFetcher`` run in this process
against them, with a recording stand-in for its node's log writer, so the
test can stage half a file as a transfer cut short would leave it and count
the bytes the fetcher then asks for. (The whole path — a joining node taking
its map/reduce partitions as snapshots — runs in ``test_mapreduce.py``.)
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from types import SimpleNamespace

import msgpack
import pyarrow as pa
import pytest

from engines.mapreduce.client import MRClient
from legion.engine import PartitionSnapshot
from legion.errors import BadRequest, NotFound
from legion.runtime.node_metrics import NodeMetrics
from legion.runtime.snapshot_fetcher import FINGERPRINTS_FILE, INCOMING_DIR, SnapshotFetcher
from legion.runtime.transport import PeerClient
from legion.snapshots import Manifest
from tests.conftest import LocalCluster

PARTITIONS = 4
MSGPACK = {"Content-Type": "application/msgpack"}


class RecordingWriter:
    """Stands in for the receiving node's log writer: keeps what it was asked to log and install."""

    def __init__(self) -> None:
        self.submitted: list = []
        self.installed: dict[str, bytes] = {}

    async def submit(self, ops, *, flush: bool = False) -> None:
        self.submitted += ops

    async def install(self, engine: str, partition: int, directory: Path, snapshot: PartitionSnapshot) -> None:
        self.installed = {name: (directory / name).read_bytes() for name in snapshot.files}


def take_manifest(client, engine: str, partition: int) -> Manifest:
    raw = client.request(
        "POST", "/internal/snapshot", body=msgpack.packb({"engine": engine, "partition": partition}), headers=MSGPACK
    ).body
    return Manifest.from_wire(msgpack.unpackb(raw)["manifest"])


def source_bytes(cluster: LocalCluster, node_id: str, partition: int, name: str) -> bytes:
    return (Path(cluster.node(node_id)["data_dir"]) / "engines" / "mr" / f"{partition:04d}" / name).read_bytes()


@pytest.mark.cluster(partitions=PARTITIONS)
def test_a_fetch_cut_short_resumes_from_the_bytes_it_has_and_installs_the_source_s_files(local_cluster: LocalCluster, tmp_path: Path):
    mr = MRClient(local_cluster.client)
    for start in range(0, 40_000, 10_000):  # several batch files per partition
        mr.ingest_table("numbers", pa.table({"n": pa.array(range(start, start + 10_000), pa.int64())}))
    with local_cluster.node_client("n1") as n1:
        manifests = [take_manifest(n1, "mr", p) for p in range(PARTITIONS)]
        for taken in manifests:
            n1.request("DELETE", "/internal/snapshot", params={"id": taken.snapshot_id})
    # Rows without a key land in partitions as the ingest spreads its batches: take one that has some.
    manifest = max(manifests, key=lambda m: len(m.files))
    partition = manifest.partition
    assert manifest.files and manifest.operations  # batch files, and the catalog as operations

    # A previous transfer stopped halfway through the first file.
    first = manifest.files[0]
    staging = tmp_path / INCOMING_DIR / "mr" / f"{partition:04d}"
    (staging / "files" / first.name).parent.mkdir(parents=True)
    (staging / "files" / first.name).write_bytes(source_bytes(local_cluster, "n1", partition, first.name)[: first.size // 2])
    (staging / FINGERPRINTS_FILE).write_text(json.dumps({first.name: first.fingerprint}))

    writer, metrics = RecordingWriter(), NodeMetrics()
    url = local_cluster.node("n1")["url"]

    async def pull() -> bool:
        peers = PeerClient(local_cluster.token)
        await peers.start()
        node = SimpleNamespace(
            peers=peers, writer=writer, metrics=metrics, config=SimpleNamespace(data_dir=tmp_path),
            state=SimpleNamespace(url_of=lambda node_id: url),
        )  # fmt: skip
        try:
            return await SnapshotFetcher(node).pull("n1", "mr", partition)
        finally:
            await peers.close()

    assert asyncio.run(pull())
    fetched = metrics.registry.get_sample_value("legion_handoff_bytes_total")
    assert fetched == manifest.total_bytes - first.size // 2  # the half it had was not asked for again
    assert writer.installed == {f.name: source_bytes(local_cluster, "n1", partition, f.name) for f in manifest.files}
    assert [op.kind for op in writer.submitted] == [op.kind for op in manifest.operations]
    assert not staging.exists()  # staging is cleared once installed
    with local_cluster.node_client("n1") as n1:  # and the source's snapshot was released
        with pytest.raises(NotFound, match="no snapshot"):
            n1.request("GET", "/internal/snapshot/file", params={"id": manifest.snapshot_id, "name": first.name})


def test_snapshot_files_refuse_names_outside_the_snapshot_and_unknown_ids(local_cluster: LocalCluster):
    with local_cluster.node_client("n1") as n1:
        # KV keeps all partitions in one database: no snapshot, the puller folds instead.
        raw = n1.request("POST", "/internal/snapshot", body=msgpack.packb({"engine": "kv", "partition": 0}), headers=MSGPACK).body
        assert msgpack.unpackb(raw) == {"manifest": None}
        for name in ("../../node.sqlite", "/etc/passwd", "a/./b"):
            with pytest.raises(BadRequest, match="snapshot file name"):
                n1.request("GET", "/internal/snapshot/file", params={"id": "0" * 32, "name": name})
        with pytest.raises(BadRequest, match="snapshot id"):
            n1.request("GET", "/internal/snapshot/file", params={"id": "../x", "name": "a"})
        with pytest.raises(BadRequest, match="offset"):
            n1.request("GET", "/internal/snapshot/file", params={"id": "0" * 32, "name": "a", "offset": "-1"})
        with pytest.raises(NotFound, match="no snapshot"):
            n1.request("GET", "/internal/snapshot/file", params={"id": "0" * 32, "name": "a"})
