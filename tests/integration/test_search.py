"""The search engine on real clusters: ranking like one index, faults, joins, read-your-writes, bad input.

Each test starts its own cluster of real node processes on loopback, creates
an index of Python docstrings (``engines.search.corpus``) and talks to it like
a user — through ``SearchClient`` over HTTP, or the ``legion`` command. The
ranking is checked against one tantivy index built in this process over the
same documents and schema, ordered the way the cluster orders ties (score,
then id).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import tantivy
from prometheus_client.parser import text_string_to_metric_families

from engines.search import corpus
from engines.search.client import SearchClient
from engines.search.node_hits import top_hits
from engines.search.query_compile import IndexFields
from engines.search.ranking import overlap_at_k, top1_agrees
from engines.search.testing import QUERIES
from legion.client import Client
from legion.errors import BadRequest, Conflict, NotFound
from legion.runtime import local_cluster
from tests.conftest import CLUSTER_START_TIMEOUT_S, NO_DASK

DOCS = 3_000
INDEX = "docs"
K = 10
OVERLAP_MIN = 0.99
TOP1_MIN = 0.97


@pytest.fixture(scope="module")
def documents() -> list[corpus.CorpusDoc]:
    return list(corpus.documents(limit=DOCS))


@dataclass
class Reference:
    """One in-process tantivy index over the same documents and schema."""

    index: tantivy.Index
    fields: IndexFields

    def search(self, query: str, count: int) -> list:
        parsed = self.index.parse_query(query, ["title", "body"])
        return top_hits(self.index.searcher(), self.fields, parsed, None, count)


@pytest.fixture(scope="module")
def reference(documents) -> Reference:
    builder = tantivy.SchemaBuilder()
    builder.add_text_field("_id", stored=True, tokenizer_name="raw")
    builder.add_text_field("title", stored=True)
    builder.add_text_field("body", stored=True)
    builder.add_text_field("module", stored=True, tokenizer_name="raw")
    builder.add_text_field("kind", stored=True, tokenizer_name="raw")
    builder.add_integer_field("lines", stored=True, indexed=True, fast=True)
    builder.add_unsigned_field("size", stored=True, indexed=True, fast=True)
    schema = builder.build()
    index = tantivy.Index(schema)
    writer = index.writer(100_000_000, 1)
    for doc in documents:
        fields = doc.fields()
        fields["_id"] = fields.pop("id")
        writer.add_document(tantivy.Document.from_dict(fields, schema))
    writer.commit()
    writer.wait_merging_threads()
    index.reload()
    names = ("_id", "title", "body", "module", "kind", "lines", "size")
    return Reference(index, IndexFields(schema, names))


@dataclass
class SearchCluster:
    directory: Path
    client: Client

    @property
    def search(self) -> SearchClient:
        return SearchClient(self.client)

    def node_client(self, node_id: str) -> Client:
        """A client of one node only (a context manager)."""
        node = next(n for n in local_cluster.load(self.directory)["nodes"] if n["id"] == node_id)
        token = (self.directory / "token").read_text().strip()
        return Client([node["url"]], token)


def start(tmp_path: Path, *, replicas: int, documents: list[corpus.CorpusDoc] | None = None) -> SearchCluster:
    directory = tmp_path / "cluster"
    local_cluster.up(
        directory, nodes=3, partitions=64, replicas=replicas, base_port=0, timeout_s=CLUSTER_START_TIMEOUT_S, options=NO_DASK
    )
    client = Client.connect(directory)
    cluster = SearchCluster(directory, client)
    cluster.search.create(INDEX, corpus.SCHEMA)
    if documents is not None:
        report = cluster.search.ingest(INDEX, corpus.json_lines(documents))
        assert (report.indexed, report.failed) == (len(documents), 0), report.errors[:3]
    return cluster


@pytest.fixture
def cluster_of(tmp_path) -> Iterator:
    started: list[SearchCluster] = []

    def make(**kwargs) -> SearchCluster:
        started.append(start(tmp_path, **kwargs))
        return started[-1]

    yield make
    for cluster in started:
        cluster.client.close()
        local_cluster.down(cluster.directory)


def results(search: SearchClient, queries=QUERIES) -> dict[str, list[tuple[str, float]]]:
    out = {}
    for query in queries:
        answer = search.search(INDEX, query, limit=K, snippets=False)
        assert answer["partitions_missing"] == []
        out[query] = [(hit["id"], hit["score"]) for hit in answer["hits"]]
    return out


def assert_ranks_like_one_index(search: SearchClient, reference: Reference) -> None:
    overlaps, top1 = [], []
    for query in QUERIES:
        answer = search.search(INDEX, query, limit=K, snippets=False)
        ids = [hit["id"] for hit in answer["hits"]]
        expected = reference.search(query, 20 * K)
        scores = {hit.id: hit.score for hit in expected}
        overlaps.append(overlap_at_k(ids, [hit.id for hit in expected], K))
        top1.append(top1_agrees(ids, expected, scores))
        assert answer["total"] == reference.index.searcher().search(
            reference.index.parse_query(query, ["title", "body"]), limit=1, count=True
        ).count, query
    mean_overlap, mean_top1 = sum(overlaps) / len(overlaps), sum(top1) / len(top1)
    print(f"\n{len(QUERIES)} queries: mean overlap@{K} {mean_overlap:.4f}, top-1 agreement {mean_top1:.4f}")
    assert mean_overlap >= OVERLAP_MIN
    assert mean_top1 >= TOP1_MIN


def assert_aggregations_merge_across_nodes(search: SearchClient, documents: list[corpus.CorpusDoc]) -> None:
    aggs = {
        "kinds": {"terms": {"field": "kind", "size": 10}},
        "lines": {"stats": {"field": "lines"}},
        "sizes": {"range": {"field": "size", "ranges": [{"to": 100}, {"from": 100}]}},
    }
    answer = search.search(INDEX, "*", limit=1, aggs=aggs)["aggs"]
    kinds: dict[str, int] = {}
    for doc in documents:
        kinds[doc.kind] = kinds.get(doc.kind, 0) + 1
    assert {b["key"]: b["doc_count"] for b in answer["kinds"]["buckets"]} == kinds
    lines = [doc.lines for doc in documents]
    assert (answer["lines"]["count"], answer["lines"]["min"], answer["lines"]["max"]) == (len(lines), min(lines), max(lines))
    assert answer["lines"]["sum"] == pytest.approx(sum(lines))
    small = sum(1 for doc in documents if doc.size < 100)
    assert [b["doc_count"] for b in answer["sizes"]["buckets"]] == [small, len(documents) - small]


def assert_faster_rankings_say_so_and_leave_exact_ranking_intact(search: SearchClient) -> None:
    # Elasticsearch's search_type: a less exact ranking is asked for by name, says so in its answer, finds
    # the same documents, and keeps the statistics it remembers apart from the exact ranking's.
    for query in QUERIES[:12]:
        exact = search.search(INDEX, query, limit=K, snippets=False)
        for ranking in ("global_idf", "local"):
            for _repeat in range(2):  # a repeated global_idf search is one round, with what it remembered
                answer = search.search(INDEX, query, limit=K, snippets=False, ranking=ranking)
                assert answer["total"] == exact["total"], (query, ranking)
                assert len(answer["hits"]) == len(exact["hits"]), (query, ranking)
                # As asked, or less exact when exact ranking was already out of reach for the query.
                assert answer["ranking"] == (ranking if exact["ranking"] == "exact" else "local"), (query, ranking)
        again = search.search(INDEX, query, limit=K, snippets=False)
        assert again["ranking"] == exact["ranking"] and again["hits"] == exact["hits"], query
    with pytest.raises(BadRequest, match="ranking must be one of exact, global_idf, local"):
        search.search(INDEX, "decode", ranking="fuzzy")


def partitions_of(client: Client, node_id: str) -> list[int]:
    placement = client.status()["placement"]
    return [p for p, nodes in enumerate(placement) if node_id in nodes]


def test_three_replicas_rank_like_one_index_lose_nothing_with_a_dead_node_and_keep_results_when_a_node_joins(
    cluster_of, documents, reference
):
    cluster = cluster_of(replicas=3, documents=documents)
    assert_ranks_like_one_index(cluster.search, reference)
    before = results(cluster.search)

    local_cluster.stop_node(cluster.directory, "n2", kill=True)
    with cluster.node_client("n3") as client:
        assert results(SearchClient(client)) == before  # one replica of every partition is still up

    local_cluster.start_node(cluster.directory, "n2")
    local_cluster.add_node(cluster.directory, timeout_s=120)
    with cluster.node_client("n4") as client:
        assert results(SearchClient(client)) == before
    assert_ranks_like_one_index(cluster.search, reference)


def test_one_replica_ranks_like_one_index_and_a_dead_node_s_partitions_are_named(cluster_of, documents, reference):
    cluster = cluster_of(replicas=1, documents=documents)
    assert_ranks_like_one_index(cluster.search, reference)
    assert_aggregations_merge_across_nodes(cluster.search, documents)
    assert_faster_rankings_say_so_and_leave_exact_ranking_intact(cluster.search)
    lost = partitions_of(cluster.client, "n3")
    local_cluster.stop_node(cluster.directory, "n3", kill=True)
    with cluster.node_client("n1") as client:
        answer = SearchClient(client).search(INDEX, "decode", limit=K)
    assert answer["partitions_missing"] == lost
    assert 0 < answer["total"] < reference.index.searcher().search(reference.index.parse_query("decode", ["title", "body"]), 1).count


def metric(client: Client, name: str) -> float:
    """The sum of one metric's samples on the node ``client`` talks to."""
    text = client.request("GET", "/metrics").body.decode()
    return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples if s.name == name)


