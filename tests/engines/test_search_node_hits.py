"""Tests of engines.search.node_hits: a node's hits in the global order, and exact rescoring.

A node's answer must be its first hits in the global order (score desc, id
asc) over the live docs of its partitions, and a rescored score must be the
score tantivy itself gives when the statistics are the index's own.
"""

from __future__ import annotations

import pytest
import tantivy

from engines.search import corpus, node_hits, query_compile, ranking, testing
from engines.search.corpus import CorpusDoc
from engines.search.query_compile import RANKING_EXACT, IndexFields
from legion.errors import BadRequest
from legion.keyspace import partition_of

PARTITIONS = 4
TEXT = list(testing.TEXT_FIELDS)


def index_of(docs: list[CorpusDoc], tombstones: tuple[str, ...] = ()) -> tuple[tantivy.Index, IndexFields]:
    fields = testing.corpus_fields()
    index = tantivy.Index(fields.schema)
    writer = index.writer(testing.WRITER_HEAP_BYTES, 1)
    analyzer = query_compile.default_text_analyzer()
    for doc in docs:
        writer.add_document(testing.corpus_document(fields, doc, PARTITIONS, analyzer, tombstone=doc.id in tombstones))
    writer.commit()
    index.reload()
    return index, fields


def twin(doc_id: str) -> CorpusDoc:
    return CorpusDoc(doc_id, "same title", "the same body", "m", "function", 3, 13)


def test_ties_are_won_by_the_smallest_ids_even_past_tantivys_cut() -> None:
    ids = [f"doc{n:03d}" for n in range(300)][::-1]  # indexed in reverse: tantivy meets the largest ids first
    index, fields = index_of([twin(doc_id) for doc_id in ids])
    query = index.parse_query("same", TEXT)
    hits = node_hits.top_hits(index.searcher(), fields, query, None, 5)
    assert [hit.id for hit in hits] == ["doc000", "doc001", "doc002", "doc003", "doc004"]
    assert len({hit.score for hit in hits}) == 1


def test_hits_come_from_the_live_docs_of_the_asked_partitions_only() -> None:
    ids = [f"doc{n:03d}" for n in range(40)]
    dead = tuple(ids[::5])
    index, fields = index_of([twin(doc_id) for doc_id in ids], tombstones=dead)
    asked = {0, 2}
    hits = node_hits.top_hits(index.searcher(), fields, tantivy.Query.all_query(), asked, 100)
    expected = sorted(i for i in ids if i not in dead and partition_of(i, PARTITIONS) in asked)
    assert [hit.id for hit in hits] == expected
    assert node_hits.top_hits(index.searcher(), fields, tantivy.Query.all_query(), set(), 10) == []
    assert node_hits.top_hits(index.searcher(), fields, tantivy.Query.all_query(), asked, 0) == []


def test_the_zero_score_partition_filter_leaves_scores_alone(stdlib_index: tuple[tantivy.Index, IndexFields]) -> None:
    index, fields = stdlib_index
    query = index.parse_query("buffer read", TEXT)
    searcher = index.searcher()
    filtered = node_hits.top_hits(searcher, fields, query, set(range(PARTITIONS)), 10)
    plain = node_hits.top_hits(searcher, fields, query, None, 10)
    assert [(hit.id, hit.score) for hit in filtered] == [(hit.id, hit.score) for hit in plain]


@pytest.fixture(scope="module")
def stdlib_index() -> tuple[tantivy.Index, IndexFields]:
    return index_of(list(corpus.documents(limit=1500)))


@pytest.mark.parametrize(
    "text",
    [
        "buffer", "read write", '"file object"', "title:abc^2 body:return", "(body:buffer^1.3)^1.7 write",
        "+stream -close", "kind:class read", "lines:[1 TO 5] buffer", 'body:"return the num"*', "size:0 title:get",
    ],
)  # fmt: skip
def test_rescoring_with_the_indexs_own_statistics_gives_tantivys_scores_bit_for_bit(
    stdlib_index: tuple[tantivy.Index, IndexFields], text: str
) -> None:
    index, fields = stdlib_index
    searcher = index.searcher()
    parsed = query_compile.parse_query(index, fields, text, TEXT)
    assert parsed.ranking == RANKING_EXACT
    stats = query_compile.local_stats(searcher, fields, parsed.stats_request, set(range(PARTITIONS)))
    answer = node_hits.node_search(parsed, fields, searcher, stats, set(range(PARTITIONS)), 10)
    tantivys = node_hits.top_hits(searcher, fields, parsed.original, None, 10)
    assert answer.ranking == RANKING_EXACT
    assert [(hit.id, hit.score) for hit in answer.hits] == [(hit.id, hit.score) for hit in tantivys]


