"""One node's share of a search: statistics, scored hits, aggregations and counts over its partitions.

I/O (reads a ``Shard``'s tantivy index; ``engine.SearchEngine.coverage_many``
calls ``answer`` from a worker thread). Every query runs once per node,
restricted to the partitions the coverage plan gave this node and with
tombstones excluded: ``user query AND _partition ∈ plan AND NOT _deleted``.
The restriction scores zero (a constant-score clause of 0), so scores are the
user query's own.

The rounds a search makes (``handlers`` drives them):

1. ``stats``  — for the query's scoring terms, how many live documents of the
   plan's partitions this node holds, and how many contain each term;
2. ``search`` — the query scored with the global statistics of round 1
   (``query_compile``), the top ``k`` hits with their stored fields and
   highlighted snippets, the exact number of matches, and aggregations.

``count`` answers ``legion search stats``: live documents per partition,
tombstones, and the size of the node's index on disk.
"""

from __future__ import annotations

import json
from typing import Any

import tantivy

from engines.search import query_compile
from engines.search.shard import DELETED, ID, PARTITION, SOURCE, Shard
from legion.errors import BadRequest

SNIPPET_CHARS_MAX = 200
HITS_MAX = 10_000


def answer(shard: Shard | None, partitions: list[int], query: dict[str, Any]) -> dict[str, Any]:
    """Dispatch one coverage request to its round. ``shard`` is None when this node has not heard of the index."""
    op = query.get("op")
    if op == "stats":
        return _stats(shard, partitions, query)
    if op == "search":
        return _search(shard, partitions, query)
    if op == "count":
        return _count(shard, partitions)
    raise BadRequest(f"unknown search coverage request {op!r}")


def plan_filter(shard: Shard, partitions: list[int]) -> list[tuple[tantivy.Occur, tantivy.Query]]:
    """The clauses that restrict a query to live documents of ``partitions`` without changing its scores."""
    in_plan = tantivy.Query.term_set_query(shard.tantivy_schema, PARTITION, partitions)
    tombstone = tantivy.Query.term_query(shard.tantivy_schema, DELETED, 1)
    return [
        (tantivy.Occur.Must, tantivy.Query.const_score_query(in_plan, 0.0)),
        (tantivy.Occur.MustNot, tombstone),
    ]


def restrict(shard: Shard, partitions: list[int], query: tantivy.Query) -> tantivy.Query:
    return tantivy.Query.boolean_query([(tantivy.Occur.Must, query), *plan_filter(shard, partitions)])


def _stats(shard: Shard | None, partitions: list[int], query: dict[str, Any]) -> dict[str, Any]:
    if shard is None:
        return {"docs": 0, "df": {}}
    parsed = query_compile.parse(shard, _text(query, "q"))
    searcher = shard.searcher()
    return query_compile.local_stats(shard, searcher, parsed, partitions)


def _search(shard: Shard | None, partitions: list[int], query: dict[str, Any]) -> dict[str, Any]:
    if shard is None:
        return {"total": 0, "hits": [], "aggs": {}, "exact": True}
    k = query.get("k")
    if not isinstance(k, int) or not 0 <= k <= HITS_MAX:
        raise BadRequest(f"k must be an integer in 0..{HITS_MAX}")
    parsed = query_compile.parse(shard, _text(query, "q"))
    searcher = shard.searcher()
    scored, exact = query_compile.with_global_stats(shard, searcher, parsed, query.get("stats") or {})
    restricted = restrict(shard, partitions, scored)
    result = searcher.search(restricted, limit=max(k, 1), count=True)
    hits = result.hits[:k]
    docs = [searcher.doc(address) for _score, address in hits]
    fields = query.get("fields")
    snippets = _snippets(shard, searcher, parsed, docs) if query.get("snippets", True) else [{} for _ in docs]
    out_hits = [
        [float(score), doc.get_first(ID), _stored(shard, doc, fields), snip]
        for (score, _address), doc, snip in zip(hits, docs, snippets)
    ]
    aggs = query.get("aggs") or {}
    aggregated = searcher.aggregate(restricted, aggs) if aggs else {}
    return {"total": result.count, "hits": out_hits, "aggs": aggregated, "exact": exact}


def _stored(shard: Shard, doc: tantivy.Document, fields: Any) -> dict[str, Any]:
    """The stored fields of a hit as they were indexed, optionally only ``fields``."""
    source = doc.get_first(SOURCE)
    if source is None:
        return {}
    values = json.loads(source)
    wanted = set(shard.schema.stored_fields)
    if isinstance(fields, list):
        wanted &= {f for f in fields if isinstance(f, str)}
    return {name: value for name, value in values.items() if name in wanted}


def _snippets(shard: Shard, searcher: tantivy.Searcher, query: tantivy.Query, docs: list[tantivy.Document]) -> list[dict[str, str]]:
    """Highlighted fragments of the stored text fields the query matched, per hit."""
    out: list[dict[str, str]] = [{} for _ in docs]
    if not docs:
        return out
    for spec in shard.schema.fields:
        if spec.type != "text" or not spec.stored or not spec.indexed:
            continue
        generator = tantivy.SnippetGenerator.create(searcher, query, shard.tantivy_schema, spec.name)
        generator.set_max_num_chars(SNIPPET_CHARS_MAX)
        for i, doc in enumerate(docs):
            snippet = generator.snippet_from_doc(doc)
            if snippet.highlighted():
                out[i][spec.name] = snippet.to_html()
    return out


def _count(shard: Shard | None, partitions: list[int]) -> dict[str, Any]:
    if shard is None:
        return {"partitions": [[p, 0] for p in partitions], "tombstones": 0, "size_bytes": 0}
    searcher = shard.searcher()
    agg = {"p": {"terms": {"field": PARTITION, "size": max(1, len(partitions))}}}
    in_plan = tantivy.Query.term_set_query(shard.tantivy_schema, PARTITION, partitions)
    live = tantivy.Query.boolean_query(
        [(tantivy.Occur.Must, in_plan), (tantivy.Occur.MustNot, tantivy.Query.term_query(shard.tantivy_schema, DELETED, 1))]
    )
    buckets = searcher.aggregate(live, agg)["p"]["buckets"]
    per_partition = {int(b["key"]): int(b["doc_count"]) for b in buckets}
    tombstones = searcher.search(
        tantivy.Query.boolean_query(
            [(tantivy.Occur.Must, in_plan), (tantivy.Occur.Must, tantivy.Query.term_query(shard.tantivy_schema, DELETED, 1))]
        ),
        limit=1,
        count=True,
    ).count
    return {
        "partitions": [[p, per_partition.get(p, 0)] for p in partitions],  # pairs: msgpack maps want str keys
        "tombstones": tombstones,
        "size_bytes": shard.size_bytes(),
    }


def _text(query: dict[str, Any], name: str) -> str:
    value = query.get(name)
    if not isinstance(value, str) or not value.strip():
        raise BadRequest(f"{name!r} must be a non-empty query string")
    return value
