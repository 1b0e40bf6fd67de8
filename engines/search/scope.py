"""What a node's searcher may show of a coverage plan, and what it knows about itself, computed once per commit.

I/O: reads the tantivy searcher it is handed. A coverage plan gives a node
some partitions; a search must count and rank only the *live* documents
(not tombstones) of those partitions. Saying so with a filter — the
partitions' term set and ``_deleted:0`` — costs a walk over every document
for every count and every search. Usually it says nothing: a node answers
for every partition it holds. A ``SearcherView`` wraps one committed
searcher (``Shard.view``) and works out, once, which partitions it holds
documents of, whether it holds tombstones and deleted documents; then
``scope(partitions)`` is the cheapest filter with the same meaning:

- the searcher holds no document outside the plan and no tombstone: no
  filter at all, and the live count is ``num_docs``;
- it holds none outside the plan, but tombstones: ``_deleted:0`` alone;
- otherwise: the partitions' term set and ``_deleted:0``, as before.

``Scope.native`` says more: no filter and no deleted document, so tantivy's
own statistics (document count, document frequencies, field lengths) are
exactly the scope's — when the plan's statistics are this node's alone, the
query's own scores are the global ones and need no boost and no rescoring.

The view also keeps, per scope, the query-independent statistics round 1
needs (live documents, tokens per length field), and the ids of the
documents searches have read (``doc_id``). A view lives until the next
commit replaces it, so nothing it remembers goes stale. ``stamp`` names
what a view counted for a plan's partitions: statistics counted under one
stamp hold as long as the same stamp does (a coordinator remembers them by
it, ``stats_cache``).
"""

from __future__ import annotations

import hashlib
import threading
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import tantivy

from engines.search.query_compile import IndexFields, live_filter, token_totals
from legion.limits import PARTITIONS_MAX

MEMO_ENTRIES_MAX = 256  # distinct plans remembered per view (a node sees few)
IDS_REMEMBERED_MAX = 1_000_000  # document ids remembered per view (~100 bytes each)


@dataclass(frozen=True)
class Scope:
    """The live documents of a plan's partitions on one searcher."""

    filter: tantivy.Query | None  # None: every document of the searcher
    doc_count: int  # live documents of the plan on this searcher
    native: bool  # no filter and no deleted document: tantivy's statistics are the scope's
    view: SearcherView  # the searcher's view, for its remembered document ids


class SearcherView:
    """One committed searcher of a shard, and what is known about it."""

    def __init__(self, searcher: tantivy.Searcher, fields: IndexFields) -> None:
        self.searcher = searcher
        self.fields = fields
        self._lock = threading.Lock()
        self._scopes: dict[frozenset[int], Scope] = {}
        self._tokens: dict[tuple[frozenset[int], tuple[str, ...]], dict[str, int]] = {}
        self._held: frozenset[int] | None = None
        self._ids: dict[tuple[int, int], str] = {}
        # Field → the average length this searcher's BM25 uses for it (tantivy's, over every document it
        # holds), as explanations printed it: the same for every search on the view (``node_hits.rescore``).
        self.average_field_lengths: dict[str, float] = {}
        self.generation = uuid.uuid4().hex  # unique to this view: no other commit, node or process has it

    def stamp(self, partitions: Collection[int]) -> str:
        """A name for this view's statistics of ``partitions``: equal stamps, equal statistics."""
        listed = ",".join(map(str, sorted(partitions))).encode()
        return f"{self.generation}:{hashlib.blake2b(listed, digest_size=8).hexdigest()}"

    def doc_id(self, address: tantivy.DocAddress) -> str:
        """The id of the document at ``address``, read from its stored fields once per view.

        A search that cuts inside a run of tied scores orders the run by id, which
        reads up to a thousand stored documents; tantivy-py can read no text column,
        so the ids read are remembered here instead (doc values built as they are met)."""
        key = (address.segment_ord, address.doc)
        found = self._ids.get(key)
        if found is None:
            found = self.searcher.doc(address).get_first(self.fields.id_field)
            assert isinstance(found, str), f"a doc without {self.fields.id_field}"
            if len(self._ids) < IDS_REMEMBERED_MAX:
                self._ids[key] = found
        return found

    def scope(self, partitions: Collection[int]) -> Scope:
        """How to restrict a query to the live documents of ``partitions`` on this searcher."""
        key = frozenset(partitions)
        found = self._scopes.get(key)
        if found is None:
            found = self._compute_scope(key)
            with self._lock:
                if len(self._scopes) < MEMO_ENTRIES_MAX:
                    self._scopes[key] = found
        return found

    def token_totals(self, partitions: Collection[int], names: Sequence[str]) -> dict[str, int]:
        """Tokens of each of ``names`` in the scope's live documents (``query_compile.token_totals``)."""
        key = (frozenset(partitions), tuple(names))
        found = self._tokens.get(key)
        if found is None:
            scope = self.scope(key[0])
            everything = scope.filter if scope.filter is not None else tantivy.Query.all_query()
            found = token_totals(self.searcher, self.fields, names, everything, scope.doc_count)
            with self._lock:
                if len(self._tokens) < MEMO_ENTRIES_MAX:
                    self._tokens[key] = found
        return dict(found)

    def held(self) -> frozenset[int]:
        """Every partition this searcher holds a document (or tombstone) of."""
        if self._held is None:
            terms = {"terms": {"field": self.fields.partition_field, "size": PARTITIONS_MAX}}
            buckets = self.searcher.aggregate(tantivy.Query.all_query(), {"p": terms})
            self._held = frozenset(int(bucket["key"]) for bucket in buckets["p"]["buckets"])
        return self._held

    def _compute_scope(self, partitions: frozenset[int]) -> Scope:
        searcher, fields = self.searcher, self.fields
        if not partitions:
            return Scope(tantivy.Query.empty_query(), 0, False, self)
        tombstones = searcher.doc_freq(fields.deleted_field, 1)  # counts deleted ones too: never too few
        if self.held() <= partitions:
            if not tombstones:
                # Every document of the searcher is live and in the plan.
                native = searcher.doc_freq(fields.deleted_field, 0) == searcher.num_docs  # no deleted ones
                return Scope(None, searcher.num_docs, native, self)
            live = tantivy.Query.term_query(fields.schema, fields.deleted_field, 0)
        else:
            live = live_filter(fields, partitions)
        return Scope(live, searcher.search(live, limit=1, count=True).count, False, self)
