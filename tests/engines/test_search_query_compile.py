"""Tests of engines.search.query_compile: parsing user queries, round-1 counts, round-2 queries.

Two indexes: the empty ``typed_index`` (every field type) for parsing and
rebuilding, and a small index of corpus docs holding tombstones, deleted
docs and several partitions, whose counts are checked against a plain
Python model of its live docs and whose statistics are checked against
what tantivy's own ``explain`` prints.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import tantivy
from hypothesis import given, reject, settings

from engines.search import corpus, query_compile, ranking, testing
from engines.search.corpus import CorpusDoc
from engines.search.query_compile import RANKING_EXACT, RANKING_GLOBAL_IDF, RANKING_LOCAL, IndexFields
from engines.search.ranking import CollectionStats, StatsRequest
from legion.errors import BadRequest
from legion.keyspace import partition_of
from tests.engines.search_queries import DEFAULT_FIELDS, FIELD_NAMES, queries, typed_index

TYPED = typed_index()
TYPED_FIELDS = IndexFields(TYPED.schema, FIELD_NAMES)
PARTITIONS = 8
TEXT = list(testing.TEXT_FIELDS)


# --- parsing ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("title:(a", "bad query syntax"),
        ("nofield:x", "unknown field"),
        ("lines:abc", "wrong value type"),
        ("lines:99999999999999999999", "wrong value type"),
        ("size:-1", "wrong value type"),
        ("flag:maybe", "wrong value type"),
        ("when:yesterday", "wrong value type"),
        ("-title:a", "the query only excludes"),
    ],
)
def test_bad_queries_are_bad_requests_that_name_the_problem(text: str, kind: str) -> None:
    with pytest.raises(BadRequest, match=kind) as raised:
        query_compile.parse_query(TYPED, TYPED_FIELDS, text, DEFAULT_FIELDS)
    assert raised.value.details["kind"].startswith(kind)


def test_bad_default_fields_and_oversized_queries_are_bad_requests() -> None:
    with pytest.raises(BadRequest, match="unknown field"):
        query_compile.parse_query(TYPED, TYPED_FIELDS, "x", ["nofield"])
    with pytest.raises(BadRequest, match="no field to search"):
        query_compile.parse_query(TYPED, TYPED_FIELDS, "x", [])
    with pytest.raises(BadRequest, match="characters long"):
        query_compile.parse_query(TYPED, TYPED_FIELDS, "a " * query_compile.QUERY_CHARS_MAX, DEFAULT_FIELDS)


@settings(deadline=None)  # tantivy parses or builds a query per example: slow under load
@given(queries())
def test_every_generated_query_is_rebuilt_exactly_as_parsed(text: str) -> None:
    try:
        parsed = query_compile.parse_query(TYPED, TYPED_FIELDS, text, DEFAULT_FIELDS)
    except BadRequest:
        reject()
    # no length fields in TYPED_FIELDS: a query with BM25 leaves ranks with global idf, one without exactly
    assert parsed.ranking in (RANKING_EXACT, RANKING_GLOBAL_IDF), parsed.reason
    assert (parsed.ranking == RANKING_EXACT) == (not parsed.stats_request.fields and not parsed.stats_request.term_keys)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("attrs:foo", "JSON field's root"),
        ("attrs.a:[1 TO 5]", "JSON path"),
        ("attrs.a\\.b:x", "JSON key holding a dot"),
    ],
)
def test_what_cannot_be_rebuilt_runs_as_parsed_with_local_statistics(text: str, reason: str) -> None:
    parsed = query_compile.parse_query(TYPED, TYPED_FIELDS, text, DEFAULT_FIELDS)
    assert parsed.ranking == RANKING_LOCAL
    assert reason in (parsed.reason or "")
    assert parsed.stats_request == StatsRequest()


def test_term_keys_name_the_field_or_json_path_the_type_and_the_value() -> None:
    text = 'title:hello "run dog" lines:5 size:7 ratio:1.5 flag:true when:"2020-01-02T03:04:05Z" attrs.a:x -title:no'
    parsed = query_compile.parse_query(TYPED, TYPED_FIELDS, text, DEFAULT_FIELDS)
    assert parsed.stats_request.term_keys == (
        ("title", "Str", "hello"),
        ("title", "Str", "run"),
        ("title", "Str", "dog"),
        ("body", "Str", "run"),
        ("body", "Str", "dog"),
        ("lines", "I64", 5),
        ("size", "U64", 7),
        ("ratio", "F64", 1.5),
        ("flag", "Bool", True),
        ("when", "Date", "2020-01-02T03:04:05Z"),
        ("attrs.a", "Str", "x"),
    )  # the excluded title:no scores nothing and is not counted
    assert StatsRequest.from_wire(parsed.stats_request.to_wire()) == parsed.stats_request


def test_with_ranking_only_ever_lowers_the_ranking() -> None:
    parsed = query_compile.parse_query(TYPED, TYPED_FIELDS, "title:a", DEFAULT_FIELDS)
    assert parsed.ranking == RANKING_GLOBAL_IDF
    assert query_compile.with_ranking(parsed, RANKING_EXACT) is parsed
    local = query_compile.with_ranking(parsed, RANKING_LOCAL)
    assert (local.ranking, local.stats_request) == (RANKING_LOCAL, StatsRequest())
    with pytest.raises(BadRequest, match="ranking must be one of"):
        query_compile.with_ranking(parsed, "best")


# --- a small index with everything a node holds ---------------------------------------------------


class Node:
    """One node's index of corpus docs, and a model of what it holds."""

    def __init__(self, docs: list[CorpusDoc]) -> None:
        self.fields: IndexFields = testing.corpus_fields()
        self.index = tantivy.Index(self.fields.schema)
        analyzer = query_compile.default_text_analyzer()
        writer = self.index.writer(testing.WRITER_HEAP_BYTES, 1)
        self.live: dict[str, CorpusDoc] = {}
        for doc in docs:
            writer.add_document(testing.corpus_document(self.fields, doc, PARTITIONS, analyzer))
            self.live[doc.id] = doc
        writer.commit()
        for doc in docs[::7]:  # updated: the old version stays behind as a deleted doc
            new = CorpusDoc(doc.id, doc.title, doc.body + " buffer", doc.module, doc.kind, doc.lines, doc.size)
            writer.delete_documents_by_term("_id", doc.id)
            writer.add_document(testing.corpus_document(self.fields, new, PARTITIONS, analyzer))
            self.live[doc.id] = new
        for doc in docs[3::11]:  # deleted: a tombstone replaces it
            writer.delete_documents_by_term("_id", doc.id)
            writer.add_document(testing.corpus_document(self.fields, doc, PARTITIONS, analyzer, tombstone=True))
            self.live.pop(doc.id, None)
        writer.commit()
        writer.wait_merging_threads()
        self.index.reload()
        self.total_docs = len(docs) + len(docs[::7]) + len(docs[3::11])

    def live_in(self, partitions: set[int]) -> list[CorpusDoc]:
        return [doc for doc in self.live.values() if partition_of(doc.id, PARTITIONS) in partitions]


