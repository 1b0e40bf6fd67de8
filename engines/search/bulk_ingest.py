"""Bulk ingest on the coordinator: documents checked line by line, written as one ``batch`` per partition per chunk.

I/O (through the ``Cluster`` handle). A bulk request is a stream of NDJSON
lines; ``BulkIngest`` judges each one as it arrives — parsed, checked
against the schema, its field lengths counted and its source chosen
(``document_parts``) — and files it under its partition. A line that fails
is reported at once with its number, and nothing of it is written.

Every ``BULK_CHUNK_DOCS`` documents (and at the end) the chunk is written:
one ``batch`` operation per partition holding that partition's documents
of the chunk, in line order (``operations`` explains the batch and how its
documents' versions compare), all of them in one ``Cluster.write_many``
call. So the per-operation costs of the write path — planning, quorum
tallies, framing, a log row and a decode on every replica — are paid per
partition and chunk instead of per document. A partition's batch is cut
early at ``BATCH_BYTES_MAX`` bytes of sources, so that an operation stays
far below the core's body limit; a document too big for any operation
fails alone, as the batch that holds only it.

A batch's outcome is each of its documents' outcome: acknowledged, or
failed with the batch's error, reported by line. At most
``BULK_CHUNKS_IN_FLIGHT`` chunks of one request are written at once, so
checking the next chunk overlaps writing the previous ones.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from engines.search.document_builder import LengthCounter
from engines.search.operations import (
    ENGINE_NAME,
    KIND_BATCH,
    batch_body,
    catalog_keys,
    encode_source,
    index_body,
)
from engines.search.schema import IndexSchema, check_document
from legion import ndjson
from legion.engine import Cluster, WriteItem, WriteResult
from legion.errors import BadRequest, LegionError
from legion.keyspace import key_bytes, partition_of

# Documents per chunk: with P partitions a batch holds about BULK_CHUNK_DOCS / P of them,
# and every per-operation cost is shared by that many documents.
BULK_CHUNK_DOCS = 4_000
BULK_CHUNKS_IN_FLIGHT = 2
# Source bytes per batch operation, far below legion.limits.OP_BODY_BYTES_MAX (4 MiB and some).
BATCH_BYTES_MAX = 1024 * 1024


def document_body(
    index: str, incarnation: str, checked: dict[str, Any], count_lengths: LengthCounter, sent: bytes | None = None
) -> bytes:
    """The body of a checked document's ``index`` operation, its field lengths counted here once for every replica."""
    source, lengths = document_parts(checked, count_lengths, sent)
    return index_body(index, incarnation, source, lengths)


def document_parts(
    checked: dict[str, Any], count_lengths: LengthCounter, sent: bytes | None = None, plain: bool = False
) -> tuple[bytes, list[int]]:
    """A checked document's source (JSON bytes) and field lengths, as ``index`` and ``batch`` operations carry them.

    ``sent`` is the JSON text the document was parsed from, if ``checked`` is
    exactly what it parsed to (no null dropped): it becomes the source as it is,
    unless it may hide text that is not valid Unicode (a ``\\u`` escape, or the
    UTF-8 lead byte of a surrogate) or is not UTF-8 (a NUL byte: UTF-16 or 32),
    in which case the document is encoded again, which refuses such text.
    ``plain`` (``ndjson.Line.plain``) says that the parser already ruled those out."""
    try:
        lengths = count_lengths(checked)
        if sent is not None:
            sent = sent.strip()
        if sent is None or not sent.startswith(b"{"):
            sent = encode_source(checked)
        elif not plain and (b"\\u" in sent or b"\xed" in sent or b"\x00" in sent):
            sent = encode_source(checked)
        return sent, lengths
    except ValueError as exc:  # UnicodeEncodeError: JSON text can name a lone surrogate, which is no text
        raise BadRequest(f"the document holds text that is not valid Unicode: {exc}") from None


