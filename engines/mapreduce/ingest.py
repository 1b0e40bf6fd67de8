"""Ingest: rows arriving at a node, spread over the partitions as batch operations.

I/O (through the ``Cluster`` handle, and one decoding thread per request).
The rows come as an Arrow IPC stream or NDJSON, streamed: the event loop
feeds the body's chunks into a bounded pipe, a worker thread decodes record
batches from it (Arrow releases the GIL while it does), normalises their
types, cuts them into per-partition batches (``RowSplitter``) and encodes
each as one ``batch`` operation with a fresh unique id; the loop writes them
with ``write_many``, ``WRITES_IN_FLIGHT_MAX`` chunks at a time. The decoder
waits when that many are in flight, and the feeder when the pipe is full, so
memory stays bounded whatever the body's size.

Placement of rows: with a key column, by ``rows.stable_hash`` of the key
(``hash & (partitions - 1)``), vectorised; without one, consecutive slices of
``batch_rows`` rows go to the partitions in turn, starting at a random one —
even, and with no per-row work at all.
"""

from __future__ import annotations

import asyncio
import io
import queue
import random
import secrets
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.json as pa_json

from engines.mapreduce import rows as arrow_rows
from engines.mapreduce.datasets import ENGINE_NAME, KIND_BATCH, batch_body, partition_keys
from legion.engine import Cluster, WriteItem
from legion.errors import BadRequest, DeadlineExceeded, LegionError, PayloadTooLarge
from legion.limits import OP_BODY_BYTES_MAX

# Rows per batch operation: ~8 MiB of Arrow data, ~2-4 MiB once compressed (under OP_BODY_BYTES_MAX).
BATCH_BYTES_TARGET = 8 * 1024 * 1024
BATCH_ROWS_MAX = 256 * 1024
# Rows a keyed ingest holds per request before it writes the fullest partitions' buffers anyway.
BUFFERED_BYTES_MAX = 128 * 1024 * 1024
BODY_OVERHEAD_BYTES = 4 * 1024
PIPE_CHUNKS_MAX = 16
PIPE_CHUNK_BYTES = 1024 * 1024
PIPE_STALL_S = 120.0
WRITES_IN_FLIGHT_MAX = 4
ITEMS_PER_WRITE_MAX = 16
NDJSON_BLOCK_BYTES = 8 * 1024 * 1024
ARROW_STREAM = "application/vnd.apache.arrow.stream"
NDJSON = "application/x-ndjson"


def new_id() -> str:
    """A sortable, unique id (creation time in ns, then randomness) for a batch, job or incarnation."""
    return f"{time.time_ns():016x}{secrets.token_hex(4)}"


class RowSplitter:
    """Cuts incoming tables into ``(partition, table)`` batches (see the module docstring). Pure."""

    def __init__(self, partitions: int, key_column: str = "", *, seed: int | None = None) -> None:
        self.partitions = partitions
        self.key_column = key_column
        self._next = random.Random(seed).randrange(partitions)
        self._buffers: dict[int, list[pa.Table]] = {}
        self._buffered_bytes: dict[int, int] = {}

    def add(self, table: pa.Table) -> list[tuple[int, pa.Table]]:
        if not table.num_rows:
            return []
        rows_per_batch = batch_rows(table)
        if not self.key_column:
            out = []
            for piece in arrow_rows.slices(table, rows_per_batch):
                out.append((self._next, piece))
                self._next = (self._next + 1) % self.partitions
            return out
        hashed = arrow_rows.stable_hash([table.column(self.key_column)])
        assignment = (hashed & np.uint64(self.partitions - 1)).astype(np.int64)
        for p, piece in enumerate(arrow_rows.split_by(table, assignment, self.partitions)):
            if piece is not None:
                self._buffers.setdefault(p, []).append(piece)
                self._buffered_bytes[p] = self._buffered_bytes.get(p, 0) + piece.nbytes
        return self._ready(rows_per_batch)

    def _ready(self, rows_per_batch: int) -> list[tuple[int, pa.Table]]:
        out = [(p, self._take(p)) for p in list(self._buffers) if sum(t.num_rows for t in self._buffers[p]) >= rows_per_batch]
        while self._buffered_bytes and sum(self._buffered_bytes.values()) > BUFFERED_BYTES_MAX:
            fullest = max(self._buffered_bytes, key=self._buffered_bytes.__getitem__)
            out.append((fullest, self._take(fullest)))
        return out

    def _take(self, partition: int) -> pa.Table:
        tables = self._buffers.pop(partition)
        self._buffered_bytes.pop(partition, None)
        return tables[0] if len(tables) == 1 else pa.concat_tables(tables)

    def finish(self) -> list[tuple[int, pa.Table]]:
        return [(p, self._take(p)) for p in sorted(self._buffers)]


