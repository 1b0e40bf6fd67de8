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

import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import tantivy

from engines.search.query_compile import (
    RANKING_EXACT,
    RANKING_GLOBAL_IDF,
    IndexFields,
    ParsedQuery,
    live_filter,
    query_error,
    ranked_query,
    rescoring_query,
)
from engines.search.ranking import CollectionStats, ExplanationError, explained_score, first_hits, tie_run_unfinished

TIE_RUN_HITS_MAX = 1_000  # hits fetched past a cut to order a run of tied scores by id
RESCORE_CANDIDATES_EXTRA = 20  # candidates rescored beyond twice the hits asked for


@dataclass(frozen=True)
class LocalHit:
    """One hit on one node: its id, its score, and where it is in this node's searcher."""

    id: str
    score: float
    address: tantivy.DocAddress


@dataclass(frozen=True)
class NodeAnswer:
    """A node's round-2 answer: its first hits in the global order, and how exactly they were ranked."""

    hits: list[LocalHit]
    ranking: str  # query_compile.RANKING_EXACT, RANKING_GLOBAL_IDF or RANKING_LOCAL


def node_search(
    parsed: ParsedQuery,
    fields: IndexFields,
    searcher: tantivy.Searcher,
    stats: CollectionStats,
    partitions: Collection[int],
    count: int,
) -> NodeAnswer:
    """Round 2 on one node: its first ``count`` hits in the global order, ranked with the global statistics."""
    query = ranked_query(parsed, fields, searcher, stats)
    if parsed.ranking != RANKING_EXACT:
        return NodeAnswer(top_hits(searcher, fields, query, partitions, count), parsed.ranking)
    candidates = top_hits(searcher, fields, query, partitions, rescore_candidates(count))
    try:
        rescored = rescore(parsed, fields, searcher, stats, candidates)
    except ExplanationError:
        return NodeAnswer(first_hits(candidates, count), RANKING_GLOBAL_IDF)
    return NodeAnswer(first_hits(rescored, count), RANKING_EXACT)


def rescore_candidates(count: int) -> int:
    """How many boosted hits a node rescores to find its first ``count`` by exact score."""
    return 2 * count + RESCORE_CANDIDATES_EXTRA if count > 0 else 0


def rescore(
    parsed: ParsedQuery,
    fields: IndexFields,
    searcher: tantivy.Searcher,
    stats: CollectionStats,
    hits: Sequence[LocalHit],
) -> list[LocalHit]:
    """``hits`` with their scores recomputed from ``explain`` with the global idf and average field lengths."""
    if not hits:
        return []
    marked, weights = rescoring_query(parsed, fields, stats)
    rescored = []
    for hit in hits:
        explanation = json.loads(marked.explain(searcher, hit.address).to_json())
        rescored.append(LocalHit(hit.id, explained_score(explanation, weights), hit.address))
    return rescored


def top_hits(
    searcher: tantivy.Searcher,
    fields: IndexFields,
    query: tantivy.Query,
    partitions: Collection[int] | None,
    count: int,
) -> list[LocalHit]:
    """The first ``count`` hits of ``query`` in the global order (score desc, id asc).

    ``partitions`` restricts the search to their live docs (None: every doc
    of the searcher, for an index without tombstones). When tantivy's cut
    falls inside a run of tied scores, fetches past the run (up to
    ``TIE_RUN_HITS_MAX`` more hits) so that ties are won by the smallest ids.
    """
    if count <= 0 or (partitions is not None and not partitions):
        return []
    if partitions is not None:
        zero = tantivy.Query.const_score_query(live_filter(fields, partitions), 0.0)
        query = tantivy.Query.boolean_query([(tantivy.Occur.Must, query), (tantivy.Occur.Must, zero)])
    fetch = count + 1
    fetch_max = count + 1 + TIE_RUN_HITS_MAX
    found = _search(searcher, query, fetch)
    while len(found) == fetch < fetch_max and tie_run_unfinished([score for score, _ in found], count):
        fetch = min(2 * fetch, fetch_max)
        found = _search(searcher, query, fetch)
    hits = [LocalHit(_doc_id(searcher, fields, address), score, address) for score, address in found]
    return first_hits(hits, count)


def _search(searcher: tantivy.Searcher, query: tantivy.Query, limit: int) -> list[tuple[float, tantivy.DocAddress]]:
    try:
        return searcher.search(query, limit=limit, count=False).hits
    except ValueError as error:  # e.g. an exists query on a field that is not fast
        raise query_error(str(error)) from error


def _doc_id(searcher: tantivy.Searcher, fields: IndexFields, address: tantivy.DocAddress) -> str:
    value = searcher.doc(address).get_first(fields.id_field)
    assert isinstance(value, str), f"a doc without {fields.id_field}"
    return value