def reloads(cluster: SearchCluster) -> float:
    """Searcher reloads (commits that changed something) on every node so far."""
    total = 0.0
    for node_id in ("n1", "n2", "n3"):
        with cluster.node_client(node_id) as client:
            total += metric(client, "legion_search_searcher_reloads")
    return total


def test_a_coordinator_searches_in_one_round_with_remembered_statistics_only_until_a_node_commits(
    cluster_of, documents, reference
):
    cluster = cluster_of(replicas=1, documents=documents[:2_000])
    with cluster.node_client("n1") as client:
        search = SearchClient(client)
        unremembered = metric(client, "legion_search_searches_unremembered")
        first = results(search)  # two rounds each: n1 counts, merges and remembers the statistics
        assert metric(client, "legion_search_searches_unremembered") - unremembered == len(set(QUERIES))
        # A pass after one that remembered, with no commit since (a young cluster may still be moving
        # partitions: a few attempts), is all one round.
        for _attempt in range(10):
            before = reloads(cluster)
            assert results(search) == first  # remembers again what a commit had made out of date
            one_round = metric(client, "legion_search_searches_one_round")
            assert results(search) == first
            if reloads(cluster) == before:
                break
        assert metric(client, "legion_search_searches_one_round") - one_round >= len(QUERIES) - 2  # one or two rank locally
        # Every node commits (the ingest ends with a refresh): the statistics n1 remembers are out of date.
        recounted = metric(client, "legion_search_searches_recounted")
        report = search.ingest(INDEX, corpus.json_lines(documents[2_000:]))
        assert report.failed == 0
        checked = 0
        for query in QUERIES:
            expected = {hit.id: hit.score for hit in reference.search(query, 20 * K)}
            for hit in search.search(INDEX, query, limit=K, snippets=False)["hits"]:
                if hit["id"] in expected:  # a long run of tied scores may reach past the reference's 200
                    assert hit["score"] == pytest.approx(expected[hit["id"]], rel=1e-5), (query, hit["id"])
                    checked += 1
        assert checked > 5 * len(QUERIES)
        assert metric(client, "legion_search_searches_recounted") - recounted >= len(QUERIES) - 2
        assert_ranks_like_one_index(search, reference)


