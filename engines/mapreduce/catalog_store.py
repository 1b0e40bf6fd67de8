"""The node's durable record of the map/reduce catalog.

I/O: one SQLite database, ``<engine root>/catalog.sqlite`` (WAL mode, the
settings of every Legion database). Every dataset incarnation this node has
heard of, created or dropped (``datasets.Catalog`` is the in-memory view,
rebuilt from here when the engine opens). Rows are written when applied —
durable at once, and idempotent when the core replays them. Only the
writer thread writes.
"""

from __future__ import annotations

import threading
from pathlib import Path

from engines.mapreduce.datasets import KIND_CREATE, Catalog, CatalogEntry
from legion.durability import Durability
from legion.runtime.storage import connect

SCHEMA = """
CREATE TABLE IF NOT EXISTS catalog (
    incarnation TEXT NOT NULL, kind TEXT NOT NULL, name TEXT NOT NULL, schema BLOB NOT NULL,
    key_column TEXT NOT NULL, partitions INTEGER NOT NULL, hlc INTEGER NOT NULL, origin TEXT NOT NULL,
    PRIMARY KEY (incarnation, kind)
);
"""


class CatalogStore:
    """Durable catalog entries of one node's map/reduce engine."""

    def __init__(self, root: Path, durability: Durability) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.path = root / "catalog.sqlite"
        self.durability = durability
        self._lock = threading.Lock()
        self._conn = connect(self.path, self.durability)
        self._conn.executescript(SCHEMA)

    def load(self) -> Catalog:
        catalog = Catalog()
        with self._lock:
            rows = self._conn.execute(
                "SELECT incarnation, kind, name, schema, key_column, partitions, hlc, origin FROM catalog"
            ).fetchall()
        for incarnation, kind, name, schema, key_column, partitions, hlc, origin in rows:
            book = catalog.created if kind == KIND_CREATE else catalog.dropped
            book[incarnation] = CatalogEntry(name, bytes(schema), key_column, partitions, hlc, origin)
        return catalog

    def record(self, kind: str, incarnation: str, entry: CatalogEntry) -> None:
        with self._lock:
            self._conn.execute(
                "INSERT OR IGNORE INTO catalog VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (incarnation, kind, entry.name, entry.schema, entry.key_column, entry.partitions, entry.hlc, entry.origin),
            )

    def close(self) -> None:
        with self._lock:
            self._conn.close()
