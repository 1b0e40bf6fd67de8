"""One node's share of a search: statistics, scored hits, aggregations and counts over its partitions.

I/O (reads a ``Shard``'s tantivy index; ``engine.SearchEngine.coverage_many``
calls ``answer`` from a worker thread). Every query runs once per node,
restricted to the live documents of the partitions the coverage plan gave
this node (``scope.SearcherView.scope``: the cheapest filter that says so —
often none —, in a clause that scores zero, so scores are the user query's
own). Each node parses the query text itself against its copy of the index:
the same schema gives the same tree, and so the same terms to count and to
score (parsed once per node and incarnation, ``parse``).

The rounds a search makes (``handlers`` drives them):

1. ``stats``  — ``query_compile.local_stats``: how many live documents of the
   plan's partitions this node holds, how many contain each scoring term, and
   how many tokens each scored field has;
2. ``search`` — ``node_hits.node_search`` with the merged statistics: the
   node's first ``k`` hits in the global order with global scores, their
   stored fields and highlighted snippets, the exact number of matches, and
   aggregations.

A ``search`` without statistics (``"stats": None``, ``"plan"``: how many
partitions the whole plan has) is round 1 that may be the last: a node
given every partition of the plan counts the statistics itself, which are
the global ones, and answers; any other node answers ``{"stats": …,
"stamp": …}`` (the stamp names the searcher and partitions it counted).
A ``search`` with statistics remembered from an earlier search also names
their ``"stamps"``; a node whose stamp is not among them answers as round 1.

A ``search`` may name a ``"floor"``: the lowest score its page can hold,
which the coordinator learnt from the same search over the same searchers
(``stats_cache``); hits below it are not sent, and fewer are rescored.

A request may ask for a less exact ``"ranking"`` (``query_compile``'s
``global_idf``: the boosts without rescoring, so round 1 counts no field
lengths; ``local``: each node's own statistics, so there is no round 1 and a
search is one round, as Elasticsearch's ``query_then_fetch``). Without it,
ranking is as exact as the query allows.

``count`` answers ``legion search stats``: live documents per partition,
tombstones, and the size of the node's index on disk.
"""

from __future__ import annotations

import math
import re
import threading
from collections import OrderedDict
from typing import Any

import tantivy

from engines.search.node_hits import node_search
from engines.search.query_compile import RANKING_LOCAL, ParsedQuery, parse_query, with_ranking
from engines.search.query_compile import local_stats as count_stats
from engines.search.ranking import CollectionStats
from engines.search.scope import Scope, SearcherView
from engines.search.shard import DELETED, PARTITION, SOURCE, Shard
from legion import json_codec
from legion.errors import BadRequest

SNIPPET_CHARS_MAX = 200
HITS_MAX = 10_000
PARSED_QUERIES_MAX = 1_024  # parsed queries remembered per node (every incarnation together)
NO_INDEX_STAMP = "none"  # a node that has not heard of the index counts nothing, until it creates it (a new view)

_parsed: OrderedDict[tuple[str, str], ParsedQuery] = OrderedDict()
_parsed_lock = threading.Lock()  # worker threads answer searches concurrently


def answer(shard: Shard | None, partitions: list[int], query: dict[str, Any]) -> dict[str, Any] | list[Any]:
    """Dispatch one coverage request to its round. ``shard`` is None when this node has not heard of the index."""
    op = query.get("op")
    if op == "stats":
        return _stats(shard, partitions, query)
    if op == "search":
        return _search(shard, partitions, query)
    if op == "count":
        return _count(shard, partitions)
    raise BadRequest(f"unknown search coverage request {op!r}")


def parse(shard: Shard, text: object) -> ParsedQuery:
    """The user's query as tantivy parses it against this index; BadRequest names what is wrong.

    Remembered per incarnation (the parse depends on the schema alone), so that the
    two rounds of a search, and searches repeating a query, parse it once."""
    if not isinstance(text, str) or not text.strip():
        raise BadRequest("q must be a non-empty query string")
    key = (shard.incarnation, text)
    with _parsed_lock:
        found = _parsed.get(key)
        if found is not None:
            _parsed.move_to_end(key)
            return found
    found = _parse(shard, text)
    with _parsed_lock:
        _parsed[key] = found
        while len(_parsed) > PARSED_QUERIES_MAX:
            _parsed.popitem(last=False)
    return found