def test_updates_and_deletes_survive_kill_9_between_the_acknowledgement_and_the_commit(cluster_of):
    cluster = cluster_of(replicas=1)
    search = cluster.search
    original = [{"id": f"doc-{i}", "title": f"original {i}", "body": "alpha", "module": "m", "kind": "k", "lines": i, "size": 1} for i in range(200)]
    search.ingest(INDEX, (json.dumps(d).encode() for d in original))
    assert search.search(INDEX, "alpha", limit=1)["total"] == 200

    # Deletes, then updates, all acknowledged within the flush interval (the commit comes up to
    # a second after the first): the deletes are sent at once, so a loaded machine still fits.
    def delete(doc_id: str) -> None:
        with cluster.client.copy() as own:
            SearchClient(own).delete(INDEX, doc_id)

    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(delete, (f"doc-{i}" for i in range(100, 150))))
    updated = [{**d, "body": "omega"} for d in original[:100]]
    answer = search.bulk(INDEX, b"".join(json.dumps(d).encode() + b"\n" for d in updated))
    assert answer["indexed"] == 100
    not_yet = search.search(INDEX, "omega", limit=1)["total"]
    for node in local_cluster.load(cluster.directory)["nodes"]:
        local_cluster.stop_node(cluster.directory, node["id"], kill=True)
    assert not_yet < 100, "the updates were already searchable before the kill: nothing was left to replay"
    for node in local_cluster.load(cluster.directory)["nodes"]:
        _restart(cluster.directory, node["id"])
    cluster.client.close()

    with Client.connect(cluster.directory) as client:
        search = SearchClient(client)
        deadline = time.monotonic() + 60
        answer = search.search(INDEX, "omega", limit=1)
        # Replayed writes are committed within a flush interval; on a loaded machine a restarted node may
        # take a while longer to serve its partitions again (the answer names them as missing meanwhile).
        while (answer["total"] < 100 or answer["partitions_missing"]) and time.monotonic() < deadline:
            time.sleep(0.2)
            answer = search.search(INDEX, "omega", limit=1)
        assert answer["total"] == 100 and not answer["partitions_missing"], answer
        assert search.search(INDEX, "alpha", limit=200)["total"] == 50
        alive = {hit["id"] for hit in search.search(INDEX, "alpha OR omega", limit=300)["hits"]}
        assert alive == {f"doc-{i}" for i in range(100)} | {f"doc-{i}" for i in range(150, 200)}
        for i in (0, 99):
            assert search.get(INDEX, f"doc-{i}")["doc"]["body"] == "omega"
        with pytest.raises(NotFound):
            search.get(INDEX, "doc-120")


