"""The key/value engine: one SQLite database per partition, and its HTTP routes.

Does I/O (SQLite files). The data rules — what an operation means, which
version wins — live in the pure ``entries`` module; this module only stores
entries and answers requests.

On disk, all partitions a node holds share one database,
``<engine root>/kv.sqlite``, with one table, ``entries`` (see ``SCHEMA``):
per (partition, key), the newest entry this replica has seen, tombstones
included. One file rather than one per partition because a batch of writes
spans many partitions, and one file lets ``apply_batch`` commit them all in
one transaction instead of one commit per partition. WAL mode, with the
node's durability mode (``Engine.durability``): KV is durable on apply, so
the core compacts the operation log right below what ``apply`` committed, and
the database must be at least as durable as that log. In ``fsync`` mode
``synchronous=FULL``: each ``apply_batch`` commit fsyncs, so an applied write
survives power loss (one fsync per group commit, beside the log's own); in
``async`` mode ``synchronous=NORMAL``: it survives ``kill -9`` of the
process, and an OS crash or power loss may roll back the last commits.

Threads, as the contract in ``legion.engine`` promises: ``apply`` comes from
the node's single writer thread, so the database has one writer
connection; ``read``, ``coverage_many`` and ``fold`` come from worker threads
concurrently, so each worker thread gets its own reader connection. WAL lets
readers run while the writer commits.

Routes: one key (``PUT``/``GET``/``DELETE /v1/kv/{key}``), many keys at once
(``POST /v1/kv``, through ``Cluster.write_many``) and a key listing
(``GET /v1/kv``, a coverage request: ``coverage_many`` answers all the
partitions a node is asked for from the one database, already merged and cut
to the page size, so a node's reply is one short sorted list).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engines.kv import entries
from engines.kv.entries import Entry
from legion.dashboard import DashboardPanel, PanelLookup
from legion.durability import Durability, sqlite_synchronous
from legion.engine import Cluster, Engine, HttpRequest, HttpResponse, Route, WriteItem
from legion.errors import BadRequest, ConfigError, NotFound, NotOwner
from legion.limits import REQUEST_DEADLINE_MS, WRITE_MANY_ITEMS_MAX
from legion.replication import Operation

DATABASE_FILE = "kv.sqlite"
SCHEMA_VERSION = 2
# fold reads this many rows per query, so no read transaction stays open
# while the caller (a handoff sender) is slow to consume them.
FOLD_PAGE_ROWS = 512
BUSY_TIMEOUT_S = REQUEST_DEADLINE_MS / 1000

SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    partition INTEGER NOT NULL,
    key BLOB NOT NULL,
    hlc INTEGER NOT NULL,
    origin TEXT NOT NULL,
    deleted INTEGER NOT NULL CHECK (deleted IN (0, 1)),
    content_type TEXT,
    value BLOB,
    CHECK ((deleted = 1) = (value IS NULL)),
    PRIMARY KEY (partition, key)
) WITHOUT ROWID
"""

# Replace a row only when the incoming version is newer. Row values compare
# left to right, like Python tuples; origin is TEXT with the BINARY collation,
# i.e. UTF-8 byte order, which is code-point order — the same order Python
# uses for str, so SQLite and legion.replication.supersedes agree.
UPSERT = """
INSERT INTO entries (partition, key, hlc, origin, deleted, content_type, value)
VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (partition, key) DO UPDATE SET
    hlc = excluded.hlc, origin = excluded.origin, deleted = excluded.deleted,
    content_type = excluded.content_type, value = excluded.value
WHERE (excluded.hlc, excluded.origin) > (entries.hlc, entries.origin)
"""

SELECT_ONE = "SELECT hlc, origin, deleted, content_type, value FROM entries WHERE partition = ? AND key = ?"
SELECT_PAGE = (
    "SELECT key, hlc, origin, deleted, content_type, value FROM entries"
    " WHERE partition = ? AND key > ? ORDER BY key LIMIT ?"
)
SELECT_VERSIONS = (
    "SELECT key, hlc, origin FROM entries WHERE partition = ? AND key > ? ORDER BY key LIMIT ?"
)
SELECT_VERSION = "SELECT hlc, origin FROM entries WHERE partition = ? AND key = ?"
COUNT_ENTRIES = "SELECT SUM(deleted = 0), SUM(deleted) FROM entries"
DELETE_PARTITION = "DELETE FROM entries WHERE partition = ?"
# Live keys of one partition in [low, high) after a cursor, in order; tombstones are not listed.
SELECT_KEYS = (
    "SELECT key FROM entries WHERE partition = ? AND key >= ? AND key > ? AND deleted = 0 ORDER BY key LIMIT ?"
)
SELECT_KEYS_BELOW = (
    "SELECT key FROM entries WHERE partition = ? AND key >= ? AND key > ? AND key < ? AND deleted = 0"
    " ORDER BY key LIMIT ?"
)