def test_a_node_rescores_more_candidates_than_it_returns() -> None:
    assert node_hits.rescore_candidates(10) == 2 * 10 + node_hits.RESCORE_CANDIDATES_EXTRA
    assert node_hits.rescore_candidates(0) == 0


def test_a_query_tantivy_refuses_at_search_time_is_a_bad_request() -> None:
    index, fields = index_of([twin("a")])
    query = index.parse_query("title:*", TEXT)  # title is not a fast field
    with pytest.raises(BadRequest, match="not a fast field"):
        node_hits.top_hits(index.searcher(), fields, query, None, 10)


def test_merged_node_answers_are_the_reference_page() -> None:
    sharded = testing.ShardedCorpus.build(corpus.documents(limit=800), shards=3)
    for text in ("buffer", "kind:method read"):
        comparison = sharded.compare(text, k=10)
        assert comparison.ids == comparison.reference_ids
        assert comparison.ranking == RANKING_EXACT
        assert ranking.overlap_at_k(comparison.ids, comparison.reference_ids, 10) == 1.0


@pytest.mark.parametrize("messy", [False, True])
def test_rescoring_stops_early_only_where_no_later_candidate_could_enter_the_page(messy: bool) -> None:
    sharded = testing.ShardedCorpus.build(corpus.documents(limit=1_500), shards=3, messy=messy)
    explained = pruned_away = floored_away = 0
    # Per shard, the average field lengths explanations printed, shared by every search on it, as a
    # SearcherView shares them: later queries know them before explaining a leaf of every field.
    average_lengths: list[dict[str, float]] = [{} for _ in sharded.shards]
    for text in testing.QUERIES:
        for shard, partitions, seen in zip(sharded.shards, sharded.plan, average_lengths):
            searcher = shard.searcher()
            parsed = query_compile.parse_query(shard, sharded.fields, text, TEXT)
            if parsed.ranking != RANKING_EXACT:
                continue
            stats = ranking.merge_stats(
                query_compile.local_stats(other.searcher(), sharded.fields, parsed.stats_request, plan)
                for other, plan in zip(sharded.shards, sharded.plan)
            )
            query = query_compile.ranked_query(parsed, sharded.fields, searcher, stats)
            candidates = node_hits.top_hits(searcher, sharded.fields, query, partitions, node_hits.rescore_candidates(10))
            every = node_hits.rescore(parsed, sharded.fields, searcher, stats, candidates)
            some = node_hits.rescore(parsed, sharded.fields, searcher, stats, candidates, 10, seen=seen)
            assert some == every[: len(some)], text
            assert ranking.first_hits(some, 10) == ranking.first_hits(every, 10), text
            explained, pruned_away = explained + len(every), pruned_away + len(every) - len(some)
            # With a floor (here the 5th best exact score), only what can reach it is explained.
            page = ranking.first_hits(every, 10)
            if len(page) >= 5:
                floor = page[4].score
                above = node_hits.rescore(parsed, sharded.fields, searcher, stats, candidates, 10, floor=floor, seen=seen)
                assert above == every[: len(above)], text
                assert [h for h in ranking.first_hits(above, 10) if h.score >= floor] == [h for h in page if h.score >= floor], text
                floored_away += len(some) - len(above)
    assert pruned_away > explained // 3  # the point: most candidates past the page are never explained
    assert floored_away > 0


@pytest.mark.parametrize("messy", [False, True])
def test_a_node_answer_counts_the_matching_live_docs_of_its_partitions_in_the_pass_that_finds_its_hits(messy: bool) -> None:
    sharded = testing.ShardedCorpus.build(corpus.documents(limit=1_200), shards=3, messy=messy)
    rescored = 0
    for text in testing.QUERIES:
        for shard, partitions in zip(sharded.shards, sharded.plan):
            searcher = shard.searcher()
            parsed = query_compile.parse_query(shard, sharded.fields, text, TEXT)
            stats = ranking.merge_stats(
                query_compile.local_stats(other.searcher(), sharded.fields, parsed.stats_request, plan)
                for other, plan in zip(sharded.shards, sharded.plan)
            )
            live = tantivy.Query.const_score_query(query_compile.live_filter(sharded.fields, partitions), 0.0)
            matching = tantivy.Query.boolean_query([(tantivy.Occur.Must, parsed.original), (tantivy.Occur.Must, live)])
            expected = searcher.search(matching, limit=1, count=True).count
            for k in (10, 0):
                answer = node_hits.node_search(parsed, sharded.fields, searcher, stats, partitions, k)
                assert answer.total == expected, (text, k)
                assert len(answer.hits) == min(k, expected)
            rescored += answer.ranking == RANKING_EXACT and parsed.ranking == RANKING_EXACT
    assert rescored > len(testing.QUERIES)  # most answers took the boosted, rescored path
