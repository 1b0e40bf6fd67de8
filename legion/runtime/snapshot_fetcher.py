"""The snapshot fetcher: pulls a partition as its engine's files when the engine offers a snapshot.

I/O (peer HTTP, files). The handoff receiver asks this first and falls back
to the fold when the source's engine has no snapshot to give. A pull:

1. asks the source for a snapshot (``POST /internal/snapshot``): a
   ``legion.snapshots.Manifest``, taken right after a flush on the source's
   writer thread, once the source knows the move (so every write it logs
   afterwards reaches this node too — the snapshot's tail arrives as writes);
2. fetches what ``fetch_plan`` says is missing into
   ``DATA/handoff/incoming/<engine>/<pppp>/files/``, each file from the offset
   a cut-short transfer reached, recording per file the fingerprint it was
   fetched for (``fingerprints.json``), so a retry — even after a restart of
   either node — resumes instead of starting over;
3. applies the manifest's operations through the log (a catalog, say), then
   has the engine install the files (``LogWriter.install``: merged into what
   the partition holds, then flushed);
4. releases the snapshot on the source and deletes the staging directory.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Protocol
from urllib.parse import urlencode

import msgpack

from legion.engine import PartitionSnapshot
from legion.errors import LegionError, Unavailable
from legion.replication import unpack
from legion.snapshots import Manifest, fetch_plan
from legion.runtime.node_view import StateView

if TYPE_CHECKING:
    from legion.runtime.log_writer import LogWriter

log = logging.getLogger(__name__)


class DataDirectory(Protocol):
    """Where a node keeps its files."""

    data_dir: Path


class FetcherHost(StateView, Protocol):
    """What the snapshot fetcher uses of its node (``legion.runtime.node_view``)."""

    config: DataDirectory
    writer: LogWriter


INCOMING_DIR = Path("handoff") / "incoming"
FINGERPRINTS_FILE = "fingerprints.json"


class SnapshotFetcher:
    """Pulls partitions as snapshots for one node's handoff receiver."""

    def __init__(self, node: FetcherHost) -> None:
        self.node = node
        self.directory = node.config.data_dir / INCOMING_DIR

    async def pull(self, source: str, engine: str, partition: int) -> bool:
        """Copy ``engine``'s ``partition`` from ``source`` as a snapshot; False if its engine has none (use the fold)."""
        node = self.node
        base = node.state.url_of(source)
        raw = await node.peers.call(
            "POST", f"{base}/internal/snapshot", data=msgpack.packb({"engine": engine, "partition": partition})
        )
        wire = unpack(raw, dict).get("manifest")
        if wire is None:
            return False
        manifest = Manifest.from_wire(wire)
        staging = self.directory / engine / f"{partition:04d}"
        try:
            await self._fetch(base, manifest, staging)
            if manifest.operations:
                await node.writer.submit(list(manifest.operations))
            files = PartitionSnapshot(files=[f.name for f in manifest.files], operations=manifest.operations)
            await node.writer.install(engine, partition, staging / "files", files)
        finally:
            await self._release(base, manifest.snapshot_id)
        await asyncio.to_thread(shutil.rmtree, staging, True)
        node.metrics.handoff_snapshots.inc()
        log.info("pulled %s partition %d from %s as a snapshot of %d files (%d bytes)",
                 engine, partition, source, len(manifest.files), manifest.total_bytes)  # fmt: skip
        return True

    async def _fetch(self, base: str, manifest: Manifest, staging: Path) -> None:
        fingerprints = await asyncio.to_thread(_read_fingerprints, staging)
        staged = await asyncio.to_thread(_staged, staging / "files", fingerprints)
        for fetch in fetch_plan(manifest.files, staged):
            name = fetch.file.name
            fingerprints[name] = fetch.file.fingerprint
            await asyncio.to_thread(_write_fingerprints, staging, fingerprints)
            target = staging / "files" / name
            await asyncio.to_thread(target.parent.mkdir, parents=True, exist_ok=True)
            query = urlencode({"id": manifest.snapshot_id, "name": name, "offset": fetch.offset})
            file = await asyncio.to_thread(open, target, "r+b" if fetch.offset else "wb")
            try:
                await asyncio.to_thread(file.truncate, fetch.offset)
                await asyncio.to_thread(file.seek, fetch.offset)
                async for chunk in self.node.peers.stream(f"{base}/internal/snapshot/file?{query}"):
                    await asyncio.to_thread(file.write, chunk)
                    self.node.metrics.handoff_bytes.inc(len(chunk))
            finally:
                await asyncio.to_thread(file.close)
            size = (await asyncio.to_thread(target.stat)).st_size
            if size != fetch.file.size:
                raise Unavailable(f"snapshot file {name!r} arrived with {size} of {fetch.file.size} bytes; will resume")

    async def _release(self, base: str, snapshot_id: str) -> None:
        try:
            await self.node.peers.call("DELETE", f"{base}/internal/snapshot?id={snapshot_id}")
        except LegionError as exc:  # the source sweeps it after a while anyway
            log.info("could not release snapshot %s: %s", snapshot_id, exc)


def _read_fingerprints(staging: Path) -> dict[str, str]:
    try:
        saved = json.loads((staging / FINGERPRINTS_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return {str(k): str(v) for k, v in saved.items()} if isinstance(saved, dict) else {}


def _write_fingerprints(staging: Path, fingerprints: dict[str, str]) -> None:
    staging.mkdir(parents=True, exist_ok=True)
    temporary = staging / (FINGERPRINTS_FILE + ".tmp")
    temporary.write_text(json.dumps(fingerprints))
    os.replace(temporary, staging / FINGERPRINTS_FILE)


def _staged(files: Path, fingerprints: dict[str, str]) -> dict[str, tuple[str, int]]:
    """``{name: (fingerprint it was fetched for, bytes on disk)}`` of the files staged under ``files``."""
    staged: dict[str, tuple[str, int]] = {}
    for name, fingerprint in fingerprints.items():
        try:
            staged[name] = (fingerprint, os.stat(files / name).st_size)
        except FileNotFoundError:
            continue
    return staged