def _connect(path: Path) -> sqlite3.Connection:
    # isolation_level=None: apply issues BEGIN/COMMIT itself. check_same_thread
    # is off only so that close() can run on any thread; a connection is still
    # used by one thread at a time (_Connection.lock).
    return sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)


@dataclass(eq=False)
class _Connection:
    """A SQLite connection, the lock its user holds, and whether close() took it away."""

    conn: sqlite3.Connection
    label: str
    lock: threading.Lock = field(default_factory=threading.Lock)
    closed: bool = False

    @contextmanager
    def use(self) -> Iterator[sqlite3.Connection]:
        with self.lock:
            # close() may win the race against a call that already found the partition.
            if self.closed:
                raise NotOwner(f"{self.label} was closed in the kv engine on this node")
            yield self.conn

    def close(self) -> None:
        with self.lock:  # waits for a statement in flight on another thread
            self.closed = True
            self.conn.close()


class _Store:
    """The node's kv database: a writer connection and per-thread readers."""

    def __init__(self, directory: Path, durability: Durability) -> None:
        self.label = f"the database {directory / DATABASE_FILE}"
        self.path = directory / DATABASE_FILE
        directory.mkdir(parents=True, exist_ok=True)
        writer = _connect(self.path)
        version = writer.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, SCHEMA_VERSION):
            writer.close()
            raise ConfigError(f"{self.path} has kv schema version {version}; this code knows {SCHEMA_VERSION}")
        writer.execute("PRAGMA journal_mode=WAL")  # persistent: stored in the file
        writer.execute(f"PRAGMA synchronous={sqlite_synchronous(durability)}")  # per connection
        writer.execute(SCHEMA)
        writer.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        self.writer = _Connection(writer, self.label)
        self._local = threading.local()
        self._readers: list[_Connection] = []
        self._readers_lock = threading.Lock()  # guards _readers and closed
        self.closed = False

    def reader(self) -> _Connection:
        """This thread's reader connection, opened on first use.

        One per worker thread that ever read; the runtime's worker pool is
        bounded, so the number of readers is too.
        """
        reader: _Connection | None = getattr(self._local, "reader", None)
        if reader is not None:
            return reader
        with self._readers_lock:
            if self.closed:  # else a reader opened after close() would never be closed
                raise NotOwner(f"{self.label} was closed in the kv engine on this node")
            conn = _connect(self.path)
            conn.execute("PRAGMA query_only=1")  # a reader that writes is a bug
            reader = self._local.reader = _Connection(conn, self.label)
            self._readers.append(reader)
        return reader

    def close(self) -> None:
        with self._readers_lock:
            self.closed = True
            readers, self._readers = self._readers, []
        for connection in [self.writer, *readers]:
            connection.close()


