"""Round 2 of a search on one node: its best hits, in the global order, with global scores.

``node_search`` is what a node runs for the partitions a coverage plan
gives it, once round 1's statistics are merged (``query_compile`` explains
the rounds):

1. run the query ``query_compile.ranked_query`` built — every BM25 leaf
   boosted by global idf / local idf — restricted to the live docs of the
   node's partitions (a zero-score filter: it leaves scores untouched);
2. when ranking is exact, take the best ``rescore_candidates(count)`` and
   recompute each one's score from tantivy's ``explain`` with the global idf
   and average field lengths (``ranking.explained_score``): the boosts fix
   idf but not BM25's length normalisation, which uses each node's own
   average field length (its deleted docs, tombstones and other partitions
   included);
3. keep the first ``count`` in the global order (score desc, id asc).

Ties. tantivy's top-k cut keeps, among tied scores, the hits it met first,
not the smallest ids; ``top_hits`` fetches past a tied run (up to
``TIE_RUN_HITS_MAX`` more hits) before cutting, so every node's cut agrees
with the global order and ``ranking.merge_hits`` is exact.

Costs (``bench/search_ranking.py`` measures them): a fetch is one tantivy
search plus one stored-doc read per hit (for the id); exact ranking adds
one ``explain`` per candidate (tens of microseconds each).

Imports tantivy; reads the searcher it is handed, nothing else.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import tantivy

from engines.search.query_compile import (
    RANKING_EXACT,
    RANKING_GLOBAL_IDF,
    IndexFields,
    ParsedQuery,
    live_filter,
    max_doc,
    query_error,
    ranked_query,
    rescoring_query,
)
from engines.search.ranking import (
    CollectionStats,
    ExplanationError,
    explained_score,
    first_hits,
    rescore_bound,
    tie_run_unfinished,
)
from legion import json_codec

if TYPE_CHECKING:
    from engines.search.scope import Scope

TIE_RUN_HITS_MAX = 1_000  # hits fetched past a cut to order a run of tied scores by id
RESCORE_CANDIDATES_EXTRA = 20  # candidates rescored beyond twice the hits asked for
PRUNE_DOCS_MAX = 2**22  # below, an f32 idf is never 0 and boosts carry global idfs faithfully
PRUNE_SLACK = 1e-4  # relative: f32 rounding of boosts and sums stays far below it


class LocalHit(NamedTuple):
    """One hit on one node: its id, its score, and where it is in this node's searcher."""

    id: str
    score: float
    address: tantivy.DocAddress


@dataclass(frozen=True)
class NodeAnswer:
    """A node's round-2 answer: its first hits in the global order, how exactly they were ranked, and how many matched."""

    hits: list[LocalHit]
    ranking: str  # query_compile.RANKING_EXACT, RANKING_GLOBAL_IDF or RANKING_LOCAL
    total: int  # live docs of the node's partitions the query matches (counted by the pass that found the hits)


def node_search(
    parsed: ParsedQuery,
    fields: IndexFields,
    searcher: tantivy.Searcher,
    stats: CollectionStats,
    partitions: Collection[int],
    count: int,
    scope: Scope | None = None,
    floor: float | None = None,
) -> NodeAnswer:
    """Round 2 on one node: its first ``count`` hits in the global order, ranked with the global statistics.

    With the searcher's ``scope`` for ``partitions`` (``scope.SearcherView.scope``), its
    filter restricts the search; and when the scope is native and the plan's
    statistics are this node's alone (the plan's live documents are all here),
    the query's own scores are the global ones: no boost, no rescoring.

    ``floor``, when the coordinator knows it, is the lowest score the page can
    hold (the same search, over the same searchers and statistics, found it
    before): hits scoring below it are left out, and rescoring stops at the
    first candidate that cannot reach it — a node then explains about as many
    candidates as it has hits on the page, instead of ``count`` and more."""
    if scope is not None and scope.native and stats.doc_count == scope.doc_count:
        hits, total = counted_top_hits(searcher, fields, parsed.original, partitions, count, scope)
        return NodeAnswer(_at_least(hits, floor), RANKING_EXACT, total)
    local_count = max_doc(searcher, fields)  # once: the boosts and the rescoring's pruning both need it
    query = ranked_query(parsed, fields, searcher, stats, local_count)
    if parsed.ranking != RANKING_EXACT:
        hits, total = counted_top_hits(searcher, fields, query, partitions, count, scope)
        return NodeAnswer(_at_least(hits, floor), parsed.ranking, total)
    candidates, total = counted_top_hits(searcher, fields, query, partitions, rescore_candidates(count), scope)
    try:
        seen = scope.view.average_field_lengths if scope is not None else None
        rescored = rescore(parsed, fields, searcher, stats, candidates, count, local_count, floor, seen)
    except ExplanationError:
        return NodeAnswer(_at_least(first_hits(candidates, count), floor), RANKING_GLOBAL_IDF, total)
    return NodeAnswer(_at_least(first_hits(rescored, count), floor), RANKING_EXACT, total)


def _at_least(hits: list[LocalHit], floor: float | None) -> list[LocalHit]:
    return hits if floor is None else [hit for hit in hits if hit.score >= floor]


def rescore_candidates(count: int) -> int:
    """How many boosted hits a node rescores to find its first ``count`` by exact score."""
    return 2 * count + RESCORE_CANDIDATES_EXTRA if count > 0 else 0