@pytest.fixture(scope="module")
def node() -> Iterator[Node]:
    yield Node(list(corpus.documents(limit=600)))


def tokens(doc: CorpusDoc, field: str) -> list[str]:
    return query_compile.default_text_analyzer().analyze(getattr(doc, field))


def test_round_one_counts_only_live_docs_of_the_asked_partitions(node: Node) -> None:
    partitions = {0, 3, 5}
    parsed = query_compile.parse_query(node.index, node.fields, "buffer read kind:class", TEXT)
    stats = query_compile.local_stats(node.index.searcher(), node.fields, parsed.stats_request, partitions)
    live = node.live_in(partitions)
    assert stats.doc_count == len(live)
    assert stats.doc_freqs == {
        ("title", "Str", "buffer"): sum("buffer" in tokens(doc, "title") for doc in live),
        ("body", "Str", "buffer"): sum("buffer" in tokens(doc, "body") for doc in live),
        ("title", "Str", "read"): sum("read" in tokens(doc, "title") for doc in live),
        ("body", "Str", "read"): sum("read" in tokens(doc, "body") for doc in live),
        ("kind", "Str", "class"): sum(doc.kind == "class" for doc in live),
    }
    assert stats.field_tokens == {
        "title": sum(len(tokens(doc, "title")) for doc in live),
        "body": sum(len(tokens(doc, "body")) for doc in live),
        "kind": len(live),
    }


def test_round_one_over_no_partitions_counts_nothing(node: Node) -> None:
    request = StatsRequest((("title", "Str", "read"),), ("title",))
    stats = query_compile.local_stats(node.index.searcher(), node.fields, request, set())
    assert stats == CollectionStats(0, {("title", "Str", "read"): 0}, {"title": 0})


def test_a_term_that_does_not_fit_the_index_is_a_bad_request(node: Node) -> None:
    with pytest.raises(BadRequest, match="does not fit"):
        query_compile.local_stats(node.index.searcher(), node.fields, StatsRequest((("lines", "I64", "x"),)), {1})


def explain(query: tantivy.Query, searcher: tantivy.Searcher) -> dict:
    address = searcher.search(query, 1).hits[0][1]
    return json.loads(query.explain(searcher, address).to_json())


def detail(node: dict, prefix: str) -> dict:
    return next(d for d in node["details"] if d["description"].startswith(prefix))


def test_max_doc_counts_deleted_docs_and_tombstones_as_tantivys_idf_does(node: Node) -> None:
    searcher = node.index.searcher()
    explanation = explain(tantivy.Query.term_query(node.fields.schema, "kind", "class"), searcher)
    n_of_idf = detail(detail(explanation, "idf"), "N,")["value"]
    assert query_compile.max_doc(searcher, node.fields) == n_of_idf == node.total_docs
    assert searcher.num_docs < node.total_docs


