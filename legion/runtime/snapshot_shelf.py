"""The snapshot shelf: partition snapshots this node took for nodes pulling a partition from it.

I/O (files). A puller asks for a snapshot (``/internal/snapshot``); the shelf
has the log writer flush the partition and the engine hard-link its files
under ``DATA/handoff/outgoing/<id>/`` (``LogWriter.snapshot``), and answers a
``legion.snapshots.Manifest``: each file's name, size and fingerprint. The
puller then fetches the files one by one, from any offset
(``/internal/snapshot/file``), and releases the snapshot when done. Hard links
cost no copy and keep the bytes alive if the partition moves away meanwhile;
a snapshot its puller never released (it died) is swept after
``SNAPSHOT_TTL_S``, and everything on the shelf is swept at start-up.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path

from legion.errors import NotFound
from legion.runtime.log_writer import LogWriter
from legion.snapshots import Manifest, SnapshotFile, check_file_name, check_snapshot_id

log = logging.getLogger(__name__)

OUTGOING_DIR = Path("handoff") / "outgoing"
SNAPSHOT_TTL_S = 3600.0
READ_CHUNK_BYTES = 1024 * 1024


def fingerprint(path: Path) -> str:
    """Identifies a file's bytes while it is hard-linked and immutable: inode, modification time, size."""
    st = path.stat()
    return f"{st.st_ino}-{st.st_mtime_ns}-{st.st_size}"


class SnapshotShelf:
    """Takes, serves, releases and sweeps this node's outgoing partition snapshots."""

    def __init__(self, data_dir: Path, writer: LogWriter) -> None:
        self.directory = data_dir / OUTGOING_DIR
        self._writer = writer
        self._taken: dict[str, float] = {}
        shutil.rmtree(self.directory, ignore_errors=True)  # a previous run's pullers are gone

    async def take(self, engine: str, partition: int) -> Manifest | None:
        """A snapshot of ``engine``'s ``partition`` on the shelf, or None if the engine moves partitions by fold."""
        self.sweep()
        snapshot_id = secrets.token_hex(16)
        into = self.directory / snapshot_id
        snapshot = await self._writer.snapshot(engine, partition, into)
        if snapshot is None:
            await asyncio.to_thread(shutil.rmtree, into, True)
            return None
        self._taken[snapshot_id] = time.monotonic()
        try:
            files = await asyncio.to_thread(
                lambda: tuple(
                    SnapshotFile(name, (into / name).stat().st_size, fingerprint(into / name))
                    for name in map(check_file_name, snapshot.files)
                )
            )
        except BaseException:
            self.release(snapshot_id)
            raise
        return Manifest(snapshot_id, engine, partition, files, tuple(snapshot.operations))

    def path(self, snapshot_id: str, name: str) -> Path:
        """The file ``name`` of snapshot ``snapshot_id``; NotFound if either is not on the shelf."""
        check_snapshot_id(snapshot_id)
        check_file_name(name)
        if snapshot_id not in self._taken:
            raise NotFound(f"no snapshot {snapshot_id} on this node (released, swept, or taken before a restart)")
        path = self.directory / snapshot_id / name
        if not path.is_file():
            raise NotFound(f"snapshot {snapshot_id} has no file {name!r}")
        return path

    async def read(self, snapshot_id: str, name: str, offset: int) -> AsyncIterator[bytes]:
        """The bytes of a snapshot file from ``offset`` on, in chunks read off the event loop."""
        path = self.path(snapshot_id, name)
        file = await asyncio.to_thread(open, path, "rb")
        try:
            await asyncio.to_thread(file.seek, offset)
            while chunk := await asyncio.to_thread(file.read, READ_CHUNK_BYTES):
                yield chunk
        finally:
            file.close()

    def release(self, snapshot_id: str) -> None:
        check_snapshot_id(snapshot_id)
        self._taken.pop(snapshot_id, None)
        shutil.rmtree(self.directory / snapshot_id, ignore_errors=True)

    def sweep(self) -> None:
        """Release the snapshots older than ``SNAPSHOT_TTL_S`` (their puller died or gave up)."""
        cutoff = time.monotonic() - SNAPSHOT_TTL_S
        for snapshot_id in [s for s, taken in self._taken.items() if taken < cutoff]:
            log.info("releasing snapshot %s: not released by its puller within %ds", snapshot_id, SNAPSHOT_TTL_S)
            self.release(snapshot_id)

    def held(self) -> int:
        return len(self._taken)

