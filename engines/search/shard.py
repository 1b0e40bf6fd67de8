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

Writes (``apply``) are documents: one per ``index`` or ``delete`` operation,
one per entry of a ``batch``, each with its version ``(hlc, origin,
position)``; per id the newest wins (``operations`` explains versions), and a
``fold`` gives every document back as its own operation, its position kept.
They go into the writer and become visible and durable only at
``commit`` (commit + reader reload), which the core calls as ``flush``. Until
then the versions of what was applied are kept in memory (``pending``), so
that last-writer-wins decisions and ``get`` see them; once committed, their
versions (without the sources) stay remembered, up to ``RECENT_VERSIONS_MAX``,
so that anti-entropy's hash trees (``versions``) need not read them back. Each commit also
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
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path
import tantivy

from engines.search.document_builder import (
    DELETED,
    HLC,
    INTERNAL_FIELDS,
    LEGACY_ID,
    ORIGIN,
    PARTITION,
    POSITION,
    SOURCE,
    DocumentBuilder,
    Version,
    counted_fields,
    length_fields,
)
from engines.search.operations import (
    ENGINE_NAME,
    KIND_BATCH,
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
# Documents of a partition loaded in the time one id is looked up by its term (``Shard.held``): about 3.
ID_LOOKUP_DOCS = 3
# Versions of committed writes remembered per shard (about 200 bytes each), so that anti-entropy's
# hash trees, reading back the versions of what an ingest wrote, need not load those documents again.
RECENT_VERSIONS_MAX = 100_000


def index_fields(schema: IndexSchema) -> IndexFields:
    """What ``query_compile`` must know of an index: every field in the order ``tantivy_schema`` adds them."""
    lengths = length_fields(schema)
    names = (*(f.name for f in schema.fields), *INTERNAL_FIELDS, *lengths.values())
    return IndexFields(
        tantivy_schema(schema),
        names,
        lengths,
        id_field=schema.id_field,
        partition_field=PARTITION,
        deleted_field=DELETED,
        counted_fields=counted_fields(schema),
    )


def tantivy_schema(schema: IndexSchema) -> tantivy.Schema:
    """The tantivy schema of an index: the user's fields, then the engine's own, then the length fields.

    tantivy stores none of the user's fields but the id: ``_source`` holds the
    whole document, and is what a hit returns (its ``stored`` fields) and what
    snippets are cut from, so a second copy, field by field, would only double
    the document store that every indexed document is compressed into. The id
    is stored on its own because searches, folds and version lookups read it
    from every document they load, and ``_source`` would have to be parsed for it."""
    builder = tantivy.SchemaBuilder()
    for spec in schema.fields:
        _add_field(builder, spec, stored=spec.name == schema.id_field)
    builder.add_unsigned_field(PARTITION, stored=True, indexed=True, fast=True)
    builder.add_unsigned_field(DELETED, indexed=True, fast=True)
    builder.add_unsigned_field(HLC, stored=True)
    builder.add_text_field(ORIGIN, stored=True, tokenizer_name="raw", index_option="basic")
    builder.add_unsigned_field(POSITION, stored=True)
    builder.add_bytes_field(SOURCE, stored=True, indexed=False)
    for length_field in length_fields(schema).values():
        builder.add_unsigned_field(length_field, fast=True)
    return builder.build()


def _add_field(builder: tantivy.SchemaBuilder, spec: FieldSpec, stored: bool) -> None:
    name, indexed, fast = spec.name, spec.indexed, spec.fast
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


class Shard:
    """The tantivy index of one incarnation of a search index on this node."""

    def __init__(self, directory: Path, index: str, incarnation: str, schema: IndexSchema) -> None:
        self.directory = directory
        self.index_name = index
        self.incarnation = incarnation
        self.schema = schema
        self.fields = index_fields(schema)
        self.tantivy_schema = self.fields.schema
        self._id = schema.id_field
        self._builder = DocumentBuilder(index, schema, self.tantivy_schema)
        self.index = self._open_index()
        self._writer: tantivy.IndexWriter | None = self.index.writer(WRITER_HEAP_BYTES, WRITER_THREADS)
        self._pending: dict[str, Version] = {}
        # Per partition, id → (hlc, origin, position, tombstone) of writes committed since the shard opened,
        # the oldest partitions forgotten first past RECENT_VERSIONS_MAX: what the index holds for those ids.
        self._recent: dict[int, dict[str, _Held]] = {}
        self._recent_count = 0
        # Partitions whose every committed write is remembered: none was committed before the shard
        # opened (or since their last drop), and none was forgotten.
        self._incomplete: set[int] = set()
        self._lock = threading.Lock()  # guards _pending and _recent between the writer thread and readers
        self.index.reload()
        self._view = SearcherView(self.index.searcher(), self.fields)
        self._incomplete.update(self._view.held())
        self.reloads = 0  # searcher reloads since the shard opened (for the engine's metrics)

    def _open_index(self) -> tantivy.Index:
        """The index in ``directory``, created if there is none, rebuilt in this layout if it has another."""
        directory = self.directory
        rebuilding, legacy = _rebuild_paths(directory)
        if legacy.exists():  # a rebuild stopped while it swapped directories
            if directory.exists():
                shutil.rmtree(legacy)
            else:
                legacy.rename(directory)
        if rebuilding.exists():  # a rebuild stopped before its swap: start it again
            shutil.rmtree(rebuilding)
        directory.mkdir(parents=True, exist_ok=True)
        try:
            return tantivy.Index(self.tantivy_schema, path=str(directory))
        except ValueError:
            pass  # tantivy refuses a schema other than the index's own: an index an earlier version laid out
        self._rebuild(tantivy.Index.open(str(directory)), rebuilding)
        directory.rename(legacy)
        rebuilding.rename(directory)
        shutil.rmtree(legacy)
        return tantivy.Index(self.tantivy_schema, path=str(directory))

    def _rebuild(self, old: tantivy.Index, into: Path) -> None:
        """Index every document and tombstone of ``old`` (an earlier layout) in this layout, in ``into``.

        Earlier layouts differ in the fields derived from the source (the id
        field, ``_id``, the ``_len_`` fields, stored copies of user fields); the
        version fields, ``_partition`` and ``_source`` are the same, and all a
        document is rebuilt from."""
        old.reload()
        searcher = old.searcher()
        log.info(
            "search index %s: re-indexing %d documents and tombstones laid out by an earlier version (once)",
            self.index_name,
            searcher.num_docs,
        )
        into.mkdir(parents=True)
        fresh = tantivy.Index(self.tantivy_schema, path=str(into))
        writer = fresh.writer(WRITER_HEAP_BYTES, WRITER_THREADS)
        rebuilt = 0
        for partition in SearcherView(searcher, self.fields).held():
            query = tantivy.Query.term_query(old.schema, PARTITION, partition)  # field ids are the old schema's
            total = searcher.search(query, limit=1, count=True).count
            for _score, address in searcher.search(query, limit=max(total, 1), count=False).hits:
                doc = searcher.doc(address)
                doc_id = doc.get_first(LEGACY_ID)
                if doc_id is None:
                    doc_id = doc.get_first(self._id)
                if not isinstance(doc_id, str):
                    log.warning("search index %s: a document without an id left out of the rebuilt index", self.index_name)
                    continue
                writer.add_document(self._builder.document(doc_id, _version(doc)))
                rebuilt += 1
        writer.commit()
        writer.wait_merging_threads()
        log.info("search index %s: %d documents and tombstones re-indexed in this version's layout", self.index_name, rebuilt)

    # --- the writer thread ----------------------------------------------------

    def apply(self, items: Sequence[tuple[Operation, Decoded]]) -> None:
        """Index or tombstone each id whose incoming version is newer than the one held."""
        newest = _newest(items)
        held_versions = self._versions(list(newest))
        writer = self._require_writer()
        applied: dict[str, Version] = {}
        try:
            for doc_id, (version, counts, start, stride) in newest.items():
                held = held_versions.get(doc_id)
                if held is not None:
                    if held >= version.order:
                        continue
                    writer.delete_documents_by_term(self._id, doc_id)
                self._add(writer, doc_id, version, counts[start : start + stride] if stride else None)
                applied[doc_id] = version
        finally:
            # What reached the writer is pending even if a later document failed: last-writer-wins
            # decisions (and a re-apply of the batch) must see it.
            with self._lock:
                self._pending.update(applied)

    def _add(self, writer: tantivy.IndexWriter, doc_id: str, version: Version, lengths: list[int] | None) -> None:
        """Add one document: as JSON text that tantivy parses when it can, else built field by field."""
        if version.source is not None:
            text = self._builder.json_text(doc_id, version, lengths)
            if text is not None:
                try:
                    writer.add_json(text)
                    return
                except ValueError:
                    pass  # a value tantivy's JSON reader refuses: the per-field path indexes the rest
        writer.add_document(self._builder.document(doc_id, version))

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
            self._remember(self._pending)
            self._pending.clear()

    def _remember(self, committed: dict[str, Version]) -> None:
        """Note the versions just committed (under the lock); past the bound, forget whole partitions, oldest first."""
        recent = self._recent
        for doc_id, version in committed.items():
            bucket = recent.get(version.partition)
            if bucket is None:
                bucket = recent[version.partition] = {}
            if doc_id not in bucket:
                self._recent_count += 1
            bucket[doc_id] = _held(version)
        while self._recent_count > RECENT_VERSIONS_MAX and recent:
            forgotten = next(iter(recent))
            self._recent_count -= len(recent.pop(forgotten))
            self._incomplete.add(forgotten)

    def pending_in(self, partitions: Collection[int]) -> bool:
        """Whether a write applied to one of ``partitions`` is not committed yet."""
        with self._lock:
            return any(version.partition in partitions for version in self._pending.values())

    def _reload(self) -> None:
        """Point readers at what was just committed: a new searcher, and a new view of it."""
        self.index.reload()
        self._view = SearcherView(self.index.searcher(), self.fields)
        self.reloads += 1

    def drop_partition(self, partition: int) -> None:
        """Delete every document and tombstone of ``partition`` from this node's index, durably."""
        writer = self._require_writer()
        with self._lock:
            self._recent_count -= len(self._recent.pop(partition, {}))
            self._incomplete.discard(partition)  # empty once dropped: nothing of it is unknown
        if not self.pending_in((partition,)) and partition not in self._view.held():
            return  # nothing of it here: no commit, and searches keep their searcher (and what they remember of it)
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

    def _versions(self, ids: list[str]) -> dict[str, tuple[int, str, int]]:
        """The version held for each id that has one: pending first, then the committed index.

        An id's document frequency (one term lookup per segment) first says
        whether the index may hold it at all: a term-set query walks the
        segments' whole id dictionaries, so it is kept for the ids that are
        there (re-indexed ones), and a batch of new ids costs no walk."""
        out: dict[str, tuple[int, str, int]] = {}
        with self._lock:
            pending = self._pending
            for doc_id in ids:
                held = pending.get(doc_id)
                if held is not None:
                    out[doc_id] = held.order
        searcher = self.index.searcher()
        if not searcher.num_docs:
            return out
        doc_freq, id_field = searcher.doc_freq, self._id
        lookup = [doc_id for doc_id in ids if doc_id not in out and doc_freq(id_field, doc_id)]
        if lookup:
            query = tantivy.Query.term_set_query(self.tantivy_schema, id_field, lookup)
            for _score, address in searcher.search(query, limit=len(lookup), count=False).hits:
                doc = searcher.doc(address)
                out[doc.get_first(id_field)] = (doc.get_first(HLC), doc.get_first(ORIGIN), doc.get_first(POSITION) or 0)
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
        hits = searcher.search(tantivy.Query.term_query(self.tantivy_schema, self._id, doc_id), limit=1, count=False).hits
        if not hits:
            return None
        return _version(searcher.doc(hits[0][1]))

    def fold(self, partition: int, ids: Collection[str] | None = None) -> Iterator[Operation]:
        """Operations rebuilding this shard's share of ``partition`` (or of its documents ``ids``): documents and tombstones."""
        for doc_id, version in self.held(partition, ids):
            yield self._operation(doc_id, version)

    def versions(self, partition: int, ids: Collection[str] | None = None) -> Iterator[tuple[str, _Held]]:
        """``(id, (hlc, origin, position, tombstone))`` of each document and tombstone of ``partition`` (or of ``ids``).

        What ``held`` gives, without the sources; the versions of writes committed
        since the shard opened come from memory, not from the index (all of a
        partition's, when every write it holds was committed since)."""
        wanted = None if ids is None else set(ids)
        with self._lock:
            complete = partition not in self._incomplete
            if wanted is not None or complete:
                pending = {k: _held(v) for k, v in self._pending.items() if v.partition == partition and (wanted is None or k in wanted)}
                bucket = self._recent.get(partition, {})
                chosen = bucket if wanted is None else {k: bucket[k] for k in wanted if k in bucket}
                remembered = {k: held for k, held in chosen.items() if k not in pending}
        if wanted is None and not complete:  # writes from before the shard opened, or forgotten: only the index knows
            yield from ((doc_id, _held(version)) for doc_id, version in self.held(partition))
            return
        yield from pending.items()
        yield from remembered.items()
        # Of a complete partition, an id neither pending nor remembered has no write here.
        rest = set() if complete or wanted is None else wanted.difference(pending, remembered)
        if rest:
            yield from ((doc_id, _held(version)) for doc_id, version in self.held(partition, rest))

    def held(self, partition: int, ids: Collection[str] | None = None) -> Iterator[tuple[str, Version]]:
        """Each document and tombstone of ``partition`` (or those of ``ids``) with its version: pending first, then committed.

        With a few ``ids``, one query filters the partition's documents by the ``_partition``
        field and the ids' terms, so only those are loaded. Looking an id up costs a few times
        what loading a document does, so with ids that are a good share of the partition
        (anti-entropy re-reading what a bulk ingest wrote) every document of the partition is
        loaded instead and the ids are picked out of them."""
        wanted = None if ids is None else set(ids)
        with self._lock:
            pending = {
                k: v for k, v in self._pending.items() if v.partition == partition and (wanted is None or k in wanted)
            }
        yield from pending.items()
        if wanted is not None and not wanted:
            return
        searcher = self.index.searcher()
        query = tantivy.Query.term_query(self.tantivy_schema, PARTITION, partition)
        total = searcher.search(query, limit=1, count=True).count
        if not total:
            return
        pick = wanted is not None and len(wanted) * ID_LOOKUP_DOCS < total
        if pick:
            by_id = tantivy.Query.term_set_query(self.tantivy_schema, self._id, sorted(wanted))
            query = tantivy.Query.boolean_query([(tantivy.Occur.Must, query), (tantivy.Occur.Must, by_id)])
        for _score, address in searcher.search(query, limit=total, count=False).hits:
            doc = searcher.doc(address)
            doc_id = doc.get_first(self._id)
            if doc_id not in pending and (wanted is None or pick or doc_id in wanted):
                yield doc_id, _version(doc)

    def _operation(self, doc_id: str, version: Version) -> Operation:
        key = doc_id.encode("utf-8", "surrogatepass")
        name, incarnation, position = self.index_name, self.incarnation, version.position
        if version.source is None:
            kind, body = KIND_DELETE, delete_body(name, incarnation, position)
        else:
            kind, body = KIND_INDEX, index_body(name, incarnation, version.source, None, position)
        return Operation(ENGINE_NAME, version.partition, key, version.hlc, version.origin, kind, body)

    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.directory.iterdir() if f.is_file())


