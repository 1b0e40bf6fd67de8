"""The search engine's side of the engine contract: catalog, shards, apply, flush, fold.

I/O (through ``shard`` and ``catalog_store``). One ``SearchEngine`` per node
holds, for every live search index, one ``Shard`` (a tantivy index holding
all the partitions this node has) and the node's catalog of indexes. The core
calls it as the contract in ``legion.engine`` says:

- ``apply_batch`` sorts operations: catalog operations first (a ``create``
  opens a shard and applies what was parked for it; a ``drop`` closes and
  deletes one), then document operations, by incarnation, into their shard —
  parked when the incarnation is not known yet, ignored when it is dead.
- ``durable_on_apply = False``: documents become durable and searchable in
  ``flush`` (a tantivy commit and reader reload per shard), which the core
  calls about once a second (Elasticsearch's refresh interval), for writes
  that ask ``refresh``, and before ``drop``/``close``; it replays the log
  above the last flush after a crash.
- ``drop`` deletes the partition's documents from every shard by the
  ``_partition`` term; ``fold`` yields the catalog, the partition's documents
  and tombstones from every shard, and its parked operations.
- ``read`` answers a document lookup (realtime: it sees applied, not yet
  flushed writes) or a catalog lookup; ``coverage_many`` answers one node's
  share of a search, its statistics round, aggregations and counts, with one
  filtered query per shard (see ``local_search``).
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engines.search.catalog_store import CatalogStore
from engines.search.operations import (
    CATALOG_KINDS,
    DOCUMENT_KINDS,
    ENGINE_NAME,
    KIND_BATCH,
    KIND_CREATE,
    Catalog,
    Decoded,
    check_batch_partition,
    decode,
)
from engines.search.schema import parse_schema
from engines.search.stats_cache import StatsCache
from legion.dashboard import DashboardPanel, PanelLookup
from legion.engine import Engine, Route
from legion.errors import BadRequest, NotOwner
from legion.hash_tree import ops_version
from legion.replication import Operation

if TYPE_CHECKING:
    from engines.search.shard import Shard

log = logging.getLogger(__name__)

# Decoded operations kept from validate for apply_batch (SearchEngine._validated): more than
# a few bulk chunks' worth of batches in flight to one replica.
VALIDATED_KEPT_MAX = 2_048


class SearchEngine(Engine):
    """Sharded full-text search: one tantivy index per node and search index, documents tagged with their partition."""

    name = ENGINE_NAME
    durable_on_apply = False

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        # Guards _held, _store, _catalog and _shards: the writer thread changes
        # them while worker threads search.
        self._lock = threading.RLock()
        self._held: set[int] = set()
        self._store: CatalogStore | None = None
        self._catalog = Catalog()
        self._shards: dict[str, Shard] = {}  # live incarnation → its shard
        self._unparked: set[str] = set()  # parked operations applied, to forget once flushed
        self._commits = 0  # shard commits since the node started (for metrics)
        self.remembered = StatsCache()  # the statistics this node, as a coordinator, remembers (``handlers``)
        # A replica decodes each operation's body in validate (event loop), then again in apply_batch
        # and digest_keys (writer thread): validate's decoding is kept for apply_batch, by the
        # operation's identity (an entry holds its operation, so the identity is not reused while it
        # is kept), and a batch's for the digest_keys calls that follow it. Bounded: an operation
        # validated but never applied (a full queue, a failed log write) is dropped with the rest.
        self._validated: dict[int, tuple[Operation, Decoded]] = {}
        self._applied: dict[int, tuple[Operation, Decoded]] = {}

    # --- lifecycle ------------------------------------------------------------

    def open(self, partition: int, directory: Path) -> None:
        with self._lock:
            if self._store is None:
                self._load()
            self._held.add(partition)

    def close(self, partition: int) -> None:
        with self._lock:
            self._held.discard(partition)
            if self._held or self._store is None:
                return
            shards, self._shards = self._shards, {}
            store, self._store = self._store, None
        for shard in shards.values():
            shard.close()
        store.close()

    def _load(self) -> None:
        self._store = CatalogStore(self.root, self.durability)
        self._catalog = self._store.load()
        self._reconcile_shards()

    def _shard_dir(self, incarnation: str) -> Path:
        return self.root / "indexes" / incarnation

    # --- writes (the writer thread) ---------------------------------------------

    def validate(self, op: Operation) -> None:
        decoded = decode(op)
        if op.kind == KIND_BATCH:
            check_batch_partition(op, decoded)  # the core checks the key's partition; a batch's ids are ours to check
        elif op.kind == KIND_CREATE:
            parse_schema(decoded.schema)
        if len(self._validated) >= VALIDATED_KEPT_MAX:
            self._validated.clear()
        self._validated[id(op)] = (op, decoded)

    def _decoded(self, op: Operation, kept: dict[int, tuple[Operation, Decoded]]) -> Decoded:
        entry = kept.pop(id(op), None)
        return entry[1] if entry is not None and entry[0] is op else decode(op)

    def apply(self, partition: int, ops: Sequence[Operation]) -> None:
        self.apply_batch({partition: ops})

    def apply_batch(self, batch: Mapping[int, Sequence[Operation]]) -> None:
        store = self._require_store()
        ops = [op for part_ops in batch.values() for op in part_ops]
        validated = self._validated
        decoded = [(op, self._decoded(op, validated)) for op in ops]
        self._applied = {id(op): (op, d) for op, d in decoded}
        self._apply_catalog([(op, d) for op, d in decoded if op.kind in CATALOG_KINDS])
        by_incarnation: dict[str, list[tuple[Operation, Decoded]]] = defaultdict(list)
        park: list[tuple[str, Operation]] = []
        for op, d in decoded:
            if op.kind not in DOCUMENT_KINDS:
                continue
            if d.incarnation in self._shards:
                by_incarnation[d.incarnation].append((op, d))
            elif not self._catalog.is_dead(d.incarnation) and d.incarnation not in self._catalog.created:
                park.append((d.incarnation, op))
        if park:
            store.park(park)
        for incarnation, items in by_incarnation.items():
            self._shards[incarnation].apply(items)

    def _apply_catalog(self, items: list[tuple[Operation, Decoded]]) -> None:
        store = self._require_store()
        changed = False
        for op, d in items:
            if self._catalog.apply(op, d):
                book = self._catalog.created if op.kind == KIND_CREATE else self._catalog.dropped
                store.record(op.kind, d.incarnation, book[d.incarnation])
                changed = True
        if changed:
            self._reconcile_shards()

    def _reconcile_shards(self) -> None:
        """Open a shard for every live incarnation, close and delete the rest; settle parked operations."""
        store = self._require_store()
        live = self._catalog.live_indexes()
        for incarnation in [inc for inc in self._shards if inc not in live.values()]:
            with self._lock:
                shard = self._shards.pop(incarnation)
            shard.close(delete=True)
        for name, incarnation in sorted(live.items()):
            if incarnation in self._shards:
                continue
            shard = self._open_shard(name, incarnation)
            with self._lock:
                self._shards[incarnation] = shard
            parked = store.parked(incarnation)
            if parked:
                shard.apply([(op, decode(op)) for op in parked])
                with self._lock:  # readers copy it from worker threads (_parked)
                    self._unparked.add(incarnation)
        known = set(self._catalog.created) | set(self._catalog.dropped)
        store.unpark(inc for inc in known if self._catalog.is_dead(inc))

    def _open_shard(self, name: str, incarnation: str) -> Shard:
        # Imported here: tantivy is for nodes; the `legion` command loads this class only for its commands.
        from engines.search import shard

        return shard.Shard(self._shard_dir(incarnation), name, incarnation, parse_schema(self._catalog.schema(incarnation)))

    def flush(self, partitions: Collection[int]) -> None:
        # One commit per shard covers every partition: there is no cheaper partial flush. A shard
        # holding nothing uncommitted of ``partitions`` is not committed for them (a drop of a
        # partition during an ingest would otherwise commit every other partition's documents).
        wanted = frozenset(partitions)
        for shard in list(self._shards.values()):
            if shard.pending_in(wanted):
                shard.commit()
                self._commits += 1
        if self._unparked and self._store is not None:
            self._store.unpark(self._unparked)  # only this (the writer) thread changes the set
            with self._lock:
                self._unparked.clear()

    def drop(self, partition: int) -> None:
        for shard in list(self._shards.values()):
            shard.drop_partition(partition)
        self._require_store().drop_partition(partition)

    # --- reads (worker threads) -------------------------------------------------

    def read(self, partition: int, query: Any) -> Any:
        """``{"op": "get", "index", "id"}`` → ``[hlc, origin, source or None, position]`` or None;
        ``{"op": "catalog", "index"}`` → ``{"incarnation", "schema"}`` or None."""
        self._require_held(partition)
        if not isinstance(query, dict) or not isinstance(query.get("index"), str):
            raise BadRequest("a search read names an index")
        if query.get("op") == "catalog":
            return self.describe(query["index"])
        if query.get("op") == "get" and isinstance(query.get("id"), str):
            shard = self.shard(query.get("incarnation"))
            version = shard.get(query["id"]) if shard is not None else None
            return None if version is None else [version.hlc, version.origin, version.source, version.position]
        raise BadRequest("a search read is a get or a catalog lookup")

    def describe(self, index: str) -> dict[str, Any] | None:
        """The live incarnation and schema of ``index`` as this node knows it, or None."""
        with self._lock:
            incarnation = self._catalog.live(index)
            if incarnation is None:
                return None
            return {"index": index, "incarnation": incarnation, "schema": self._catalog.schema(incarnation)}

    def indexes(self) -> list[dict[str, Any]]:
        """Every live index this node knows, with its schema."""
        with self._lock:
            names = sorted(self._catalog.live_indexes())
        return [d for d in (self.describe(name) for name in names) if d is not None]

    def holds_partitions(self) -> bool:
        with self._lock:
            return bool(self._held)

    def shard(self, incarnation: object) -> Shard | None:
        with self._lock:
            return self._shards.get(incarnation) if isinstance(incarnation, str) else None

    def coverage_many(self, partitions: Sequence[int], query: Any) -> Any:
        for p in partitions:
            self._require_held(p)
        if not isinstance(query, dict):
            raise BadRequest("a search coverage query is a map")
        if query.get("op") == "indexes":
            return self.indexes()
        from engines.search import local_search  # tantivy: for nodes only (see _open_shard)

        shard = self.shard(query.get("incarnation"))
        return local_search.answer(shard, list(partitions), query)

    # --- operating ---------------------------------------------------------------

    def metrics(self) -> Mapping[str, float]:
        """Indexes, documents in their committed searchers (all replicas here), commits and searcher reloads."""
        with self._lock:
            shards = list(self._shards.values())
            indexes = len(self._catalog.live_indexes())
        return {
            "indexes": indexes,
            "documents": sum(shard.view().searcher.num_docs for shard in shards),
            "commits": self._commits,
            "searcher_reloads": sum(shard.reloads for shard in shards),
            # Searches this node coordinated in one round, with statistics it remembered; those whose
            # remembered statistics a node had outdated (counted again, in two rounds); and those it had
            # none remembered for (a query new to it, or forgotten: counted first, unless one node held the plan).
            "searches_one_round": self.remembered.hits - self.remembered.stale,
            "searches_recounted": self.remembered.stale,
            "searches_unremembered": self.remembered.misses,
        }

    def dashboard_panel(self) -> DashboardPanel:
        return DashboardPanel(
            title="Search",
            figures={"indexes": "indexes", "documents": "documents (all replicas)", "commits": "commits",
                     "searcher_reloads": "searcher reloads", "searches_one_round": "searches in one round"},
            lookups=[PanelLookup(label="Search an index", path="/v1/search/{index}?q={query}&limit=5", fields=["index", "query"])],
        )  # fmt: skip

    def fold(self, partition: int) -> Iterator[Operation]:
        self._require_held(partition)
        with self._lock:
            catalog_ops = self._catalog.operations(partition)
            shards = list(self._shards.values())
        yield from catalog_ops
        for shard in shards:
            yield from shard.fold(partition)
        yield from self._parked(partition)

    # Anti-entropy (``Engine.versions``): a key is a document id (its version: what every index holds for
    # it — incarnation, hlc, origin, position, tombstone — as one digest), a catalog operation's key, or a
    # parked operation's key; the documents are found by the partition's fast field and their ids' terms.

    def versions(self, partition: int, keys: Collection[bytes] | None = None) -> Iterator[tuple[bytes, bytes]]:
        self._require_held(partition)
        wanted = None if keys is None else set(keys)
        with self._lock:
            catalog_ops = self._catalog.operations(partition)
            shards = list(self._shards.values())
        held: dict[bytes, list[list[object]]] = defaultdict(list)
        for op in catalog_ops:
            if wanted is None or op.key in wanted:
                # The catalog is the node's, learnt from whichever partition's operation came first, and
                # that one's stamp differs from node to node (with N=1 no two see the same partitions):
                # an entry's version is what it says, or every hand-over would ship it again.
                held[op.key].append([op.kind, op.body])
        for op in self._parked(partition):
            if wanted is None or op.key in wanted:
                held[op.key].append(op.to_wire())
        ids = None if wanted is None else [k.decode("utf-8", "surrogatepass") for k in wanted]
        for shard in shards:
            for doc_id, (hlc, origin, position, tombstone) in shard.versions(partition, ids):
                held[doc_id.encode("utf-8", "surrogatepass")].append(["doc", shard.incarnation, hlc, origin, position, tombstone])
        for key, items in held.items():
            yield key, ops_version(items)

    def fold_keys(self, partition: int, keys: Collection[bytes]) -> Iterator[Operation]:
        self._require_held(partition)
        wanted = set(keys)
        with self._lock:
            catalog_ops = self._catalog.operations(partition)
            shards = list(self._shards.values())
        yield from (op for op in catalog_ops if op.key in wanted)
        ids = [k.decode("utf-8", "surrogatepass") for k in wanted]
        for shard in shards:
            yield from shard.fold(partition, ids)
        yield from (op for op in self._parked(partition) if op.key in wanted)

    def digest_keys(self, op: Operation) -> Collection[bytes] | None:
        if op.kind in CATALOG_KINDS:
            return None  # the catalog is every partition's, and a create applies what was parked
        if op.kind != KIND_BATCH:
            return (op.key,)
        ids = self._decoded(op, self._applied).ids or []
        return (op.key, *(doc_id.encode("utf-8", "surrogatepass") for doc_id in ids))  # op.key: if parked

    def _parked(self, partition: int) -> list[Operation]:
        """Operations parked for an index not created here yet; not those a create applied (gone at the next flush)."""
        with self._lock:
            unparked = set(self._unparked)
        parked = self._require_store().parked_in(partition)
        return [op for op in parked if not unparked or decode(op).incarnation not in unparked]

    # --- HTTP and CLI -----------------------------------------------------------

    def routes(self) -> Sequence[Route]:
        from engines.search.handlers import routes

        return routes(self)

    @classmethod
    def cli(cls) -> Any:
        from engines.search.cli import app  # a node never needs typer

        return app

    def _require_store(self) -> CatalogStore:
        store = self._store
        if store is None:
            raise NotOwner("the search engine holds no partition on this node")
        return store

    def _require_held(self, partition: int) -> None:
        if partition not in self._held:
            raise NotOwner(f"partition {partition} is not open in the search engine on this node")
