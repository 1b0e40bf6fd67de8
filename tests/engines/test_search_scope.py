"""A searcher's view: the cheapest filter that means "the plan's live documents", the one-round search, native scores."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import tantivy

from engines.search import corpus, local_search, ranking
from engines.search import operations as ops
from engines.search.document_builder import LengthCounter
from engines.search.node_hits import node_search
from engines.search.query_compile import RANKING_EXACT, local_stats, parse_query
from engines.search.schema import parse_schema
from engines.search.shard import Shard
from engines.search.testing import QUERIES
from legion.keyspace import partition_of
from legion.replication import Operation

SCHEMA = parse_schema(corpus.SCHEMA)
INC = "0000000000000abc"
PARTITIONS = 8
EVERY = list(range(PARTITIONS))
_dirs = itertools.count()


def _shard(tmp_path: Path, docs: list[dict], deleted: tuple[str, ...] = (), updated: tuple[str, ...] = ()) -> Shard:
    shard = Shard(tmp_path / f"s{next(_dirs)}", "docs", INC, SCHEMA)
    counter = LengthCounter(SCHEMA)

    def index(doc: dict, hlc: int) -> Operation:
        body = ops.index_body("docs", INC, ops.encode_source(doc), counter(doc))
        return Operation(ops.ENGINE_NAME, partition_of(doc["id"], PARTITIONS), doc["id"].encode(), hlc, "n1", ops.KIND_INDEX, body)

    first = [index(doc, 1) for doc in docs]
    shard.apply([(op, ops.decode(op)) for op in first])
    shard.commit()
    later = [index({**doc, "body": doc["body"] + " revised"}, 2) for doc in docs if doc["id"] in updated]
    for doc_id in deleted:
        later.append(Operation(ops.ENGINE_NAME, partition_of(doc_id, PARTITIONS), doc_id.encode(), 3, "n1", ops.KIND_DELETE, ops.delete_body("docs", INC)))
    if later:
        shard.apply([(op, ops.decode(op)) for op in later])
        shard.commit()
    return shard


def _docs(count: int = 300) -> list[dict]:
    return [doc.fields() for doc in corpus.documents(limit=count)]


def test_a_clean_shard_needs_no_filter_and_its_scores_are_native(tmp_path):
    docs = _docs()
    shard = _shard(tmp_path, docs)
    scope = shard.view().scope(EVERY)
    assert scope.filter is None and scope.native and scope.doc_count == len(docs)
    held = sorted({partition_of(doc["id"], PARTITIONS) for doc in docs})
    assert shard.view().held() == frozenset(held)
    part = shard.view().scope(held[:-1])  # the searcher holds a partition the plan lacks: the full filter
    assert part.filter is not None and not part.native
    assert part.doc_count == sum(1 for doc in docs if partition_of(doc["id"], PARTITIONS) in held[:-1])
    shard.close()


def test_tombstones_keep_a_deleted_filter_and_deleted_docs_end_native_scores(tmp_path):
    docs = _docs()
    with_tombstones = _shard(tmp_path, docs, deleted=(docs[0]["id"], docs[1]["id"]))
    scope = with_tombstones.view().scope(EVERY)
    assert scope.filter is not None and not scope.native and scope.doc_count == len(docs) - 2
    updated = _shard(tmp_path, docs, updated=(docs[5]["id"],))  # the old version is deleted, not yet merged away
    scope = updated.view().scope(EVERY)
    assert scope.filter is None and scope.doc_count == len(docs)
    assert not scope.native or updated.view().searcher.num_segments == 1  # a merge may already have dropped it
    with_tombstones.close()
    updated.close()


def test_a_node_given_the_whole_plan_answers_in_one_round_as_two_rounds_would(tmp_path):
    docs = _docs()
    shard = _shard(tmp_path, docs, deleted=(docs[3]["id"],), updated=(docs[7]["id"], docs[9]["id"]))
    for text in QUERIES[:25]:
        base = {"index": "docs", "incarnation": INC, "q": text, "op": "search", "k": 10, "fields": None, "snippets": True, "aggs": {}}
        one_round = local_search.answer(shard, EVERY, {**base, "stats": None, "plan": PARTITIONS})
        stats = local_search.answer(shard, EVERY, {**base, "op": "stats"})
        two_rounds = local_search.answer(shard, EVERY, {**base, "stats": ranking.merge_stats([ranking.CollectionStats.from_wire(stats)]).to_wire()})
        assert one_round == two_rounds, text
        partial = local_search.answer(shard, EVERY[:3], {**base, "stats": None, "plan": PARTITIONS})
        assert set(partial) == {"stats", "stamp"}
    shard.close()


def test_remembered_statistics_are_used_only_under_the_stamp_they_were_counted_under(tmp_path):
    docs = _docs()
    shard = _shard(tmp_path, docs[:200])
    half = EVERY[:4]
    base = {"index": "docs", "incarnation": INC, "q": "return the value", "op": "search", "k": 10, "fields": None, "snippets": False, "aggs": {}}
    counted = local_search.answer(shard, half, {**base, "stats": None, "plan": PARTITIONS})
    assert counted["stamp"] == shard.view().stamp(half) != shard.view().stamp(EVERY[4:])
    remembered = {**base, "stats": counted["stats"], "stamps": [counted["stamp"]]}
    plain = local_search.answer(shard, half, {**base, "stats": counted["stats"]})
    assert local_search.answer(shard, half, remembered) == plain  # the same searcher: scored, as round 2 would
    # Other partitions of the same searcher are other statistics: counted again.
    assert set(local_search.answer(shard, EVERY[4:], remembered)) == {"stats", "stamp"}
    # A commit since: a new searcher, whose statistics are counted again and stamped anew.
    counter = LengthCounter(SCHEMA)
    more = [
        Operation(ops.ENGINE_NAME, partition_of(doc["id"], PARTITIONS), doc["id"].encode(), 5, "n1", ops.KIND_INDEX,
                  ops.index_body("docs", INC, ops.encode_source(doc), counter(doc)))
        for doc in docs[200:]
    ]  # fmt: skip
    shard.apply([(op, ops.decode(op)) for op in more])
    shard.commit()
    recounted = local_search.answer(shard, half, remembered)
    assert set(recounted) == {"stats", "stamp"} and recounted["stamp"] != counted["stamp"]
    assert recounted == local_search.answer(shard, half, {**base, "stats": None, "plan": PARTITIONS})
    assert ranking.CollectionStats.from_wire(recounted["stats"]).doc_count > ranking.CollectionStats.from_wire(counted["stats"]).doc_count
    shard.close()


def test_native_scores_are_the_rescored_scores_of_a_clean_shard(tmp_path):
    shard = _shard(tmp_path, _docs())
    view = shard.view()
    scope = view.scope(EVERY)
    assert scope.native
    # Queries of at most two scoring clauses: with three or more, tantivy may add them up in another order.
    for text in ("buffer", "read write", '"file object"', "title:abc^2 body:return", "+stream -close", "kind:class read"):
        parsed = parse_query(shard.index, shard.fields, text, SCHEMA.default_fields)
        stats = local_stats(view.searcher, shard.fields, parsed.stats_request, EVERY, view)
        native = node_search(parsed, shard.fields, view.searcher, stats, EVERY, 10, scope)
        rescored = node_search(parsed, shard.fields, view.searcher, stats, EVERY, 10)  # boosts and rescoring
        assert native.ranking == rescored.ranking == RANKING_EXACT
        assert [(hit.id, hit.score) for hit in native.hits] == [(hit.id, hit.score) for hit in rescored.hits], text
    shard.close()


def test_ids_read_once_are_remembered_per_view(tmp_path):
    shard = _shard(tmp_path, _docs(50))
    view = shard.view()
    hits = view.searcher.search(tantivy.Query.all_query(), limit=50).hits
    ids = [view.doc_id(address) for _score, address in hits]
    assert ids == [json.loads(view.searcher.doc(address).get_first("_source"))["id"] for _score, address in hits]
    assert [view.doc_id(address) for _score, address in hits] == ids
    shard.close()