class KVEngine(Engine):
    """A replicated key/value store: last-writer-wins per key, tombstones for deletes."""

    name = entries.ENGINE_NAME
    inline_reads = True  # a read is one primary-key lookup in SQLite

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self._db: _Store | None = None
        self._open: set[int] = set()
        self._lock = threading.Lock()  # open/close race with worker threads' lookups

    def open(self, partition: int, directory: Path) -> None:
        with self._lock:
            if self._db is None:
                self._db = _Store(self.root, self.durability)
            self._open.add(partition)

    def close(self, partition: int) -> None:
        with self._lock:
            self._open.discard(partition)
            db, last = self._db, not self._open
            if last:
                self._db = None
        if last and db is not None:
            db.close()

    def drop(self, partition: int) -> None:
        with self._store(partition).writer.use() as conn:
            conn.execute(DELETE_PARTITION, (partition,))

    def validate(self, op: Operation) -> None:
        entries.entry_of(op)  # raises BadRequest for anything apply would refuse

    def apply(self, partition: int, ops: Sequence[Operation]) -> None:
        self.apply_batch({partition: ops})

    def apply_batch(self, batch: Mapping[int, Sequence[Operation]]) -> None:
        # Decode everything first: a malformed batch fails before touching the
        # database. An Entry's fields are the table's columns after the key.
        db = None
        for partition in batch:
            db = self._store(partition)
        if db is None:
            return
        rows = [(p, op.key, *entries.entry_of(op)) for p, ops in batch.items() for op in ops]
        with db.writer.use() as conn:
            conn.execute("BEGIN")
            try:
                conn.executemany(UPSERT, rows)
            except BaseException:
                if conn.in_transaction:  # SQLite may already have rolled back
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def read(self, partition: int, query: Any) -> list[Any] | None:
        """``query`` is the key's bytes; the reply is ``Entry.to_wire()`` or None."""
        if not isinstance(query, bytes):
            raise BadRequest("a kv read query is the key as bytes")
        with self._store(partition).reader().use() as conn:
            row = conn.execute(SELECT_ONE, (partition, query)).fetchone()
        return None if row is None else _entry(row).to_wire()

    def coverage(self, partition: int, query: Any) -> list[bytes]:
        """One partition's page of a key listing (the runtime calls ``coverage_many``)."""
        return self.coverage_many([partition], query)

    def coverage_many(self, partitions: Sequence[int], query: Any) -> list[bytes]:
        """A node's share of a key listing: the first ``limit`` live keys of ``partitions``
        matching the query (``entries.list_query``), sorted and merged into one list."""
        prefix, after, limit = entries.check_list_query(query)
        low, high = entries.key_range(prefix)
        stores = [self._store(p) for p in partitions]  # NotOwner before reading anything
        pages: list[list[bytes]] = []
        for partition, store in zip(partitions, stores):
            with store.reader().use() as conn:
                if high is None:
                    rows = conn.execute(SELECT_KEYS, (partition, low, after or b"", limit)).fetchall()
                else:
                    rows = conn.execute(SELECT_KEYS_BELOW, (partition, low, after or b"", high, limit)).fetchall()
            pages.append([key for (key,) in rows])
        keys, _ = entries.merge_key_lists(pages, limit)
        return keys

    def fold(self, partition: int) -> Iterator[Operation]:
        # Keyset pagination. Rows are never deleted (a delete is a tombstone
        # row), so every key present when the fold starts is visited; a row
        # updated meanwhile yields the old or the new version, and the log
        # tail the core sends after the fold covers the difference.
        store = self._store(partition)
        after = b""
        while True:
            # The reader is looked up per page: a generator may resume on another thread.
            with store.reader().use() as conn:
                page = conn.execute(SELECT_PAGE, (partition, after, FOLD_PAGE_ROWS)).fetchall()
            for key, *rest in page:
                yield entries.operation_of(partition, key, _entry(rest))
            if len(page) < FOLD_PAGE_ROWS:
                return
            after = page[-1][0]

    def versions(self, partition: int, keys: Collection[bytes] | None = None) -> Iterator[tuple[bytes, bytes]]:
        """Each key's winning ``hlc@origin`` (tombstones too): paged like ``fold``, or one lookup per key."""
        store = self._store(partition)
        if keys is not None:
            for key in keys:
                with store.reader().use() as conn:
                    row = conn.execute(SELECT_VERSION, (partition, key)).fetchone()
                if row is not None:
                    yield key, entries.digest_version(*row)
            return
        after = b""
        while True:
            with store.reader().use() as conn:
                page = conn.execute(SELECT_VERSIONS, (partition, after, FOLD_PAGE_ROWS * 8)).fetchall()
            for key, hlc, origin in page:
                yield key, entries.digest_version(hlc, origin)
            if len(page) < FOLD_PAGE_ROWS * 8:
                return
            after = page[-1][0]

    def fold_keys(self, partition: int, keys: Collection[bytes]) -> Iterator[Operation]:
        """The entries of ``keys`` this partition holds, as operations: one lookup per key."""
        store = self._store(partition)
        for key in keys:
            with store.reader().use() as conn:
                row = conn.execute(SELECT_ONE, (partition, key)).fetchone()
            if row is not None:
                yield entries.operation_of(partition, key, _entry(row))

    def metrics(self) -> Mapping[str, float]:
        """Live keys and tombstones stored on this node, over every partition it holds."""
        db = self._db
        if db is None:
            return {"keys": 0, "tombstones": 0}
        try:
            with db.reader().use() as conn:
                live, dead = conn.execute(COUNT_ENTRIES).fetchone()
        except NotOwner:  # closed meanwhile: the node holds nothing any more
            return {"keys": 0, "tombstones": 0}
        return {"keys": live or 0, "tombstones": dead or 0}

    def dashboard_panel(self) -> DashboardPanel:
        return DashboardPanel(
            title="Key/value",
            figures={"keys": "keys stored (all replicas)", "tombstones": "tombstones"},
            lookups=[PanelLookup(label="Look up a key", path="/v1/kv/{key}", fields=["key"])],
        )

    def routes(self) -> Sequence[Route]:
        return (
            Route("POST", "/v1/kv", bulk_put_handler),
            Route("GET", "/v1/kv", list_handler),
            Route("PUT", "/v1/kv/{key}", put_handler),
            Route("GET", "/v1/kv/{key}", get_handler),
            Route("DELETE", "/v1/kv/{key}", delete_handler),
        )

    @classmethod
    def cli(cls) -> Any:
        from engines.kv.cli import app  # imported here: a node serving requests never needs typer

        return app

    def _store(self, partition: int) -> _Store:
        db = self._db
        if partition not in self._open or db is None:
            raise NotOwner(f"partition {partition} is not open in the kv engine on this node")
        return db


