"""The search engine's HTTP API: indexes, documents, bulk ingest, search and stats.

I/O (through the ``Cluster`` handle). Handlers check their input — the
index name, the schema, each document against the schema, the query — and
raise ``BadRequest``/``NotFound``/``Conflict`` naming the problem before
anything is written; the runtime turns those into 4xx answers.

| route | does |
|---|---|
| ``GET /v1/search`` | the indexes and their schemas |
| ``PUT /v1/search/{index}`` | create an index from a JSON schema (``create`` to every partition) |
| ``DELETE /v1/search/{index}`` | drop it (``drop`` to every partition) |
| ``GET /v1/search/{index}?q=&limit=&offset=&fields=&snippets=&ranking=`` | search |
| ``POST /v1/search/{index}/_search`` | search with a JSON body, also ``aggs`` |
| ``GET /v1/search/{index}/_stats`` | documents per partition and node, size on disk |
| ``POST /v1/search/{index}/_refresh`` | make everything acknowledged so far searchable |
| ``POST /v1/search/{index}/docs?refresh=wait_for&w=`` | bulk ingest, NDJSON, streamed (``bulk_ingest``) |
| ``PUT/GET/DELETE /v1/search/{index}/docs/{id}`` | one document |

A search is two coverage rounds on the same plan: global term statistics
(``local_search`` round 1), then scoring with them (round 2), so the ranking
is the one a single index over all the documents would give. When one node
is given the whole plan (every node holds every partition, as with N equal
to the node count), it has the global statistics itself and answers in the
first round. A coordinator remembers the merged statistics of recent queries
(``stats_cache``): while no node has committed since, a repeated query is
one round, and it names the lowest score its page had the last time
(``floor``), so that the nodes send, and rescore, little more than the page.

``ranking`` trades that exactness for speed, as Elasticsearch's
``search_type`` does (its default is the fast one; here it is the exact one):
``exact`` (the default), ``global_idf`` (global term statistics, but each
node's own average field lengths: no rescoring of the best hits) and
``local`` (each node's own statistics: one round, no statistics at all). The
answer's ``ranking`` says which the page got: the least exact any node used.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, NamedTuple

from engines.search import aggregations, ranking
from engines.search.bulk_ingest import BulkIngest, document_body
from engines.search.document_builder import LengthCounter
from engines.search.operations import (
    ENGINE_NAME,
    KIND_CREATE,
    KIND_DELETE,
    KIND_DROP,
    KIND_INDEX,
    KIND_REFRESH,
    catalog_keys,
    create_body,
    delete_body,
    drop_body,
)
from engines.search.query_compile import RANKING_EXACT, RANKING_LOCAL, RANKINGS
from engines.search.schema import IndexSchema, check_document, check_index_name, parse_schema
from engines.search.stats_cache import RememberedStats
from legion import ndjson
from legion.engine import Cluster, HttpRequest, HttpResponse, Route, WriteItem
from legion.errors import BadRequest, Conflict, LegionError, NotFound, Unavailable
from legion.keyspace import key_bytes

if TYPE_CHECKING:
    from engines.search.engine import SearchEngine

LIMIT_DEFAULT = 10
# Like Elasticsearch's index.max_result_window: deep pages cost every node offset + limit hits.
RESULT_WINDOW_MAX = 10_000
BULK_ERRORS_SHOWN_MAX = 100
SCHEMAS_CACHED_MAX = 256
TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off"})


def routes(engine: SearchEngine) -> list[Route]:
    api = SearchApi(engine)
    return [
        Route("GET", "/v1/search", api.list_indexes),
        Route("PUT", "/v1/search/{index}", api.create),
        Route("DELETE", "/v1/search/{index}", api.drop),
        Route("GET", "/v1/search/{index}", api.search_get),
        Route("POST", "/v1/search/{index}/_search", api.search_post),
        Route("GET", "/v1/search/{index}/_stats", api.stats),
        Route("POST", "/v1/search/{index}/_refresh", api.refresh),
        Route("POST", "/v1/search/{index}/docs", api.bulk, stream_body=True),
        Route("PUT", "/v1/search/{index}/docs/{id}", api.put_doc),
        Route("GET", "/v1/search/{index}/docs/{id}", api.get_doc),
        Route("DELETE", "/v1/search/{index}/docs/{id}", api.delete_doc),
    ]


def new_incarnation() -> str:
    """A sortable, unique name for one life of an index: creation time (ns, hex) and randomness."""
    return f"{time.time_ns():016x}{secrets.token_hex(4)}"


def flag(req: HttpRequest, name: str, default: bool) -> bool:
    raw = req.query.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() in TRUE_WORDS:
        return True
    if raw.lower() in FALSE_WORDS:
        return False
    raise BadRequest(f"query parameter {name!r} must be true or false, got {raw!r}")


def refresh_param(req: HttpRequest) -> bool:
    """``?refresh=wait_for`` (or true): acknowledge only once the writes are searchable."""
    raw = req.query.get("refresh", "false").lower()
    if raw in ("wait_for", "true", "1", ""):
        return raw != ""
    if raw in ("false", "0"):
        return False
    raise BadRequest(f"refresh must be wait_for or false, got {raw!r}")


class SearchApi:
    """The handlers, bound to this node's engine (for its catalog)."""

    def __init__(self, engine: SearchEngine) -> None:
        self.engine = engine
        self._schemas: dict[str, IndexSchema] = {}

    def schema(self, found: dict[str, Any]) -> IndexSchema:
        """The parsed schema of a live incarnation (``describe``'s answer), parsed once per incarnation."""
        schema = self._schemas.get(found["incarnation"])
        if schema is None:
            if len(self._schemas) >= SCHEMAS_CACHED_MAX:
                self._schemas.clear()
            schema = self._schemas[found["incarnation"]] = parse_schema(found["schema"])
        return schema

    async def describe(self, index: str, cluster: Cluster) -> dict[str, Any]:
        """The live incarnation and schema of ``index``: from this node's catalog, else from a replica's."""
        check_index_name(index)
        found = self.engine.describe(index)
        if found is None:
            key = catalog_keys(index, cluster.partitions)[0]
            replies = await cluster.read(ENGINE_NAME, key, {"op": "catalog", "index": index})
            found = next((r for r in replies if r is not None), None)
        if found is None:
            raise NotFound(f"no search index named {index!r}; create it with `legion search create {index} --schema FILE`")
        return found

    # --- indexes ----------------------------------------------------------------

    async def list_indexes(self, req: HttpRequest, cluster: Cluster) -> HttpResponse:
        found = self.engine.indexes()
        if not found and not self.engine.holds_partitions():
            result = await cluster.coverage(ENGINE_NAME, {"op": "indexes"}, partitions=[0])
            found = result.replies[0].value if result.replies else []
        return HttpResponse.json({"indexes": found})

    async def create(self, req: HttpRequest, cluster: Cluster) -> HttpResponse:
        index = check_index_name(req.path_params["index"])
        schema = parse_schema(req.json())
        try:
            existing = await self.describe(index, cluster)
        except NotFound:
            existing = None
        if existing is not None and parse_schema(existing["schema"]) != schema:
            raise Conflict(f"index {index!r} exists with another schema; drop it first (`legion search drop {index}`)")
        incarnation = existing["incarnation"] if existing else new_incarnation()
        body = create_body(index, incarnation, schema.to_json(), cluster.partitions)
        # Re-sending an existing index's catalog entries is harmless and repairs a create that half failed.
        await self._to_every_partition(cluster, index, KIND_CREATE, body)
        status = 200 if existing else 201
        return HttpResponse.json({"index": index, "incarnation": incarnation, "schema": schema.to_json()}, status=status)

    async def drop(self, req: HttpRequest, cluster: Cluster) -> HttpResponse:
        index = req.path_params["index"]
        found = await self.describe(index, cluster)
        body = drop_body(index, found["incarnation"], cluster.partitions)
        await self._to_every_partition(cluster, index, KIND_DROP, body)
        return HttpResponse.json({"index": index, "dropped": True})

    async def _to_every_partition(self, cluster: Cluster, index: str, kind: str, body: bytes) -> None:
        items = [WriteItem(key, kind, body) for key in catalog_keys(index, cluster.partitions)]
        results = await cluster.write_many(ENGINE_NAME, items, refresh=True)
        failed = [r for r in results if isinstance(r, LegionError)]
        if failed:
            raise Unavailable(
                f"{kind} of index {index!r} reached only {len(results) - len(failed)} of {len(results)} partitions "
                f"({failed[0].message}); retry the same request"
            )

    # --- documents ----------------------------------------------------------------

    async def put_doc(self, req: HttpRequest, cluster: Cluster) -> HttpResponse:
        index = req.path_params["index"]
        found = await self.describe(index, cluster)
        schema = self.schema(found)
        doc = req.json()
        if isinstance(doc, dict) and schema.id_field not in doc:
            doc = {**doc, schema.id_field: req.path_params["id"]}
        doc_id, checked = check_document(schema, doc)
        if doc_id != req.path_params["id"]:
            raise BadRequest(f"the document's {schema.id_field!r} is {doc_id!r} but the URL names {req.path_params['id']!r}")
        body = document_body(index, found["incarnation"], checked, LengthCounter(schema))
        [result] = await cluster.write_many(
            ENGINE_NAME, [WriteItem(key_bytes(doc_id), KIND_INDEX, body)], w=req.int_param("w"), refresh=refresh_param(req)
        )
        if isinstance(result, LegionError):
            raise result
        return HttpResponse.json({"id": doc_id, "partition": result.partition, "hlc": result.hlc, "acks": result.acks})

    async def delete_doc(self, req: HttpRequest, cluster: Cluster) -> HttpResponse:
        index = req.path_params["index"]
        found = await self.describe(index, cluster)
        doc_id = req.path_params["id"]
        body = delete_body(index, found["incarnation"])
        [result] = await cluster.write_many(
            ENGINE_NAME, [WriteItem(key_bytes(doc_id), KIND_DELETE, body)], w=req.int_param("w"), refresh=refresh_param(req)
        )
        if isinstance(result, LegionError):
            raise result
        return HttpResponse.json({"id": doc_id, "deleted": True, "hlc": result.hlc, "acks": result.acks})

    async def get_doc(self, req: HttpRequest, cluster: Cluster) -> HttpResponse:
        index = req.path_params["index"]
        found = await self.describe(index, cluster)
        doc_id = req.path_params["id"]
        query = {"op": "get", "index": index, "incarnation": found["incarnation"], "id": doc_id}
        replies = await cluster.read(ENGINE_NAME, key_bytes(doc_id), query, r=req.int_param("r"))
        newest = max((r for r in replies if r is not None), key=lambda r: (r[0], r[1], r[3]), default=None)
        if newest is None or newest[2] is None:
            raise NotFound(f"no document {doc_id!r} in index {index!r}")
        return HttpResponse.json({"id": doc_id, "hlc": newest[0], "doc": json.loads(newest[2])})

    async def bulk(self, req: HttpRequest, cluster: Cluster) -> HttpResponse:
        """Index an NDJSON stream of documents in chunks, several in flight; report per document."""
        started = time.monotonic()
        index = req.path_params["index"]
        found = await self.describe(index, cluster)
        schema = self.schema(found)
        refresh = refresh_param(req)
        ingest = BulkIngest(cluster, index, found["incarnation"], schema, req.int_param("w"))
        assert req.stream is not None
        async for line in ndjson.lines(req.stream):
            await ingest.add(line)
        await ingest.finish()
        if refresh:
            await self._refresh_all(cluster, index, found["incarnation"])
        return HttpResponse.json(
            {
                "took_ms": int((time.monotonic() - started) * 1000),
                "indexed": ingest.indexed,
                "failed": len(ingest.errors),
                "errors": sorted(ingest.errors, key=lambda e: e["line"])[:BULK_ERRORS_SHOWN_MAX],
            }
        )

    async def refresh(self, req: HttpRequest, cluster: Cluster) -> HttpResponse:
        index = req.path_params["index"]
        found = await self.describe(index, cluster)
        await self._refresh_all(cluster, index, found["incarnation"])
        return HttpResponse.json({"index": index, "refreshed": True})

    async def _refresh_all(self, cluster: Cluster, index: str, incarnation: str) -> None:
        """Flush every live replica of every partition (a no-op operation written with refresh).

        The bulk documents of a ``refresh=wait_for`` request flush their own
        partitions' replicas; this reaches the others too, so that documents
        acknowledged by earlier requests (other partitions, other nodes) are
        searchable as well when the answer comes."""
        await self._to_every_partition(cluster, index, KIND_REFRESH, delete_body(index, incarnation))

    # --- search ----------------------------------------------------------------

    async def search_get(self, req: HttpRequest, cluster: Cluster) -> HttpResponse:
        fields = req.query.get("fields")
        request = {
            "q": req.query.get("q"),
            "limit": req.int_param("limit", LIMIT_DEFAULT),
            "offset": req.int_param("offset", 0),
            "fields": [f for f in fields.split(",") if f] if fields else None,
            "snippets": flag(req, "snippets", True),
        }
        if "ranking" in req.query:
            request["ranking"] = req.query["ranking"]
        return await self._search(req.path_params["index"], request, cluster)

    async def search_post(self, req: HttpRequest, cluster: Cluster) -> HttpResponse:
        body = req.json()
        if not isinstance(body, dict):
            raise BadRequest('the search body is a JSON object: {"q": …, "limit": …, "aggs": {…}}')
        return await self._search(req.path_params["index"], body, cluster)

    async def _search(self, index: str, request: dict[str, Any], cluster: Cluster) -> HttpResponse:
        started = time.monotonic()
        found = await self.describe(index, cluster)
        schema = self.schema(found)
        q, limit, offset, fields, snippets = _search_params(schema, request)
        rank = _ranking_param(request)
        aggs = aggregations.check(schema, request.get("aggs"))
        search = {
            "index": index, "incarnation": found["incarnation"], "q": q, "op": "search", "k": offset + limit,
            "fields": fields, "snippets": snippets, "aggs": aggregations.shard_request(aggs),
        }  # fmt: skip
        # Statistics are remembered per ranking: a global_idf round 1 counts no field lengths, which exact needs.
        remembered_as = (q, rank)
        if rank != RANKING_EXACT:
            search["ranking"] = rank
        counted: tuple[list[dict[str, Any]], RememberedStats] | None = None
        if rank != RANKING_LOCAL:  # a local search has no statistics to remember: it is one round anyway
            counted = await self._remembered_round(index, found["incarnation"], remembered_as, search, cluster)
        missing: list[int] = []
        if counted is not None:
            replies, remembered = counted
        else:
            replies, missing, remembered = await self._two_rounds(index, found["incarnation"], remembered_as, search, cluster)
        hits = ranking.merge_hits([[PageHit(h[1], h[0], h[2], h[3]) for h in r["hits"]] for r in replies], offset, limit)
        if remembered is not None and not missing and limit and len(hits) == limit:
            remembered.floors[offset + limit] = hits[-1].score  # the next search of it may send it as "floor"
        return HttpResponse.json(
            {
                "hits": [hit._asdict() for hit in hits],
                "total": sum(int(r["total"]) for r in replies),
                "took_ms": round((time.monotonic() - started) * 1000, 3),
                "partitions_missing": missing,
                "ranking": _least_exact(r.get("ranking", RANKING_LOCAL) for r in replies),
                **({"aggs": aggregations.merge(aggs, [r.get("aggs") or {} for r in replies])} if aggs else {}),
            }
        )

    async def _remembered_round(
        self, index: str, incarnation: str, remembered_as: tuple[str, str], search: dict[str, Any], cluster: Cluster
    ) -> tuple[list[dict[str, Any]], RememberedStats] | None:
        """The nodes' answers in one round, scored with the statistics remembered as ``remembered_as``, and
        those; None when there are none, or when a node's searcher changed since they were counted
        (``stats_cache``). The lowest score of the page they gave before, if any, goes with them as ``floor``."""
        remembered = self.engine.remembered.get(index, incarnation, remembered_as)
        if remembered is None:
            return None
        request = {**search, "stats": remembered.stats, "stamps": list(remembered.stamps)}
        floor = remembered.floors.get(search["k"])
        if floor is not None:
            request["floor"] = floor
        result = await cluster.coverage(ENGINE_NAME, request, prefer=remembered.served_by, allow_partial=True)
        stale = any("stats" in reply.value for reply in result.replies)
        if stale or result.missing or not remembered.same_plan(result.served_by):
            self.engine.remembered.forget(index, incarnation, remembered_as)
            return None
        return [reply.value for reply in result.replies], remembered

    async def _two_rounds(
        self, index: str, incarnation: str, remembered_as: tuple[str, str], search: dict[str, Any], cluster: Cluster
    ) -> tuple[list[dict[str, Any]], list[int], RememberedStats | None]:
        """The nodes' answers, the partitions missing, and the statistics remembered (as ``remembered_as``)
        if any: round 1, then round 2 if round 1 gave statistics."""
        # Round 1 asks for the answer outright: a node given the whole plan has the global statistics
        # and answers in one round; the others answer with their statistics, and round 2 follows.
        first = await cluster.coverage(ENGINE_NAME, {**search, "stats": None, "plan": cluster.partitions}, allow_partial=True)
        counted = [reply.value for reply in first.replies if "stats" in reply.value]
        if not counted:
            return [reply.value for reply in first.replies], list(first.missing), None
        stats = ranking.merge_stats(ranking.CollectionStats.from_wire(value["stats"]) for value in counted).to_wire()
        remembered = None
        if not first.missing and all("stamp" in value for value in counted):
            stamps = tuple(str(value["stamp"]) for value in counted)
            remembered = RememberedStats(stats, stamps, dict(first.served_by))
            self.engine.remembered.put(index, incarnation, remembered_as, remembered)
        second = await cluster.coverage(
            ENGINE_NAME, {**search, "stats": stats}, partitions=sorted(first.served_by), prefer=first.served_by, allow_partial=True
        )
        if second.missing or not (remembered is None or remembered.same_plan(second.served_by)):
            remembered = None  # a page from another plan says nothing of the plan these statistics were counted over
        return [reply.value for reply in second.replies], sorted(set(first.missing) | set(second.missing)), remembered

    async def stats(self, req: HttpRequest, cluster: Cluster) -> HttpResponse:
        index = req.path_params["index"]
        found = await self.describe(index, cluster)
        query = {"op": "count", "index": index, "incarnation": found["incarnation"]}
        result = await cluster.coverage(ENGINE_NAME, query, allow_partial=True)
        partitions: dict[int, int] = {}
        nodes: dict[str, dict[str, Any]] = {}
        for reply in result.replies:
            counts = {int(p): int(n) for p, n in reply.value["partitions"]}
            partitions.update(counts)
            node = nodes.setdefault(reply.node, {"docs": 0, "partitions": [], "tombstones": 0, "size_bytes": 0})
            node["docs"] += sum(counts.values())
            node["partitions"] = sorted([*node["partitions"], *counts])
            node["tombstones"] += int(reply.value["tombstones"])
            node["size_bytes"] = max(node["size_bytes"], int(reply.value["size_bytes"]))
        return HttpResponse.json(
            {
                "index": index,
                "incarnation": found["incarnation"],
                "schema": found["schema"],
                "docs": sum(partitions.values()),
                "partitions": {str(p): n for p, n in sorted(partitions.items())},
                "nodes": nodes,
                "partitions_missing": list(result.missing),
            }
        )