def _parse(shard: Shard, text: str) -> ParsedQuery:
    try:
        return parse_query(shard.index, shard.fields, text, shard.schema.default_fields)
    except BadRequest as error:
        culprit = _mistyped_term(shard, text) if "wrong value type" in error.message else None
        if culprit is None:
            raise
        raise BadRequest(f"{error.message} ({culprit})", **error.details) from None


FIELD_TERM = re.compile(r"(?<![\w.])([A-Za-z][A-Za-z0-9_]*):([^\s()\[\]{}]+)")
NUMERIC_VALUE = {
    "i64": re.compile(r"^[<>]?=?[+-]?\d+$"),
    "u64": re.compile(r"^[<>]?=?\+?\d+$"),
    "f64": re.compile(r"^[<>]?=?[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"),
    "bool": re.compile(r"^(true|false)$"),
}


def _mistyped_term(shard: Shard, text: str) -> str | None:
    """Which ``field:value`` of the query holds a value its field's type cannot (tantivy's message names none)."""
    for name, value in FIELD_TERM.findall(text):
        spec = next((f for f in shard.schema.fields if f.name == name), None)
        pattern = NUMERIC_VALUE.get(spec.type) if spec is not None else None
        if pattern is not None and not pattern.match(value.strip('"')):
            return f"field {name!r} is {spec.type}; {value!r} is not"
    return None


def _stats(shard: Shard | None, partitions: list[int], query: dict[str, Any]) -> list[Any]:
    """Round 1 alone (``op: stats``): this node's statistics of the partitions it was given."""
    return _counted(shard, shard.view() if shard is not None else None, partitions, query)


def _counted(shard: Shard | None, view: SearcherView | None, partitions: list[int], query: dict[str, Any]) -> list[Any]:
    if shard is None or view is None:
        return CollectionStats().to_wire()
    parsed = _ranked(shard, query)
    return count_stats(view.searcher, shard.fields, parsed.stats_request, partitions, view).to_wire()


def _ranked(shard: Shard, query: dict[str, Any]) -> ParsedQuery:
    """The request's query, ranked no more exactly than its ``"ranking"`` asks (as exactly as it can without one)."""
    parsed = parse(shard, query.get("q"))
    ranking = query.get("ranking")
    if ranking is None:
        return parsed
    if not isinstance(ranking, str):
        raise BadRequest("ranking must be a string")
    return with_ranking(parsed, ranking)


def _round_one(shard: Shard | None, view: SearcherView | None, partitions: list[int], query: dict[str, Any]) -> dict[str, Any]:
    """This node's statistics of the partitions it was given, and the stamp they hold under (one view for both)."""
    return {"stats": _counted(shard, view, partitions, query), "stamp": _stamp(view, partitions)}


def _stamp(view: SearcherView | None, partitions: list[int]) -> str:
    return view.stamp(partitions) if view is not None else NO_INDEX_STAMP


