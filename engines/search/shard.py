"""One node's tantivy index for one search index, holding every partition the node has.

I/O: tantivy files under ``<engine root>/indexes/<incarnation>/``. Only the
index-side modules import tantivy (this one, ``document_builder``, ``scope``,
``query_compile``, ``node_hits``, ``local_search``); the pure ones never do.

Why one index per node and not one per partition (as Riak Search did it):
tantivy wants one writer per index directory with a heap of its own, so 64
writers per node would be 64 heaps and 64 merge schedules; and a coverage
plan gives a node many partitions at once, which one filtered query answers
where 20 small ones would not. Every document carries the engine's own
fields next to the user's (``document_builder`` lists them and builds the
documents).

Writes (``apply``) go into the writer and become visible and durable only at
``commit`` (commit + reader reload), which the core calls as ``flush``. Until
then the versions of what was applied are kept in memory (``pending``), so
that last-writer-wins decisions and ``get`` see them. Each commit also
replaces the ``view`` searches use (``scope.SearcherView``: the committed
searcher and what is known about it). A document is handed to tantivy as
JSON text when it can be (``document_builder``): tantivy parses it in Rust.
Threads: ``apply``, ``commit`` and ``drop_partition`` come from the node's
single writer thread; ``searcher``, ``view``, ``get`` and ``fold`` from worker
threads.
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import tantivy

from engines.search.document_builder import (
    DELETED,
    HLC,
    ID,
    INTERNAL_FIELDS,
    ORIGIN,
    PARTITION,
    SOURCE,
    DocumentBuilder,
    length_fields,
)
from engines.search.operations import (
    ENGINE_NAME,
    KIND_DELETE,
    KIND_INDEX,
    Decoded,
    delete_body,
    index_body,
)
from engines.search.query_compile import IndexFields
from engines.search.schema import FieldSpec, IndexSchema
from engines.search.scope import SearcherView
from legion.replication import Operation

log = logging.getLogger(__name__)

WRITER_HEAP_BYTES = 96 * 1024 * 1024
WRITER_THREADS = 1
FOLD_PAGE_DOCS = 1_000


def index_fields(schema: IndexSchema) -> IndexFields:
    """What ``query_compile`` must know of an index: every field in the order ``tantivy_schema`` adds them."""
    lengths = length_fields(schema)
    names = (*(f.name for f in schema.fields), *INTERNAL_FIELDS, *lengths.values())
    return IndexFields(tantivy_schema(schema), names, lengths, ID, PARTITION, DELETED)


def tantivy_schema(schema: IndexSchema) -> tantivy.Schema:
    """The tantivy schema of an index: the user's fields, then the engine's own, then the length fields."""
    builder = tantivy.SchemaBuilder()
    for spec in schema.fields:
        _add_field(builder, spec)
    builder.add_text_field(ID, stored=True, tokenizer_name="raw")
    builder.add_unsigned_field(PARTITION, stored=True, indexed=True, fast=True)
    builder.add_unsigned_field(DELETED, indexed=True, fast=True)
    builder.add_unsigned_field(HLC, stored=True, fast=True)
    builder.add_text_field(ORIGIN, stored=True, tokenizer_name="raw", index_option="basic")
    builder.add_bytes_field(SOURCE, stored=True, indexed=False)
    for length_field in length_fields(schema).values():
        builder.add_unsigned_field(length_field, fast=True)
    return builder.build()


def _add_field(builder: tantivy.SchemaBuilder, spec: FieldSpec) -> None:
    name, stored, indexed, fast = spec.name, spec.stored, spec.indexed, spec.fast
    if spec.type == "text":
        builder.add_text_field(name, stored=stored, fast=fast, tokenizer_name=spec.tokenizer)
    elif spec.type == "keyword":
        builder.add_text_field(name, stored=stored, fast=fast, tokenizer_name="raw")
    elif spec.type == "i64":
        builder.add_integer_field(name, stored=stored, indexed=indexed, fast=fast)
    elif spec.type == "u64":
        builder.add_unsigned_field(name, stored=stored, indexed=indexed, fast=fast)
    elif spec.type == "f64":
        builder.add_float_field(name, stored=stored, indexed=indexed, fast=fast)
    elif spec.type == "bool":
        builder.add_boolean_field(name, stored=stored, indexed=indexed, fast=fast)
    elif spec.type == "date":
        builder.add_date_field(name, stored=stored, indexed=indexed, fast=fast)
    elif spec.type == "json":
        builder.add_json_field(name, stored=stored, tokenizer_name=spec.tokenizer)
    else:  # parse_schema admits nothing else
        raise AssertionError(f"unknown field type {spec.type!r}")


class Version(NamedTuple):
    """The newest write this shard holds for one id: its version, partition, and source (None: a tombstone)."""

    hlc: int
    origin: str
    partition: int
    source: bytes | None

    @property
    def order(self) -> tuple[int, str]:
        return (self.hlc, self.origin)


class Shard:
    """The tantivy index of one incarnation of a search index on this node."""

    def __init__(self, directory: Path, index: str, incarnation: str, schema: IndexSchema) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.index_name = index
        self.incarnation = incarnation
        self.schema = schema
        self.fields = index_fields(schema)
        self.tantivy_schema = self.fields.schema
        self.index = tantivy.Index(self.tantivy_schema, path=str(directory))
        self._writer: tantivy.IndexWriter | None = self.index.writer(WRITER_HEAP_BYTES, WRITER_THREADS)
        self._pending: dict[str, Version] = {}
        self._lock = threading.Lock()  # guards _pending between the writer thread and readers
        self._builder = DocumentBuilder(index, schema, self.tantivy_schema)
        self.index.reload()
        self._view = SearcherView(self.index.searcher(), self.fields)
        self.reloads = 0  # searcher reloads since the shard opened (for the engine's metrics)

    # --- the writer thread ----------------------------------------------------

    def apply(self, items: Sequence[tuple[Operation, Decoded]]) -> None:
        """Index or tombstone each id whose incoming version is newer than the one held."""
        newest: dict[str, tuple[Operation, Decoded]] = {}
        for op, decoded in items:
            doc_id = op.key.decode("utf-8", "surrogatepass")
            held = newest.get(doc_id)
            if held is None or op.version > held[0].version:
                newest[doc_id] = (op, decoded)
        held_versions = self._versions(list(newest))
        writer = self._require_writer()
        applied: dict[str, Version] = {}
        try:
            for doc_id, (op, decoded) in newest.items():
                held = held_versions.get(doc_id)
                if held is not None:
                    if held >= op.version:
                        continue
                    writer.delete_documents_by_term(ID, doc_id)
                source = decoded.source if op.kind == KIND_INDEX else None
                self._add(writer, doc_id, op, source, decoded.lengths)
                applied[doc_id] = Version(op.hlc, op.origin, op.partition, source)
        finally:
            # What reached the writer is pending even if a later document failed: last-writer-wins
            # decisions (and a re-apply of the batch) must see it.
            with self._lock:
                self._pending.update(applied)

    def _add(self, writer: tantivy.IndexWriter, doc_id: str, op: Operation, source: bytes | None, lengths: list[int] | None) -> None:
        """Add one document: as JSON text that tantivy parses when it can, else built field by field."""
        if source is not None:
            text = self._builder.json_text(doc_id, op, source, lengths)
            if text is not None:
                try:
                    writer.add_json(text)
                    return
                except ValueError:
                    pass  # a value tantivy's JSON reader refuses: the per-field path indexes the rest
        writer.add_document(self._builder.document(doc_id, op, source))

    def commit(self) -> None:
        """Make everything applied durable and searchable (tantivy commit, then reader reload)."""
        writer = self._require_writer()
        with self._lock:
            dirty = bool(self._pending)
        if not dirty:
            return
        writer.commit()
        self._reload()
        with self._lock:
            self._pending.clear()

    def _reload(self) -> None:
        """Point readers at what was just committed: a new searcher, and a new view of it."""
        self.index.reload()
        self._view = SearcherView(self.index.searcher(), self.fields)
        self.reloads += 1

    def drop_partition(self, partition: int) -> None:
        """Delete every document and tombstone of ``partition`` from this node's index, durably."""
        writer = self._require_writer()
        # By query, not by term: tantivy-py builds an i64 term from a Python int, which misses a u64 field.
        writer.delete_documents_by_query(tantivy.Query.term_query(self.tantivy_schema, PARTITION, partition))
        writer.commit()
        self._reload()
        with self._lock:
            self._pending = {k: v for k, v in self._pending.items() if v.partition != partition}

    def close(self, *, delete: bool = False) -> None:
        """Release the writer (waiting for merges); with ``delete``, remove the index's files too."""
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.wait_merging_threads()
        if delete:
            shutil.rmtree(self.directory, ignore_errors=True)

    def _require_writer(self) -> tantivy.IndexWriter:
        if self._writer is None:
            raise RuntimeError(f"search index {self.index_name!r} is closed on this node")
        return self._writer

    def _versions(self, ids: list[str]) -> dict[str, tuple[int, str]]:
        """The version held for each id that has one: pending first, then the committed index."""
        out: dict[str, tuple[int, str]] = {}
        with self._lock:
            for doc_id in ids:
                pending = self._pending.get(doc_id)
                if pending is not None:
                    out[doc_id] = pending.order
        lookup = [doc_id for doc_id in ids if doc_id not in out]
        if lookup:
            searcher = self.index.searcher()
            query = tantivy.Query.term_set_query(self.tantivy_schema, ID, lookup)
            for _score, address in searcher.search(query, limit=len(lookup), count=False).hits:
                doc = searcher.doc(address)
                out[doc.get_first(ID)] = (doc.get_first(HLC), doc.get_first(ORIGIN))
        return out

    # --- worker threads -------------------------------------------------------

    def searcher(self) -> tantivy.Searcher:
        return self.index.searcher()

    def view(self) -> SearcherView:
        """The searcher of the last commit, and what is known about it (one per commit, shared by searches)."""
        return self._view

    def get(self, doc_id: str) -> Version | None:
        """The newest write held for ``doc_id``, applied or committed; None if none."""
        with self._lock:
            pending = self._pending.get(doc_id)
        if pending is not None:
            return pending
        searcher = self.index.searcher()
        hits = searcher.search(tantivy.Query.term_query(self.tantivy_schema, ID, doc_id), limit=1, count=False).hits
        if not hits:
            return None
        return _version(searcher.doc(hits[0][1]))

    def fold(self, partition: int) -> Iterator[Operation]:
        """Operations rebuilding this shard's share of ``partition``: documents and tombstones."""
        with self._lock:
            pending = {k: v for k, v in self._pending.items() if v.partition == partition}
        searcher = self.index.searcher()
        query = tantivy.Query.term_query(self.tantivy_schema, PARTITION, partition)
        total = searcher.search(query, limit=1, count=True).count
        if total:
            for _score, address in searcher.search(query, limit=total, count=False).hits:
                doc = searcher.doc(address)
                doc_id = doc.get_first(ID)
                if doc_id not in pending:
                    yield self._operation(doc_id, _version(doc))
        for doc_id, version in pending.items():
            yield self._operation(doc_id, version)

    def _operation(self, doc_id: str, version: Version) -> Operation:
        key = doc_id.encode("utf-8", "surrogatepass")
        if version.source is None:
            kind, body = KIND_DELETE, delete_body(self.index_name, self.incarnation)
        else:
            kind, body = KIND_INDEX, index_body(self.index_name, self.incarnation, version.source)
        return Operation(ENGINE_NAME, version.partition, key, version.hlc, version.origin, kind, body)

    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.directory.iterdir() if f.is_file())


def _version(doc: tantivy.Document) -> Version:
    partition = doc.get_first(PARTITION)
    source = doc.get_first(SOURCE)
    return Version(doc.get_first(HLC), doc.get_first(ORIGIN), partition if partition is not None else -1, source)
