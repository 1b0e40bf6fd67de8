"""The node's durable record of the search catalog and of parked operations.

I/O: one SQLite database, ``<engine root>/catalog.sqlite`` (WAL mode).

- ``catalog``: every incarnation this node has heard of, created or dropped
  (``operations.Catalog`` is the in-memory view; it is rebuilt from here when
  the engine opens);
- ``parked``: document operations for an incarnation this node has not heard
  of yet — operations arrive in any order, so an ``index`` can overtake its
  index's ``create`` — kept until the ``create`` arrives (then applied), or
  until the incarnation is known dead (then discarded). A handoff folds them
  out with the partition.

Catalog rows and parked rows are written when applied (durable at once); the
core may replay them, and both writes are idempotent. Only the writer thread
writes; readers (``fold``) use their own connection per thread.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path

from engines.search.operations import ENGINE_NAME, KIND_CREATE, Catalog, CatalogEntry
from legion.replication import Operation
from legion.durability import Durability
from legion.runtime.storage import connect  # WAL, committing as durably as the node's mode asks

SCHEMA = """
CREATE TABLE IF NOT EXISTS catalog (
    incarnation TEXT NOT NULL, kind TEXT NOT NULL, index_name TEXT NOT NULL,
    schema TEXT, partitions INTEGER NOT NULL, hlc INTEGER NOT NULL, origin TEXT NOT NULL,
    PRIMARY KEY (incarnation, kind)
);
CREATE TABLE IF NOT EXISTS parked (
    incarnation TEXT NOT NULL, partition INTEGER NOT NULL, key BLOB NOT NULL,
    hlc INTEGER NOT NULL, origin TEXT NOT NULL, kind TEXT NOT NULL, body BLOB NOT NULL,
    PRIMARY KEY (incarnation, partition, key, hlc, origin)
);
"""


class CatalogStore:
    """Durable catalog entries and parked operations of one node's search engine."""

    def __init__(self, root: Path, durability: Durability) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.path = root / "catalog.sqlite"
        self.durability = durability
        self._writer = connect(self.path, self.durability)
        self._writer.executescript(SCHEMA)
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()

    def _reader(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = connect(self.path, self.durability)
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    def load(self) -> Catalog:
        catalog = Catalog()
        rows = self._writer.execute("SELECT incarnation, kind, index_name, schema, partitions, hlc, origin FROM catalog")
        for incarnation, kind, name, schema, partitions, hlc, origin in rows:
            book = catalog.created if kind == KIND_CREATE else catalog.dropped
            book[incarnation] = CatalogEntry(name, json.loads(schema) if schema else None, partitions, hlc, origin)
        return catalog

    def record(self, kind: str, incarnation: str, entry: CatalogEntry) -> None:
        schema = json.dumps(entry.schema) if entry.schema is not None else None
        self._writer.execute(
            "INSERT OR IGNORE INTO catalog VALUES (?, ?, ?, ?, ?, ?, ?)",
            (incarnation, kind, entry.index, schema, entry.partitions, entry.hlc, entry.origin),
        )

    def park(self, items: Iterable[tuple[str, Operation]]) -> None:
        rows = [(inc, op.partition, op.key, op.hlc, op.origin, op.kind, op.body) for inc, op in items]
        self._writer.executemany("INSERT OR IGNORE INTO parked VALUES (?, ?, ?, ?, ?, ?, ?)", rows)

    def parked(self, incarnation: str) -> list[Operation]:
        rows = self._writer.execute(
            "SELECT partition, key, hlc, origin, kind, body FROM parked WHERE incarnation = ?", (incarnation,)
        ).fetchall()
        return [_operation(row) for row in rows]

    def parked_in(self, partition: int) -> list[Operation]:
        rows = self._reader().execute(
            "SELECT partition, key, hlc, origin, kind, body FROM parked WHERE partition = ?", (partition,)
        ).fetchall()
        return [_operation(row) for row in rows]

    def unpark(self, incarnations: Iterable[str]) -> None:
        self._writer.executemany("DELETE FROM parked WHERE incarnation = ?", [(inc,) for inc in incarnations])

    def drop_partition(self, partition: int) -> None:
        self._writer.execute("DELETE FROM parked WHERE partition = ?", (partition,))

    def close(self) -> None:
        with self._readers_lock:
            readers, self._readers = self._readers, []
        for conn in [self._writer, *readers]:
            conn.close()


def _operation(row: tuple[int, bytes, int, str, str, bytes]) -> Operation:
    partition, key, hlc, origin, kind, body = row
    return Operation(ENGINE_NAME, partition, bytes(key), hlc, origin, kind, bytes(body))
