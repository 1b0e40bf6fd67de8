"""A partition's dataset files on disk, and job snapshots of them.

I/O. Layout, under the directory the core gives a partition::

    <partition dir>/<incarnation>/<batch id>.arrow

one uncompressed Arrow IPC *file* per batch operation, named by the batch's
unique id — so writing a batch twice is a no-op and the partition's rows are
the set of its files. The file's schema metadata carries the batch's version
and key (``legion.hlc``, ``legion.origin``, ``legion.key``) and row count,
so ``fold`` can rebuild the operation exactly. Why uncompressed IPC: it is memory-mapped and scanned
with no decoding at all. Measured on TPC-H lineitem at SF1 in 64 partitions
(a Q1 scan in pyarrow, one thread): uncompressed IPC 0.83 s, LZ4 IPC 1.11 s,
ZSTD IPC 1.98 s, Parquet 1.74 s — at 4.3× Parquet's size on disk.

Writes are atomic (a temporary file renamed into place) and visible at once;
they become durable in ``sync`` (fsync of the files and their directories),
which the engine calls from ``flush`` — only then may the core drop the
operations from its log.

**Snapshots** make a job's reads safe: ``link_snapshot`` hard-links a
partition's files into ``<engine root>/snapshots/<job id>/<partition>/``.
A hard link keeps the file's data alive when the partition moves away and
the core deletes its directory, and costs no copy; the snapshot is taken
after a flush (the files are complete and durable) and released when the
job ends (``release_snapshot``), or swept once older than
``SNAPSHOT_TTL_S`` (a job whose coordinator died).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.ipc as ipc

from engines.mapreduce.datasets import ID_PATTERN

FILE_SUFFIX = ".arrow"
TEMPORARY_PREFIX = ".tmp-"
META_HLC = b"legion.hlc"
META_ORIGIN = b"legion.origin"
META_ROWS = b"legion.rows"
META_KEY = b"legion.key"
SNAPSHOT_TTL_S = 6 * 3600
# Record batches inside a file: large enough that a scan spends its time in kernels, not per batch.
FILE_BATCH_ROWS = 64 * 1024


class PartitionFiles:
    """One partition's batches on disk (see the module docstring). The writer thread writes; anyone reads."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._unsynced: set[Path] = set()

    def path(self, incarnation: str, batch_id: str) -> Path:
        return self.directory / incarnation / f"{batch_id}{FILE_SUFFIX}"

    def write(self, incarnation: str, batch_id: str, table: pa.Table, version: tuple[int, str, bytes]) -> bool:
        """Store a batch (with its operation's ``(hlc, origin, key)``) unless it is already stored; True if written now."""
        target = self.path(incarnation, batch_id)
        if target.exists():
            return False
        target.parent.mkdir(parents=True, exist_ok=True)
        hlc, origin, key = version
        metadata = {
            META_HLC: str(hlc).encode(), META_ORIGIN: origin.encode(), META_KEY: key.hex().encode(),
            META_ROWS: str(table.num_rows).encode(),
        }  # fmt: skip
        temporary = target.with_name(TEMPORARY_PREFIX + target.name)
        with ipc.new_file(str(temporary), table.schema.with_metadata(metadata)) as writer:
            writer.write_table(table, max_chunksize=FILE_BATCH_ROWS)
        os.replace(temporary, target)
        self._unsynced.add(target)
        return True

    def adopt(self, incarnation: str, batch_id: str, source: Path) -> bool:
        """Move a batch file received whole (a snapshot handoff) into place unless already stored; True if moved."""
        target = self.path(incarnation, batch_id)
        if target.exists():
            return False
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, target)
        self._unsynced.add(target)
        return True

    def sync(self) -> None:
        """Make every batch written since the last sync durable (files, then their directories)."""
        files, self._unsynced = self._unsynced, set()
        for path in sorted(files):
            _fsync(path)
        for directory in sorted({path.parent for path in files} | ({self.directory} if files else set())):
            _fsync(directory)

    def incarnations(self) -> list[str]:
        if not self.directory.is_dir():
            return []
        return sorted(entry.name for entry in self.directory.iterdir() if entry.is_dir() and ID_PATTERN.match(entry.name))

    def batches(self, incarnation: str) -> list[Path]:
        """The incarnation's batch files in this partition, by name (temporary files excluded)."""
        folder = self.directory / incarnation
        if not folder.is_dir():
            return []
        return sorted(p for p in folder.iterdir() if p.suffix == FILE_SUFFIX and not p.name.startswith(TEMPORARY_PREFIX))

    def delete(self, incarnation: str) -> None:
        """Forget an incarnation's rows in this partition (a dropped or superseded dataset)."""
        folder = self.directory / incarnation
        self._unsynced = {p for p in self._unsynced if p.parent != folder}
        shutil.rmtree(folder, ignore_errors=True)

    def stats(self, incarnation: str) -> tuple[int, int, int]:
        """(rows, bytes, files) of the incarnation in this partition, from the files' metadata."""
        rows = size = count = 0
        for path in self.batches(incarnation):
            try:
                rows += rows_of(path)
                size += path.stat().st_size
                count += 1
            except FileNotFoundError:
                continue  # dropped while we looked
        return rows, size, count