def rescore(
    parsed: ParsedQuery,
    fields: IndexFields,
    searcher: tantivy.Searcher,
    stats: CollectionStats,
    hits: Sequence[LocalHit],
    count: int | None = None,
    local_count: int | None = None,
    floor: float | None = None,
    seen: dict[str, float] | None = None,
) -> list[LocalHit]:
    """``hits`` with their scores recomputed from ``explain`` with the global idf and average field lengths.

    ``hits`` come in boosted order. With ``count``, rescoring stops at the first
    hit whose exact score cannot reach the ``count`` best exact scores so far
    (``ranking.rescore_bound``): those, and every later hit, are left out; with
    ``floor``, also at the first that cannot reach ``floor``.
    ``local_count`` is the searcher's ``max_doc``, if the caller has it already;
    ``seen`` the average field lengths earlier explanations on this searcher
    printed (``scope.SearcherView.average_field_lengths``, filled in here), so
    that the bound is known before every field's leaf has been explained here."""
    if not hits:
        return []
    marked, weights = rescoring_query(parsed, fields, stats)
    # Bounds hold for every score while f32 idfs stay positive (below 2**22 docs) and rounding stays in the slack.
    keep = count or 0
    if (keep > 0 or floor is not None) and local_count is None:
        local_count = max_doc(searcher, fields)
    prune = (keep > 0 or floor is not None) and local_count is not None and local_count < PRUNE_DOCS_MAX
    if seen is None:
        seen = {}
    bound: float | None = None
    best: list[float] = []  # a min-heap of the ``keep`` best exact scores
    rescored = []
    for hit in hits:
        if bound is not None:
            cut = max(best[0] if keep > 0 and len(best) == keep else -math.inf, -math.inf if floor is None else floor)
            if hit.score * bound * (1 + PRUNE_SLACK) < cut:
                break
        explanation = json_codec.loads(marked.explain(searcher, hit.address).to_json().encode())
        score = explained_score(explanation, weights)
        rescored.append(LocalHit(hit.id, score, hit.address))
        if prune:
            bound = bound or rescore_bound(explanation, weights, seen)
            if keep > 0:
                if len(best) < keep:
                    heapq.heappush(best, score)
                elif score > best[0]:
                    heapq.heapreplace(best, score)
    return rescored


def top_hits(
    searcher: tantivy.Searcher,
    fields: IndexFields,
    query: tantivy.Query,
    partitions: Collection[int] | None,
    count: int,
    scope: Scope | None = None,
) -> list[LocalHit]:
    """The first ``count`` hits of ``query`` in the global order (score desc, id asc).

    ``partitions`` restricts the search to their live docs (None: every doc
    of the searcher, for an index without tombstones), with ``scope.filter``
    when their ``scope`` is given. When tantivy's cut
    falls inside a run of tied scores, fetches past the run (up to
    ``TIE_RUN_HITS_MAX`` more hits) so that ties are won by the smallest ids.
    """
    return counted_top_hits(searcher, fields, query, partitions, count, scope, counted=False)[0]


def counted_top_hits(
    searcher: tantivy.Searcher,
    fields: IndexFields,
    query: tantivy.Query,
    partitions: Collection[int] | None,
    count: int,
    scope: Scope | None,
    *,
    counted: bool = True,
) -> tuple[list[LocalHit], int]:
    """``top_hits``, and how many docs the query matches in the same restriction (0 unless ``counted``).

    One tantivy pass collects both (a separate count would walk every match a second time)."""
    if partitions is not None and not partitions:
        return [], 0
    live = scope.filter if scope is not None else None if partitions is None else live_filter(fields, partitions)
    if live is not None:
        zero = tantivy.Query.const_score_query(live, 0.0)
        query = tantivy.Query.boolean_query([(tantivy.Occur.Must, query), (tantivy.Occur.Must, zero)])
    if count <= 0:
        return [], _search(searcher, query, 1, counted)[1] if counted else 0
    fetch = count + 1
    fetch_max = count + 1 + TIE_RUN_HITS_MAX
    found, total = _search(searcher, query, fetch, counted)
    while len(found) == fetch < fetch_max and tie_run_unfinished([score for score, _ in found], count):
        fetch = min(2 * fetch, fetch_max)
        found = _search(searcher, query, fetch, False)[0]
    if scope is not None:
        hits = [LocalHit(scope.view.doc_id(address), score, address) for score, address in found]
    else:
        hits = [LocalHit(_doc_id(searcher, fields, address), score, address) for score, address in found]
    return first_hits(hits, count), total


def _search(
    searcher: tantivy.Searcher, query: tantivy.Query, limit: int, counted: bool = False
) -> tuple[list[tuple[float, tantivy.DocAddress]], int]:
    try:
        result = searcher.search(query, limit=limit, count=counted)
    except ValueError as error:  # e.g. an exists query on a field that is not fast
        raise query_error(str(error)) from error
    return result.hits, result.count if counted else 0


def _doc_id(searcher: tantivy.Searcher, fields: IndexFields, address: tantivy.DocAddress) -> str:
    value = searcher.doc(address).get_first(fields.id_field)
    assert isinstance(value, str), f"a doc without {fields.id_field}"
    return value
