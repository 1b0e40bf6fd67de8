"""Partition snapshots in transit: the manifest a source sends, its checks, and what a receiver has left to fetch.

Pure. A partition whose engine keeps it in immutable files moves as a
snapshot (``Engine.snapshot``): the source hard-links the files right after a
flush and answers a ``Manifest`` naming each file with its size and a
*fingerprint* (the source's inode, modification time and size: the same
fingerprint means the same bytes, since the files are immutable while
linked). The receiver fetches each file into a staging directory and keeps,
per staged file, the fingerprint it was fetched for; ``fetch_plan`` then says
which files are complete, which continue from an offset (a transfer cut
short) and which start over (the source's file is another one now).

File names come from a peer, so ``check_file_name`` refuses anything that is
not a plain relative path below the snapshot directory.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from legion.errors import BadRequest
from legion.replication import Operation

SNAPSHOT_ID = re.compile(r"[0-9a-f]{32}")
FILE_NAME_CHARS_MAX = 512
_COMPONENT = re.compile(r"[A-Za-z0-9._-]+")


@dataclass(frozen=True, slots=True)
class SnapshotFile:
    """One file of a snapshot: its relative name, size in bytes and fingerprint."""

    name: str
    size: int
    fingerprint: str


@dataclass(frozen=True, slots=True)
class Manifest:
    """A snapshot a source holds for a receiver: its id, the files to fetch, and operations not in files."""

    snapshot_id: str
    engine: str
    partition: int
    files: tuple[SnapshotFile, ...]
    operations: tuple[Operation, ...] = ()

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def to_wire(self) -> dict[str, object]:
        return {
            "id": self.snapshot_id,
            "engine": self.engine,
            "partition": self.partition,
            "files": [[f.name, f.size, f.fingerprint] for f in self.files],
            "operations": [op.to_wire() for op in self.operations],
        }

    @classmethod
    def from_wire(cls, raw: object) -> Manifest:
        """The manifest a peer sent; BadRequest naming what is malformed."""
        if not isinstance(raw, dict):
            raise BadRequest("a snapshot manifest must be a map")
        snapshot_id = check_snapshot_id(raw.get("id"))
        engine, partition, files, operations = raw.get("engine"), raw.get("partition"), raw.get("files"), raw.get("operations")
        if not isinstance(engine, str) or not isinstance(partition, int) or isinstance(partition, bool):
            raise BadRequest("a snapshot manifest needs a string 'engine' and an integer 'partition'")
        if not isinstance(files, list) or not isinstance(operations, list):
            raise BadRequest("a snapshot manifest needs lists 'files' and 'operations'")
        parsed: list[SnapshotFile] = []
        for entry in files:
            if not (isinstance(entry, list) and len(entry) == 3 and isinstance(entry[1], int) and isinstance(entry[2], str)):
                raise BadRequest("each snapshot file must be [name, size, fingerprint]")
            if entry[1] < 0:
                raise BadRequest(f"snapshot file {entry[0]!r} has a negative size")
            parsed.append(SnapshotFile(check_file_name(entry[0]), entry[1], entry[2]))
        if len({f.name for f in parsed}) != len(parsed):
            raise BadRequest("a snapshot manifest names a file twice")
        return cls(snapshot_id, engine, partition, tuple(parsed), tuple(Operation.from_wire(op) for op in operations))


def check_snapshot_id(raw: object) -> str:
    if not isinstance(raw, str) or not SNAPSHOT_ID.fullmatch(raw):
        raise BadRequest("a snapshot id is 32 lowercase hex digits")
    return raw


def check_file_name(raw: object) -> str:
    """A snapshot file's name: a relative ``/``-separated path of plain components (letters, digits, ``._-``).

    Refuses absolute paths, ``.`` and ``..`` components, empty components and
    anything else that could name a file outside the snapshot directory."""
    if not isinstance(raw, str) or not raw or len(raw) > FILE_NAME_CHARS_MAX:
        raise BadRequest(f"a snapshot file name must be a non-empty string of at most {FILE_NAME_CHARS_MAX} characters")
    for component in raw.split("/"):
        if component in ("", ".", "..") or not _COMPONENT.fullmatch(component):
            raise BadRequest(
                f"snapshot file name {raw!r} must be a relative path of plain components (letters, digits, '.', '_', '-')"
            )
    return raw


@dataclass(frozen=True, slots=True)
class Fetch:
    """One file to fetch: from ``offset`` on (0: from the start)."""

    file: SnapshotFile
    offset: int


def fetch_plan(files: Sequence[SnapshotFile], staged: Mapping[str, tuple[str, int]]) -> list[Fetch]:
    """What is left to fetch, given each staged file's ``(fingerprint, bytes on disk)`` by name.

    A staged file of the same fingerprint continues where it stopped (and is
    skipped when complete); any other, or a longer one, starts over."""
    plan: list[Fetch] = []
    for file in files:
        fingerprint, have = staged.get(file.name, ("", 0))
        if fingerprint != file.fingerprint or have > file.size:
            plan.append(Fetch(file, 0))
        elif have < file.size:
            plan.append(Fetch(file, have))
    return plan
