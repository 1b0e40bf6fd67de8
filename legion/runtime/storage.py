"""A node's durable metadata and operation log, in one SQLite database (WAL mode).

I/O. ``node.sqlite`` in the node's data directory holds:

- ``meta``: small JSON values — the node's own id, the last cluster state it
  adopted — so a restarted node comes back as itself with the newest state it
  knew;
- ``oplog``: every operation this node accepted, per engine and partition,
  in arrival order (``seq``). An operation is acknowledged only after the
  transaction holding it commits, so acknowledged writes survive ``kill -9``;
  in the ``fsync`` durability mode (the default, ``legion.durability``) the
  commit fsyncs (``synchronous=FULL``), so they survive an OS crash or power
  loss too; in ``async`` mode (``synchronous=NORMAL``) those can take the
  last transactions;
- ``checkpoint``: per (engine, partition), the engine's checkpoint — the
  ``seq`` at or below which every logged operation of the partition is
  durable in the engine (a contiguous prefix; see ``legion.checkpoints``).
  A restart replays the log above it. It only moves forward. Log rows at
  or below it are compacted (deleted) in bounded passes (``compact``), in
  the transaction that records it, so a recorded checkpoint never lies below
  a deleted row; an engine's documents are therefore not kept twice for long;
- ``clock``: the greatest timestamp of every operation ever logged, raised in
  the transaction that logs them and kept through compaction. A restarted
  node starts its clock there (``clock_high``): it may have seen timestamps
  ahead of its own wall clock (a peer's clock runs fast, within
  ``CLOCK_DRIFT_MS_MAX``), and a write it stamps after the restart must still
  be newer than those, or last-writer-wins would let the older write win.

Only the log writer thread writes ``oplog`` and ``checkpoint``; any thread may
read through its own connection (``reader()``).

Older data directories kept a table ``applied`` (the highest seq applied, which
could skip a failed batch). It is no longer read and no migration touches it:
without a ``checkpoint`` row a partition's checkpoint is 0, so the first
restart on this code replays that partition's whole log — which no earlier
version ever compacted — and engines are idempotent, so that is merely slower.
"""

from __future__ import annotations