def rows_of(path: Path) -> int:
    with pa.memory_map(str(path)) as source:
        metadata = ipc.open_file(source).schema.metadata or {}
    return int(metadata.get(META_ROWS, b"0"))


def version_of(path: Path) -> tuple[int, str, bytes]:
    """A batch file's operation ``(hlc, origin, key)``, from its metadata alone (no rows read)."""
    with pa.memory_map(str(path)) as source:
        metadata = ipc.open_file(source).schema.metadata or {}
    return _version(metadata)


def _version(metadata: dict[bytes, bytes]) -> tuple[int, str, bytes]:
    return (
        int(metadata.get(META_HLC, b"0")),
        metadata.get(META_ORIGIN, b"").decode(),
        bytes.fromhex(metadata.get(META_KEY, b"").decode()),
    )


def read_batch(path: Path) -> tuple[pa.Table, tuple[int, str, bytes]]:
    """A batch file's table (memory-mapped, metadata removed) and its operation's ``(hlc, origin, key)``."""
    table = ipc.open_file(pa.memory_map(str(path))).read_all()
    metadata = table.schema.metadata or {}
    return table.replace_schema_metadata(None), _version(metadata)


def snapshot_dir(root: Path, job_id: str) -> Path:
    return root / "snapshots" / job_id


def link_snapshot(files: PartitionFiles, incarnation: str, target: Path) -> list[Path]:
    """Hard-link the incarnation's batch files of one partition into ``target``; the links."""
    target.mkdir(parents=True, exist_ok=True)
    links = []
    for path in files.batches(incarnation):
        link = target / path.name
        try:
            os.link(path, link)
        except FileExistsError:
            pass  # the same job asked twice (a retried coverage call)
        except FileNotFoundError:
            continue  # the dataset was dropped meanwhile
        links.append(link)
    return links


def release_snapshot(root: Path, job_id: str) -> None:
    shutil.rmtree(snapshot_dir(root, job_id), ignore_errors=True)


def sweep_snapshots(root: Path, now_s: float | None = None, ttl_s: float = SNAPSHOT_TTL_S) -> list[str]:
    """Release snapshots older than ``ttl_s`` (their job's coordinator is gone); the job ids released."""
    folder = root / "snapshots"
    if not folder.is_dir():
        return []
    now_s = time.time() if now_s is None else now_s
    released = []
    for entry in _dirs(folder):
        try:
            age = now_s - entry.stat().st_mtime
        except FileNotFoundError:
            continue
        if age > ttl_s:
            shutil.rmtree(entry, ignore_errors=True)
            released.append(entry.name)
    return released


def _dirs(folder: Path) -> Iterator[Path]:
    return (entry for entry in folder.iterdir() if entry.is_dir())


def _fsync(path: Path) -> None:
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return  # deleted since (a drop): nothing left to make durable
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