class _Batch:
    """One partition's documents of a chunk, in line order: what its ``batch`` operation will carry."""

    __slots__ = ("partition", "lines", "ids", "sources", "lengths", "size")

    def __init__(self, partition: int) -> None:
        self.partition = partition
        self.lines: list[int] = []
        self.ids: list[str] = []
        self.sources: list[bytes] = []
        self.lengths: list[int] = []  # flat: every document's counts one after the other
        self.size = 0


class BulkIngest:
    """A bulk request in progress: documents checked and filed by partition, chunks written a few at a time."""

    def __init__(self, cluster: Cluster, index: str, incarnation: str, schema: IndexSchema, w: int | None) -> None:
        self.cluster, self.index, self.incarnation, self.schema = cluster, index, incarnation, schema
        self.w = w
        self.partitions = cluster.partitions
        self.count_lengths = LengthCounter(schema)
        self.indexed = 0
        self.errors: list[dict[str, Any]] = []
        self._keys = catalog_keys(index, self.partitions)
        self._open: dict[int, _Batch] = {}  # the chunk's batch being filled, per partition
        self._full: list[_Batch] = []  # the chunk's batches cut at BATCH_BYTES_MAX
        self._docs = 0
        self._slots = asyncio.Semaphore(BULK_CHUNKS_IN_FLIGHT)
        self._running: set[asyncio.Task[None]] = set()

    async def add(self, line: ndjson.Line) -> None:
        """Check one line and file its document under its partition; write the chunk once it is full."""
        value = line.value
        doc_id = value.get(self.schema.id_field) if isinstance(value, dict) else None
        try:
            if line.error is not None:
                raise line.error
            doc_id, checked = check_document(self.schema, value)
            sent = line.raw if checked is value else None  # no null dropped: the line is the source
            source, lengths = document_parts(checked, self.count_lengths, sent, line.plain)
            partition = partition_of(key_bytes(doc_id), self.partitions)
        except LegionError as exc:
            self._error(line.number, doc_id, exc)
            return
        batch = self._open.get(partition)
        if batch is None:
            batch = self._open[partition] = _Batch(partition)
        elif batch.size + len(source) > BATCH_BYTES_MAX:
            self._full.append(batch)
            batch = self._open[partition] = _Batch(partition)
        batch.lines.append(line.number)
        batch.ids.append(doc_id)
        batch.sources.append(source)
        batch.lengths += lengths
        batch.size += len(source) + len(doc_id)
        self._docs += 1
        if self._docs >= BULK_CHUNK_DOCS:
            await self._launch()

    async def finish(self) -> None:
        """Write what is left and wait for every chunk of the request."""
        if self._docs:
            await self._launch()
        if self._running:
            await asyncio.gather(*self._running)

    async def _launch(self) -> None:
        batches = [*self._full, *self._open.values()]
        self._full, self._open, self._docs = [], {}, 0
        await self._slots.acquire()
        task = asyncio.ensure_future(self._write(batches))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _write(self, batches: Sequence[_Batch]) -> None:
        try:
            index, incarnation, partitions, keys = self.index, self.incarnation, self.partitions, self._keys
            items = [
                WriteItem(keys[b.partition], KIND_BATCH, batch_body(index, incarnation, partitions, b.ids, b.sources, b.lengths))
                for b in batches
            ]
            try:
                results: Sequence[WriteResult | LegionError] = await self.cluster.write_many(ENGINE_NAME, items, w=self.w)
            except LegionError as exc:
                results = [exc] * len(items)
            for batch, result in zip(batches, results):
                if isinstance(result, LegionError):
                    for number, doc_id in zip(batch.lines, batch.ids):
                        self._error(number, doc_id, result)
                else:
                    self.indexed += len(batch.ids)
        finally:
            self._slots.release()

    def _error(self, number: int, doc_id: Any, exc: LegionError) -> None:
        self.errors.append({"line": number, "id": doc_id if isinstance(doc_id, str) else None, "error": exc.code, "message": exc.message})