def _rebuild_paths(directory: Path) -> tuple[Path, Path]:
    """Where a rebuild writes the new index, and where the old one waits while the two are swapped."""
    return directory.with_name(directory.name + ".rebuilding"), directory.with_name(directory.name + ".legacy")


def _version(doc: tantivy.Document) -> Version:
    partition = doc.get_first(PARTITION)
    position = doc.get_first(POSITION) or 0
    source = doc.get_first(SOURCE)
    return Version(doc.get_first(HLC), doc.get_first(ORIGIN), position, partition if partition is not None else -1, source)


# A committed write's version as the shard remembers it: (hlc, origin, position, tombstone).
_Held = tuple[int, str, int, bool]


def _held(version: Version) -> _Held:
    return (version.hlc, version.origin, version.position, version.source is None)


# A write as apply sorts them: its version, and its lengths as counts[start : start + stride] (stride 0: none).
# The lengths stay a slice of the batch's one flat list until the document is added.
_Write = tuple[Version, list[int], int, int]
_NO_COUNTS: list[int] = []
# Version's constructor without the Python-level __new__ a NamedTuple has: a batch makes one per document.
_new_version = tuple.__new__


def _newest(items: Sequence[tuple[Operation, Decoded]]) -> dict[str, _Write]:
    """Per id, the newest of the writes ``items`` carry (a batch's documents one by one)."""
    newest: dict[str, _Write] = {}
    for op, decoded in items:
        if op.kind == KIND_BATCH:
            hlc, origin, partition = op.hlc, op.origin, op.partition
            assert decoded.ids is not None and decoded.sources is not None and decoded.lengths is not None
            sources, counts, stride = decoded.sources, decoded.lengths, decoded.lengths_stride
            for position, doc_id in enumerate(decoded.ids):
                held = newest.get(doc_id)
                if held is None or (hlc, origin, position) > held[0].order:
                    version = _new_version(Version, (hlc, origin, position, partition, sources[position]))
                    newest[doc_id] = (version, counts, position * stride, stride)
            continue
        doc_id = op.key.decode("utf-8", "surrogatepass")
        source = decoded.source if op.kind == KIND_INDEX else None
        version = Version(op.hlc, op.origin, decoded.position, op.partition, source)
        held = newest.get(doc_id)
        if held is None or version.order > held[0].order:
            counts = decoded.lengths if decoded.lengths is not None else _NO_COUNTS
            newest[doc_id] = (version, counts, 0, len(counts))
    return newest