import json
import operator
import sqlite3
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from legion.durability import DEFAULT, Durability, sqlite_synchronous
from legion.replication import Operation

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS oplog (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    engine TEXT NOT NULL, partition INTEGER NOT NULL,
    key BLOB NOT NULL, hlc INTEGER NOT NULL, origin TEXT NOT NULL,
    kind TEXT NOT NULL, body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS oplog_partition ON oplog (engine, partition, seq);
CREATE TABLE IF NOT EXISTS checkpoint (
    engine TEXT NOT NULL, partition INTEGER NOT NULL, seq INTEGER NOT NULL,
    PRIMARY KEY (engine, partition)
);
CREATE TABLE IF NOT EXISTS clock (one INTEGER PRIMARY KEY CHECK (one = 1), hlc INTEGER NOT NULL);
"""

INSERT_OP = "INSERT INTO oplog (engine, partition, key, hlc, origin, kind, body) VALUES (?, ?, ?, ?, ?, ?, ?)"
RAISE_CLOCK = "INSERT INTO clock (one, hlc) VALUES (1, ?) ON CONFLICT (one) DO UPDATE SET hlc = max(hlc, excluded.hlc)"
_op_row = operator.attrgetter("engine", "partition", "key", "hlc", "origin", "kind", "body")

# The oldest rows of one partition at or below a seq, at most a budget of them:
# SQLite has no DELETE ... LIMIT by default, so the rows are chosen through the
# (engine, partition, seq) index first.
COMPACT = (
    "DELETE FROM oplog WHERE seq IN ("
    "SELECT seq FROM oplog WHERE engine = ? AND partition = ? AND seq <= ? ORDER BY seq LIMIT ?)"
)


def connect(path: Path, durability: Durability) -> sqlite3.Connection:
    """A connection in WAL mode whose commits are as durable as the node's ``durability`` mode asks."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={sqlite_synchronous(durability)}")
    return conn


class NodeStore:
    """The node database: metadata, operation log and engine checkpoints."""

    def __init__(self, data_dir: Path, durability: Durability = DEFAULT) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.path = data_dir / "node.sqlite"
        self.durability = durability
        self._writer = connect(self.path, durability)
        self._writer.executescript(SCHEMA)
        self._local = threading.local()
        self._lock = threading.Lock()

    def reader(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = connect(self.path, self.durability)
        return conn

    def meta_get(self, key: str) -> Any | None:
        row = self.reader().execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def meta_put(self, key: str, value: Any) -> None:
        with self._lock:
            self._writer.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, json.dumps(value)),
            )

    def append(self, ops: Sequence[Operation], checkpoints: Mapping[tuple[str, int], int]) -> list[int]:
        """Durably log ``ops`` and record moved checkpoints, in one transaction; the ops' seqs."""
        with self._lock:
            conn = self._writer
            # Plain BEGIN: this connection is the only writer, so there is no lock to race for.
            conn.execute("BEGIN")
            try:
                if checkpoints:
                    _record_checkpoints(conn, checkpoints)
                seqs: list[int] = []
                if ops:
                    conn.executemany(INSERT_OP, map(_op_row, ops))
                    last = conn.execute("SELECT last_insert_rowid()").fetchone()[0]
                    # AUTOINCREMENT gives each insert the greatest seq ever used plus one, and this
                    # connection is the only writer: the transaction's seqs are consecutive.
                    seqs = list(range(last - len(ops) + 1, last + 1))
                    conn.execute(RAISE_CLOCK, (max(op.hlc for op in ops),))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return seqs

    def clock_high(self) -> int:
        """The greatest timestamp of any operation this node ever logged (0 if none)."""
        conn = self.reader()
        kept = conn.execute("SELECT hlc FROM clock WHERE one = 1").fetchone()
        # A log from before the clock table: its rows are all still there.
        logged = conn.execute("SELECT MAX(hlc) FROM oplog").fetchone()[0] if kept is None else None
        return max(kept[0] if kept else 0, logged or 0)

    def checkpoint(self, engine: str, partition: int) -> int:
        """The partition's recorded checkpoint; 0 if none was ever recorded."""
        row = self.reader().execute(
            "SELECT seq FROM checkpoint WHERE engine = ? AND partition = ?", (engine, partition)
        ).fetchone()
        return 0 if row is None else int(row[0])

    def log_figures(self) -> tuple[int, int, int | None]:
        """Rows in the log, the newest seq ever logged, and the oldest row above its partition's checkpoint.

        For the node's metrics; the last is None when every row is checkpointed."""
        conn = self.reader()
        rows = conn.execute("SELECT COUNT(*) FROM oplog").fetchone()[0]
        newest = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'oplog'").fetchone()
        oldest = conn.execute(
            "SELECT MIN(o.seq) FROM oplog o LEFT JOIN checkpoint c ON c.engine = o.engine AND c.partition = o.partition"
            " WHERE o.seq > COALESCE(c.seq, 0)"
        ).fetchone()[0]
        return int(rows), int(newest[0]) if newest else 0, None if oldest is None else int(oldest)

    def ops_after(self, engine: str, partition: int, seq: int, limit: int) -> list[tuple[int, Operation]]:
        """Up to ``limit`` logged operations of one partition with a seq above ``seq``, oldest first.

        A list, not a cursor: no read transaction stays open while the caller applies them."""
        rows = self.reader().execute(
            "SELECT seq, key, hlc, origin, kind, body FROM oplog "
            "WHERE engine = ? AND partition = ? AND seq > ? ORDER BY seq LIMIT ?",
            (engine, partition, seq, limit),
        ).fetchall()
        return [
            (s, Operation(engine, partition, bytes(key), hlc, origin, kind, bytes(body)))
            for s, key, hlc, origin, kind, body in rows
        ]

    def compact(
        self,
        checkpoints: Mapping[tuple[str, int], int],
        targets: Sequence[tuple[tuple[str, int], int]],
        rows_max: int,
    ) -> tuple[list[tuple[str, int]], int]:
        """Record moved checkpoints and delete log rows at or below each target's seq, in one transaction.

        Deletes at most ``rows_max`` rows, oldest first per partition, partitions in
        the order given. Returns the targets left with no row at or below their seq,
        and how many rows went. A target's seq must not exceed its checkpoint once
        ``checkpoints`` is recorded: a restart must never need a deleted row."""
        done: list[tuple[str, int]] = []
        budget = rows_max
        with self._lock:
            conn = self._writer
            conn.execute("BEGIN")
            try:
                if checkpoints:
                    _record_checkpoints(conn, checkpoints)
                for (engine, partition), seq in targets:
                    deleted = conn.execute(COMPACT, (engine, partition, seq, budget)).rowcount
                    budget -= deleted
                    if budget <= 0:
                        break  # maybe more rows of this partition: it stays a target
                    done.append((engine, partition))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return done, rows_max - budget

    def drop_partition(self, engine: str, partition: int) -> None:
        """Forget a partition's log once it has moved to other nodes."""
        with self._lock:
            self._writer.execute("DELETE FROM oplog WHERE engine = ? AND partition = ?", (engine, partition))
            self._writer.execute("DELETE FROM checkpoint WHERE engine = ? AND partition = ?", (engine, partition))

    def close(self) -> None:
        with self._lock:
            self._writer.close()


def _record_checkpoints(conn: sqlite3.Connection, checkpoints: Mapping[tuple[str, int], int]) -> None:
    conn.executemany(
        "INSERT INTO checkpoint (engine, partition, seq) VALUES (?, ?, ?) "
        "ON CONFLICT (engine, partition) DO UPDATE SET seq = excluded.seq",
        [(engine, partition, seq) for (engine, partition), seq in checkpoints.items()],
    )