@pytest.mark.parametrize("term", [("title", "abc"), ("body", "the"), ("body", "buffer"), ("kind", "method")])
def test_idf_is_what_tantivy_computes_from_doc_freq_and_max_doc(node: Node, term: tuple[str, str]) -> None:
    searcher = node.index.searcher()
    field, value = term
    explanation = explain(tantivy.Query.term_query(node.fields.schema, field, value), searcher)
    doc_count = query_compile.max_doc(searcher, node.fields)
    tantivys = ranking.as_f32(detail(explanation, "idf")["value"])
    assert ranking.idf(searcher.doc_freq(field, value), doc_count) == tantivys


@pytest.fixture(scope="module")
def clean() -> testing.ShardedCorpus:
    return testing.ShardedCorpus.build(corpus.documents(limit=300), shards=2)


@pytest.mark.parametrize(("field", "value"), [("title", "abc"), ("body", "the"), ("kind", "method"), ("lines", 3)])
def test_length_fields_hold_the_tokens_tantivy_counts(clean: testing.ShardedCorpus, field: str, value: object) -> None:
    sharded = clean
    searcher = sharded.reference.searcher()  # no deleted docs: tantivy's avgdl is over exactly these docs
    explanation = explain(tantivy.Query.term_query(sharded.fields.schema, field, value), searcher)
    total = searcher.aggregate(tantivy.Query.all_query(), {"t": {"sum": {"field": f"_len_{field}"}}})["t"]["value"]
    tantivys = ranking.as_f32(detail(detail(explanation, "freq / (freq"), "avgdl")["value"])
    assert ranking.average_field_length(int(total), searcher.num_docs) == tantivys


def test_field_length_counts_what_the_tokenizer_indexes() -> None:
    analyzer = query_compile.default_text_analyzer()
    assert query_compile.field_length(["Hello, World! x" + "y" * 45], analyzer) == 2  # a 46-char token is dropped
    assert query_compile.field_length(["a b", "c"], analyzer) == 3
    assert query_compile.field_length([5, 6], None) == 2
    assert query_compile.field_length([], analyzer) == 0


# --- round 2 ----------------------------------------------------------------------------------------


def own_stats(node: Node, parsed: query_compile.ParsedQuery) -> CollectionStats:
    """Statistics as tantivy itself sees this index (every doc, deleted ones too); field lengths made up."""
    searcher = node.index.searcher()
    doc_count = query_compile.max_doc(searcher, node.fields)
    freqs = {key: searcher.doc_freq(key[0], key[2]) for key in parsed.stats_request.term_keys}
    return CollectionStats(doc_count, freqs, {name: 10 * doc_count for name in parsed.stats_request.fields})


def test_with_the_nodes_own_statistics_the_ranked_query_is_the_parsed_one(node: Node) -> None:
    parsed = query_compile.parse_query(node.index, node.fields, 'buffer "return the" title:read^2 kind:class', TEXT)
    ranked = query_compile.ranked_query(parsed, node.fields, node.index.searcher(), own_stats(node, parsed))
    assert repr(ranked) == repr(parsed.original)  # every boost factor is exactly 1: no boost added


def test_global_statistics_boost_each_leaf_by_global_over_local_idf(node: Node) -> None:
    parsed = query_compile.parse_query(node.index, node.fields, "title:read", TEXT)
    searcher = node.index.searcher()
    stats = CollectionStats(10_000, {("title", "Str", "read"): 3})
    ranked = query_compile.ranked_query(parsed, node.fields, searcher, stats)
    local = ranking.idf(searcher.doc_freq("title", "read"), query_compile.max_doc(searcher, node.fields))
    factor = ranking.as_f32(ranking.idf(3, 10_000) / local)
    assert repr(ranked).startswith("Query(Boost(query=TermQuery(Term(field=3, type=Str, \"read\")), boost=")
    boost_text = repr(ranked).rsplit("boost=", 1)[1].rstrip("))")
    assert ranking.as_f32(float(boost_text)) == factor


def test_statistics_without_a_term_are_a_bad_request(node: Node) -> None:
    parsed = query_compile.parse_query(node.index, node.fields, "title:read", TEXT)
    with pytest.raises(BadRequest, match="lack term"):
        query_compile.ranked_query(parsed, node.fields, node.index.searcher(), CollectionStats(10, {}))


def test_the_rescoring_query_marks_every_scoring_leaf(node: Node) -> None:
    parsed = query_compile.parse_query(node.index, node.fields, 'read "file object" -kind:class', TEXT)
    marked, weights = query_compile.rescoring_query(parsed, node.fields, own_stats(node, parsed))
    assert len(weights) == 4  # read and the phrase, in title and body; the excluded kind:class is not a leaf
    boosts = [float(text.split(")")[0]) for text in repr(marked).split("boost=")[1:]]
    markers = [ranking.as_f32(ranking.marker_boost(index)) for index in range(4)]
    assert sorted(ranking.as_f32(boost) for boost in boosts) == sorted(markers)