class PageHit(NamedTuple):
    """One hit of a result page: a node's ``[score, id, doc, snippets]`` with names."""

    id: str
    score: float
    doc: dict[str, Any]
    snippets: dict[str, str]


def _least_exact(rankings: Iterable[str]) -> str:
    """How exactly the page was ranked: the least exact of the nodes' rankings."""
    return min(rankings, key=lambda r: RANKINGS.index(r) if r in RANKINGS else 0, default=RANKING_EXACT)


def _ranking_param(request: dict[str, Any]) -> str:
    """The ranking a search asks for (``exact`` when it names none)."""
    value = request.get("ranking", RANKING_EXACT)
    if value not in RANKINGS:
        raise BadRequest(f"ranking must be one of {', '.join(reversed(RANKINGS))}, not {value!r:.40}")
    return value


def _search_params(schema: IndexSchema, request: dict[str, Any]) -> tuple[str, int, int, list[str] | None, bool]:
    q = request.get("q")
    if not isinstance(q, str) or not q.strip():
        raise BadRequest("q is missing: give a query such as q=hello or q=title:\"exact phrase\"")
    limit, offset = request.get("limit", LIMIT_DEFAULT), request.get("offset", 0)
    for name, value in (("limit", limit), ("offset", offset)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise BadRequest(f"{name} must be a non-negative integer, got {value!r}")
    if offset + limit > RESULT_WINDOW_MAX:
        raise BadRequest(f"offset + limit must be at most {RESULT_WINDOW_MAX}; page deeper with a narrower query")
    fields = request.get("fields")
    if fields is not None:
        if not isinstance(fields, list) or not all(isinstance(f, str) for f in fields):
            raise BadRequest("fields must be a list of field names")
        for name in fields:
            schema.field(name)  # NotFound-like BadRequest for an unknown field
    snippets = request.get("snippets", True)
    if not isinstance(snippets, bool):
        raise BadRequest("snippets must be true or false")
    return q, limit, offset, fields, snippets