def batch_rows(table: pa.Table) -> int:
    """How many rows of ``table``'s kind make one batch of about ``BATCH_BYTES_TARGET`` bytes."""
    per_row = max(1, table.nbytes // max(1, table.num_rows))
    return max(1, min(BATCH_ROWS_MAX, BATCH_BYTES_TARGET // per_row))


def batch_items(incarnation: str, partition: int, table: pa.Table, partitions: int) -> list[WriteItem]:
    """``table`` as batch operations of ``partition``, halved until each body fits an operation."""
    body = batch_body(incarnation, new_id(), table.num_rows, arrow_rows.encode_payload(table))
    if len(body) + BODY_OVERHEAD_BYTES <= OP_BODY_BYTES_MAX:
        return [WriteItem(partition_keys("rows", incarnation, partitions)[partition], KIND_BATCH, body)]
    if table.num_rows <= 1:
        raise PayloadTooLarge(f"one row is {len(body)} bytes encoded; a batch holds at most {OP_BODY_BYTES_MAX}")
    half = table.num_rows // 2
    return batch_items(incarnation, partition, table.slice(0, half), partitions) + batch_items(
        incarnation, partition, table.slice(half), partitions
    )


class BodyPipe(io.RawIOBase):
    """A blocking, bounded byte stream between the event loop (``put``) and a decoding thread (``readinto``)."""

    def __init__(self) -> None:
        super().__init__()
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=PIPE_CHUNKS_MAX)
        self._current = memoryview(b"")
        self._ended = False

    def readable(self) -> bool:
        return True

    def put(self, chunk: bytes | None, timeout_s: float = PIPE_STALL_S) -> None:
        try:
            self._queue.put(chunk, timeout=timeout_s)
        except queue.Full:
            raise DeadlineExceeded(f"the rows were not decoded for {timeout_s:g}s") from None

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        while not self._current:
            if self._ended:
                return 0
            try:
                chunk = self._queue.get(timeout=PIPE_STALL_S)
            except queue.Empty:
                raise DeadlineExceeded(f"the request body stalled for {PIPE_STALL_S:g}s") from None
            if chunk is None:
                self._ended = True
                return 0
            self._current = memoryview(chunk)
        size = min(len(buffer), len(self._current))
        buffer[:size] = self._current[:size]
        self._current = self._current[size:]
        return size


@dataclass
class IngestCounts:
    rows: int = 0
    batches: int = 0
    bytes: int = 0
    partitions: set[int] = field(default_factory=set)


def read_tables(content_type: str, source: io.RawIOBase, schema: pa.Schema | None) -> Iterator[pa.Table]:
    """Tables decoded from an Arrow IPC stream or NDJSON (``schema``: the dataset's, when it exists)."""
    if content_type.startswith(NDJSON):
        yield from _ndjson_tables(io.BufferedReader(source, PIPE_CHUNK_BYTES), schema)
        return
    if content_type and not content_type.startswith(ARROW_STREAM) and not content_type.startswith("application/octet-stream"):
        raise BadRequest(f"send rows as {ARROW_STREAM} or {NDJSON}, not {content_type!r}")
    try:
        # Buffered: Arrow expects a read of n bytes to return n bytes unless the stream ended.
        reader = ipc.open_stream(pa.PythonFile(io.BufferedReader(source, PIPE_CHUNK_BYTES), mode="r"))
        for batch in reader:
            yield pa.Table.from_batches([batch])
    except (pa.ArrowInvalid, OSError) as exc:
        raise BadRequest(f"the body is not a valid Arrow IPC stream (or it was cut short): {exc}") from None


def _ndjson_tables(source: io.BufferedReader, schema: pa.Schema | None) -> Iterator[pa.Table]:
    carry = b""
    while True:
        block = source.read(NDJSON_BLOCK_BYTES)
        data = carry + block
        if not block:
            if data.strip():
                table = _parse_ndjson(data, schema)
                yield table
            return
        cut = data.rfind(b"\n")
        if cut < 0:
            carry = data
            continue
        carry = data[cut + 1 :]
        if data[: cut + 1].strip():
            table = _parse_ndjson(data[: cut + 1], schema)
            schema = schema or arrow_rows.normalize_schema(table.schema)
            yield table


def _parse_ndjson(data: bytes, schema: pa.Schema | None) -> pa.Table:
    options = pa_json.ParseOptions(explicit_schema=schema, unexpected_field_behavior="error" if schema else "infer")
    try:
        return pa_json.read_json(io.BytesIO(data), parse_options=options)
    except pa.ArrowInvalid as exc:
        raise BadRequest(f"the NDJSON rows do not parse{' with the dataset schema' if schema else ''}: {exc}") from None


Prepare = Callable[[pa.Schema], Awaitable[tuple[str, str, pa.Schema]]]


class Ingester:
    """One request's ingest: decode in a thread, write on the loop (see the module docstring)."""

    def __init__(self, cluster: Cluster, loop: asyncio.AbstractEventLoop, w: int | None = None) -> None:
        self.cluster, self.loop, self.w = cluster, loop, w
        self.counts = IngestCounts()
        self._slots = asyncio.Semaphore(WRITES_IN_FLIGHT_MAX)
        self._running: set[asyncio.Task[None]] = set()
        self._errors: list[LegionError] = []

    def run_in_thread(self, tables: Iterator[pa.Table], prepare: Prepare, key_column: str | None) -> None:
        """Decode and split ``tables`` (called in a worker thread); ``prepare(schema)`` → (incarnation, key, schema)."""
        incarnation = ""
        schema: pa.Schema | None = None
        splitter: RowSplitter | None = None
        for table in tables:
            if splitter is None:
                incarnation, key, schema = self._call(prepare(arrow_rows.normalize_schema(table.schema)))
                splitter = RowSplitter(self.cluster.partitions, key)
            normalized = arrow_rows.normalize(table, schema)
            self._send(incarnation, splitter.add(normalized))
        if splitter is not None:
            self._send(incarnation, splitter.finish())
        self._call(self._drain())

    def _send(self, incarnation: str, pieces: list[tuple[int, pa.Table]]) -> None:
        items: list[WriteItem] = []
        for partition, table in pieces:
            items += batch_items(incarnation, partition, table, self.cluster.partitions)
            self.counts.rows += table.num_rows
            self.counts.partitions.add(partition)
        for start in range(0, len(items), ITEMS_PER_WRITE_MAX):
            self._call(self._launch(items[start : start + ITEMS_PER_WRITE_MAX]))

    def _call(self, coroutine: Awaitable[object]) -> object:
        future: Future[object] = asyncio.run_coroutine_threadsafe(coroutine, self.loop)  # type: ignore[arg-type]
        return future.result(timeout=PIPE_STALL_S)

    async def _launch(self, items: list[WriteItem]) -> None:
        if self._errors:
            raise self._errors[0]
        await self._slots.acquire()
        task = asyncio.ensure_future(self._write(items))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _write(self, items: list[WriteItem]) -> None:
        try:
            results = await self.cluster.write_many(ENGINE_NAME, items, w=self.w, refresh=True)
            for item, result in zip(items, results):
                if isinstance(result, LegionError):
                    self._errors.append(result)
                else:
                    self.counts.batches += 1
                    self.counts.bytes += len(item.body)
        except LegionError as exc:
            self._errors.append(exc)
        finally:
            self._slots.release()

    async def _drain(self) -> None:
        if self._running:
            await asyncio.gather(*list(self._running))
        if self._errors:
            raise self._errors[0]
