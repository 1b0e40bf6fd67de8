"""The hint store: operations this node keeps for owners that could not take them, in SQLite.

I/O (blocking: call it from a worker thread). ``hints.sqlite`` in the node's
data directory, WAL mode, committed as durably as the node's durability mode
asks (``legion.durability``: fsynced by default), holds:

- ``hint``: one row per kept operation, with the owner it is for, oldest
  first (``id``); a row is deleted only once the owner acknowledged it;
- ``lost``: (owner, partition) pairs for which this node could not keep a
  hint (the store was full): the owner re-copies those partitions whole, then
  clears the mark (``clear_lost``).

The store keeps counts of its hints per owner and partition in memory
(rebuilt at open), so status and catch-up questions cost no query. It is
bounded by ``HINTS_OPS_MAX`` rows and ``HINTS_BYTES_MAX`` bytes of bodies;
beyond them a hint is recorded as lost instead.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from legion.durability import DEFAULT, Durability
from legion.hints import HintReport
from legion.limits import HINTS_BYTES_MAX, HINTS_OPS_MAX
from legion.replication import Operation
from legion.runtime.storage import connect

SCHEMA = """
CREATE TABLE IF NOT EXISTS hint (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    owner TEXT NOT NULL,
    engine TEXT NOT NULL, partition INTEGER NOT NULL,
    key BLOB NOT NULL, hlc INTEGER NOT NULL, origin TEXT NOT NULL,
    kind TEXT NOT NULL, body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS hint_owner ON hint (owner, id);
CREATE TABLE IF NOT EXISTS lost (owner TEXT NOT NULL, partition INTEGER NOT NULL, PRIMARY KEY (owner, partition));
"""


@dataclass(frozen=True)
class StoredHint:
    """One kept operation and its row id."""

    id: int
    op: Operation


class HintStore:
    """The node's durable hints; see the module docstring. Thread-safe (one lock)."""

    def __init__(self, data_dir: Path, durability: Durability = DEFAULT) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.path = data_dir / "hints.sqlite"
        self._conn = connect(self.path, durability)
        self._conn.executescript(SCHEMA)
        self._lock = threading.Lock()  # the connection
        # The counts, apart: the event loop reads them while a worker thread waits for an fsync.
        self._counts_lock = threading.Lock()
        self._counts: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
        self._bytes = 0
        self._rows = 0
        for owner, partition, count, size in self._conn.execute(
            "SELECT owner, partition, COUNT(*), COALESCE(SUM(LENGTH(body)), 0) FROM hint GROUP BY owner, partition"
        ):
            self._counts[owner][int(partition)] = int(count)
            self._rows += int(count)
            self._bytes += int(size)

    def add(self, entries: Sequence[tuple[str, Operation]]) -> int:
        """Durably keep each (owner, operation), in one transaction; those over the bounds are recorded lost.

        Returns how many were kept as hints."""
        kept: list[tuple[str, Operation]] = []
        lost: set[tuple[str, int]] = set()
        with self._lock:
            rows, size = self._rows, self._bytes
            for owner, op in entries:
                if rows + 1 > HINTS_OPS_MAX or size + len(op.body) > HINTS_BYTES_MAX:
                    lost.add((owner, op.partition))
                    continue
                rows, size = rows + 1, size + len(op.body)
                kept.append((owner, op))
            # Counted before the commit: a peer asking meanwhile may see a hint early, never late.
            with self._counts_lock:
                for owner, op in kept:
                    self._counts[owner][op.partition] += 1
            conn = self._conn
            conn.execute("BEGIN")
            try:
                conn.executemany(
                    "INSERT INTO hint (owner, engine, partition, key, hlc, origin, kind, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [(o, op.engine, op.partition, op.key, op.hlc, op.origin, op.kind, op.body) for o, op in kept],
                )
                conn.executemany("INSERT OR IGNORE INTO lost (owner, partition) VALUES (?, ?)", sorted(lost))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                with self._counts_lock:
                    for owner, op in kept:
                        self._forget(owner, op.partition)
                raise
            self._rows, self._bytes = rows, size
        return len(kept)

    def oldest(self, owner: str, after_id: int, limit: int) -> list[StoredHint]:
        """Up to ``limit`` hints for ``owner`` with an id above ``after_id``, oldest first."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT id, engine, partition, key, hlc, origin, kind, body FROM hint "
                "WHERE owner = ? AND id > ? ORDER BY id LIMIT ?",
                (owner, after_id, limit),
            ).fetchall()
        return [
            StoredHint(id_, Operation(engine, partition, bytes(key), hlc, origin, kind, bytes(body)))
            for id_, engine, partition, key, hlc, origin, kind, body in rows
        ]

    def drop(self, owner: str, hints: Sequence[StoredHint]) -> None:
        """Delete hints the owner acknowledged."""
        if not hints:
            return
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN")
            try:
                conn.executemany("DELETE FROM hint WHERE id = ?", [(h.id,) for h in hints])
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            with self._counts_lock:
                for h in hints:
                    self._forget(owner, h.op.partition)
            self._rows -= len(hints)
            self._bytes -= sum(len(h.op.body) for h in hints)

    def drop_owner(self, owner: str) -> int:
        """Delete every hint and lost mark for ``owner`` (a member removed from the cluster); how many hints went."""
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN")
            try:
                size = conn.execute("SELECT COALESCE(SUM(LENGTH(body)), 0) FROM hint WHERE owner = ?", (owner,)).fetchone()[0]
                gone = conn.execute("DELETE FROM hint WHERE owner = ?", (owner,)).rowcount
                conn.execute("DELETE FROM lost WHERE owner = ?", (owner,))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            with self._counts_lock:
                self._counts.pop(owner, None)
            self._rows -= gone
            self._bytes -= int(size)
        return gone

    def _forget(self, owner: str, partition: int) -> None:
        per = self._counts[owner]
        per[partition] -= 1
        if per[partition] <= 0:
            del per[partition]
        if not per:
            del self._counts[owner]

    def pending(self) -> dict[str, int]:
        """Hints kept per owner (does not wait for a commit in progress)."""
        with self._counts_lock:
            return {owner: sum(per.values()) for owner, per in self._counts.items() if per}

    def report(self, owner: str) -> HintReport:
        """What this node holds for ``owner``: hints per partition and the partitions whose hints it lost."""
        with self._counts_lock:
            pending = dict(self._counts.get(owner, {}))
        with self._lock:
            lost = frozenset(int(p) for (p,) in self._conn.execute("SELECT partition FROM lost WHERE owner = ?", (owner,)))
        return HintReport(pending=pending, lost=lost)

    def clear_lost(self, owner: str, partitions: Sequence[int]) -> None:
        """Forget the lost marks of ``owner``'s ``partitions`` (it re-copied them whole)."""
        with self._lock:
            self._conn.executemany("DELETE FROM lost WHERE owner = ? AND partition = ?", [(owner, p) for p in partitions])

    def close(self) -> None:
        with self._lock:
            self._conn.close()