def _search(shard: Shard | None, partitions: list[int], query: dict[str, Any]) -> dict[str, Any]:
    """Round 2; or, with ``"stats": None``, round 1 that answers outright if this node was given the whole plan.

    A round 2 whose statistics were remembered from an earlier search names the
    ``"stamps"`` they were counted under (``scope.SearcherView.stamp``); a node
    whose own stamp is not among them (it committed since, or was given other
    partitions) answers as round 1 would, so that the coordinator counts again."""
    k = query.get("k")
    if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k <= HITS_MAX:
        raise BadRequest(f"k must be an integer in 0..{HITS_MAX}")
    # One searcher for the whole answer: counts, stamps, idfs and explanations agree.
    view = shard.view() if shard is not None else None
    whole_plan = query.get("stats") is None
    own_statistics = query.get("ranking") == RANKING_LOCAL  # each node ranks with its own: no round 1
    part_of_plan = False  # this node answers for some of the plan's partitions, with statistics of its own
    if whole_plan:
        plan = query.get("plan")
        if not isinstance(plan, int) or isinstance(plan, bool) or plan < 1:
            raise BadRequest("a search without statistics names the number of partitions of its plan")
        if len(partitions) < plan:
            if not own_statistics:  # the global statistics come first
                return _round_one(shard, view, partitions, query)
            part_of_plan = True
    stamps = query.get("stamps")
    if stamps is not None:
        if not isinstance(stamps, list) or not all(isinstance(s, str) for s in stamps):
            raise BadRequest("stamps must be a list of strings")
        if _stamp(view, partitions) not in stamps:
            return _round_one(shard, view, partitions, query)
    if shard is None or view is None:
        return {"total": 0, "hits": [], "aggs": {}, "ranking": "exact"}
    parsed = _ranked(shard, query)
    searcher, scope = view.searcher, view.scope(partitions)
    if whole_plan and (scope.native or own_statistics):
        stats = CollectionStats(scope.doc_count)  # tantivy's own statistics are the plan's, or the ones asked for
    elif whole_plan:
        stats = count_stats(searcher, shard.fields, parsed.stats_request, partitions, view)
    else:
        stats = CollectionStats.from_wire(query.get("stats"))
    found = node_search(parsed, shard.fields, searcher, stats, partitions, k, scope, _floor(query))
    sources = [_source(searcher.doc(hit.address)) for hit in found.hits]
    fields = query.get("fields")
    snippets = _snippets(shard, searcher, parsed.original, sources) if query.get("snippets", True) else [{} for _ in sources]
    hits = [[hit.score, hit.id, _stored(shard, source, fields), snip] for hit, source, snip in zip(found.hits, sources, snippets)]
    aggs = query.get("aggs") or {}
    aggregated = searcher.aggregate(_matching(parsed.original, scope), aggs) if aggs else {}
    # Scores from this node's own statistics are the plan's only when it holds the whole plan.
    ranked = RANKING_LOCAL if part_of_plan else found.ranking
    return {"total": found.total, "hits": hits, "aggs": aggregated, "ranking": ranked}


def _floor(query: dict[str, Any]) -> float | None:
    """The lowest score the page can hold, when the coordinator knows it (``node_hits.node_search``)."""
    floor = query.get("floor")
    if floor is None:
        return None
    if not isinstance(floor, int | float) or isinstance(floor, bool) or not math.isfinite(floor):
        raise BadRequest("floor must be a finite number")
    return float(floor)


def _matching(query: tantivy.Query, scope: Scope) -> tantivy.Query:
    """``query`` restricted to the scope's live documents, by a clause that scores zero."""
    if scope.filter is None:
        return query
    live = tantivy.Query.const_score_query(scope.filter, 0.0)
    return tantivy.Query.boolean_query([(tantivy.Occur.Must, query), (tantivy.Occur.Must, live)])


def _source(doc: tantivy.Document) -> dict[str, Any]:
    """A hit's document as it was indexed (``_source``; none for a tombstone)."""
    source = doc.get_first(SOURCE)
    if source is None:
        return {}
    values = json_codec.loads(source)
    return values if isinstance(values, dict) else {}


def _stored(shard: Shard, source: dict[str, Any], fields: Any) -> dict[str, Any]:
    """The stored fields of a hit as they were indexed, optionally only ``fields``."""
    wanted = set(shard.schema.stored_fields)
    if isinstance(fields, list):
        wanted &= {f for f in fields if isinstance(f, str)}
    return {name: value for name, value in source.items() if name in wanted}


def _snippets(shard: Shard, searcher: tantivy.Searcher, query: tantivy.Query, sources: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Highlighted fragments of the stored text fields the query matched, per hit.

    Cut from the hit's ``_source`` (tantivy stores no user field: see ``shard.tantivy_schema``),
    each value of the field as one value of a document, as it was indexed."""
    out: list[dict[str, str]] = [{} for _ in sources]
    if not sources:
        return out
    for spec in shard.schema.fields:
        if spec.type != "text" or not spec.stored or not spec.indexed:
            continue
        generator = tantivy.SnippetGenerator.create(searcher, query, shard.tantivy_schema, spec.name)
        generator.set_max_num_chars(SNIPPET_CHARS_MAX)
        for i, source in enumerate(sources):
            value = source.get(spec.name)
            texts = [v for v in (value if isinstance(value, list) else [value]) if isinstance(v, str)]
            if not texts:
                continue
            doc = tantivy.Document()
            for text in texts:
                doc.add_text(spec.name, text)
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