def _entry(row: Sequence[Any]) -> Entry:
    hlc, origin, deleted, content_type, value = row
    return Entry(hlc, origin, bool(deleted), content_type, value)


# HTTP handlers: parse and validate, call the coordinator, shape the answer.
# Errors are raised as LegionErrors; the runtime turns them into responses.


async def put_handler(req: HttpRequest, cluster: Cluster) -> HttpResponse:
    key = req.path_params["key"]
    raw_key = entries.parse_key(key)
    body = entries.encode_put(req.headers.get("Content-Type"), req.body)
    result = await cluster.write(
        entries.ENGINE_NAME, raw_key, entries.KIND_PUT, body, w=req.int_param("w"), refresh=req.flag_param("refresh")
    )
    return HttpResponse.json({"key": key, "partition": result.partition, "hlc": result.hlc, "acks": result.acks})


async def get_handler(req: HttpRequest, cluster: Cluster) -> HttpResponse:
    key = req.path_params["key"]
    raw_key = entries.parse_key(key)
    replies = await cluster.read(entries.ENGINE_NAME, raw_key, raw_key, r=req.int_param("r"))
    entry = entries.newest(replies)
    if entry is None or entry.deleted:
        raise NotFound(f"key {key!r} not found")
    assert entry.value is not None and entry.content_type is not None
    headers = {"X-Legion-HLC": str(entry.hlc)}
    return HttpResponse(body=entry.value, content_type=entry.content_type, headers=headers)


async def delete_handler(req: HttpRequest, cluster: Cluster) -> HttpResponse:
    key = req.path_params["key"]
    raw_key = entries.parse_key(key)
    result = await cluster.write(
        entries.ENGINE_NAME, raw_key, entries.KIND_DELETE, b"", w=req.int_param("w"), refresh=req.flag_param("refresh")
    )
    return HttpResponse.json({"key": key, "deleted": True, "hlc": result.hlc, "acks": result.acks})


async def bulk_put_handler(req: HttpRequest, cluster: Cluster) -> HttpResponse:
    """Many puts in one request: NDJSON lines or a msgpack list; one result per item, in order."""
    w, refresh = req.int_param("w"), req.flag_param("refresh")
    lines = entries.parse_bulk(req.body, req.headers.get("Content-Type"))
    if not lines:
        raise BadRequest('the body holds no items: send NDJSON lines {"key": …, "value": …} or a msgpack list')
    if len(lines) > WRITE_MANY_ITEMS_MAX:
        raise BadRequest(f"a bulk put holds at most {WRITE_MANY_ITEMS_MAX} items, got {len(lines)}; split it")
    writable = [WriteItem(line.key, entries.KIND_PUT, line.body) for line in lines if line.error is None]
    outcomes = await cluster.write_many(entries.ENGINE_NAME, writable, w=w, refresh=refresh) if writable else []
    results = entries.bulk_results(lines, outcomes)
    failed = sum(1 for result in results if "error" in result)
    return HttpResponse.json({"written": len(results) - failed, "failed": failed, "results": results})


async def list_handler(req: HttpRequest, cluster: Cluster) -> HttpResponse:
    """Live keys in key order: ``?prefix=`` to narrow, ``?after=`` to page, ``?limit=`` per page."""
    prefix = entries.parse_prefix(req.query.get("prefix", ""))
    after = entries.parse_key(req.query["after"]) if req.query.get("after") else None
    limit = entries.check_list_limit(req.int_param("limit"))
    allow_partial = req.flag_param("allow_partial")
    # One more than the page: whether it comes back says if there is a next page.
    query = entries.list_query(prefix, after, limit + 1)
    result = await cluster.coverage(entries.ENGINE_NAME, query, allow_partial=allow_partial)
    keys, truncated = entries.merge_key_lists((reply.value for reply in result.replies), limit)
    return HttpResponse.json(
        {
            "keys": [key.decode("utf-8", "replace") for key in keys],
            "truncated": truncated,
            "partitions_missing": list(result.missing),
        }
    )