def _restart(directory: Path, node_id: str) -> None:
    deadline = time.monotonic() + 10
    while True:  # the killed process's socket may take a moment to close
        try:
            local_cluster.start_node(directory, node_id)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_a_search_right_after_cli_ingest_sees_every_document(cluster_of, legion_cli, tmp_path):
    cluster = cluster_of(replicas=3)
    docs = tmp_path / "docs.jsonl"
    docs.write_bytes(b"".join(corpus.json_lines(corpus.documents(limit=5_000))))
    environment = ["--cluster", str(cluster.directory)]
    ingest = legion_cli("search", "ingest", INDEX, str(docs), "--batch", "700", *environment)
    assert ingest.returncode == 0, ingest.stderr
    assert "indexed 5,000 documents" in ingest.stdout
    query = legion_cli("search", "query", INDEX, "*", "--json", *environment)
    assert query.returncode == 0, query.stderr
    assert json.loads(query.stdout)["total"] == 5_000
    # --ranking reaches the nodes: every node holds every partition here, so even `local` ranks exactly.
    local = legion_cli("search", "query", INDEX, "json", "--ranking", "local", "--json", *environment)
    assert local.returncode == 0, local.stderr
    assert json.loads(local.stdout)["ranking"] == "exact"
    wrong = legion_cli("search", "query", INDEX, "json", "--ranking", "fuzzy", *environment)
    assert wrong.returncode == 1 and "ranking must be one of exact, global_idf, local" in wrong.stderr


def test_bad_input_gets_a_4xx_that_names_the_problem(cluster_of):
    cluster = cluster_of(replicas=1)
    search = cluster.search
    search.put(INDEX, {"id": "a", "title": "hello", "body": "world", "module": "m", "kind": "k", "lines": 1, "size": 2}, refresh=True)
    cases = [
        (lambda: search.search(INDEX, 'title:"unclosed'), BadRequest, "syntax"),
        (lambda: search.search(INDEX, "colour:red"), BadRequest, "colour"),
        (lambda: search.search(INDEX, "lines:many"), BadRequest, "lines"),
        (lambda: search.search(INDEX, "hello", limit=-1), BadRequest, "limit"),
        (lambda: cluster.client.request("GET", f"/v1/search/{INDEX}?q=hello&ranking=fuzzy"), BadRequest, "ranking must be one of"),
        (lambda: search.search(INDEX, "hello", fields=["nope"]), BadRequest, "nope"),
        (lambda: search.search(INDEX, "hello", aggs={"x": {"terms": {"field": "title"}}}), BadRequest, "fast"),
        (lambda: search.search("nothere", "hello"), NotFound, "nothere"),
        (lambda: search.create("other", {"fields": {"id": {"type": "strange"}}}), BadRequest, "type must be one of"),
        (lambda: search.create(INDEX, {"fields": {"id": {"type": "keyword"}, "t": {"type": "text"}}}), Conflict, "exists"),
        (lambda: cluster.client.request("PUT", "/v1/search/Bad..Name", json=corpus.SCHEMA), BadRequest, "index name"),
        (lambda: cluster.client.request("POST", f"/v1/search/{INDEX}/_search", body=b"{not json"), BadRequest, "JSON"),
        (lambda: search.put(INDEX, {"id": "b", "lines": "many"}), BadRequest, "'lines'"),
    ]
    for call, error, fragment in cases:
        with pytest.raises(error) as raised:
            call()
        assert fragment in raised.value.message, raised.value.message

    lines = [
        b'{"id": "ok-1", "title": "fine"}',
        b"{broken json",
        b'{"title": "no id"}',
        b'{"id": 5, "title": "numeric id"}',
        b'{"id": "bad-type", "size": -3}',
        b'{"id": "ok-2", "title": "fine too"}',
        b'{"id": "lone-surrogate", "title": "\\ud800"}',
    ]
    answer = search.bulk(INDEX, b"\n".join(lines) + b"\n", refresh=True)
    assert answer["indexed"] == 2
    assert [(e["line"], e["error"]) for e in answer["errors"]] == [(2, "bad_request"), (3, "bad_request"), (4, "bad_request"), (5, "bad_request"), (7, "bad_request")]
    assert "Unicode" in answer["errors"][4]["message"]
    assert "no id" in answer["errors"][1]["message"] and "'size'" in answer["errors"][3]["message"]
    assert search.search(INDEX, "fine", limit=5)["total"] == 2
