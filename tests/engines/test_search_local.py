"""One node's share of a search, in process: any query string is answered or refused with a BadRequest.

A node parses whatever text a client sends with tantivy's parser, then runs
it; neither step may fail any other way (a Rust panic surfaces in Python as
a ``BaseException``, which would take the request down with a 500).
"""

from __future__ import annotations

import base64
import json

import pytest
import tantivy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engines.search import local_search
from engines.search import shard as shard_module
from engines.search import operations as ops
from engines.search.ranking import CollectionStats, merge_stats
from engines.search.schema import parse_schema
from engines.search.shard import Shard
from legion.errors import BadRequest
from legion.keyspace import partition_of
from legion.replication import Operation

PARTITIONS = 8
SCHEMA = parse_schema(
    {
        "id_field": "id",
        "default_fields": ["title", "body"],
        "fields": {
            "id": {"type": "keyword"},
            "title": {"type": "text"},
            "body": {"type": "text", "tokenizer": "en_stem"},
            "tag": {"type": "keyword", "fast": True},
            "n": {"type": "i64", "fast": True},
            "u": {"type": "u64", "fast": True},
            "f": {"type": "f64", "fast": True},
            "ok": {"type": "bool", "fast": True},
            "when": {"type": "date", "fast": True},
            "meta": {"type": "json"},
        },
    }
)
DOCS = [
    {"id": f"d{i}", "title": f"title {i} alpha", "body": "running dogs and cats " * (i % 4 + 1), "tag": f"t{i % 3}",
     "n": i - 5, "u": i, "f": i / 3, "ok": i % 2 == 0, "when": f"2024-01-{i + 1:02d}T00:00:00Z", "meta": {"k": i, "s": "x y"}}
    for i in range(20)
]  # fmt: skip
QUERY_ALPHABET = 'abdgiklnorstuwxy:"()[]{}^~*+-!<>=/\\ .,0123459TOANDORNOTIN'
FIELD_WORDS = ["title:", "body:", "tag:", "n:", "u:", "f:", "ok:", "when:", "meta.k:", "meta:", "nope:", "_id:", "_partition:"]


def _filled(directory, docs: list[dict], schema=SCHEMA, incarnation: str = "0000000000000abc") -> Shard:
    """A shard holding ``docs``, committed."""
    shard = Shard(directory, "docs", incarnation, schema)
    items = []
    for i, doc in enumerate(docs):
        op = Operation(ops.ENGINE_NAME, partition_of(doc["id"], PARTITIONS), doc["id"].encode(), i + 1, "n1", ops.KIND_INDEX,
                       ops.index_body("docs", incarnation, ops.encode_source(doc)))  # fmt: skip
        items.append((op, ops.decode(op)))
    shard.apply(items)
    shard.commit()
    return shard


@pytest.fixture(scope="module")
def shard(tmp_path_factory) -> Shard:
    shard = _filled(tmp_path_factory.mktemp("shard"), DOCS)
    yield shard
    shard.close()


def run(shard: Shard, text: str, aggs: dict | None = None) -> dict:
    partitions = list(range(PARTITIONS))
    stats = CollectionStats.from_wire(local_search.answer(shard, partitions, {"op": "stats", "q": text}))
    return local_search.answer(
        shard, partitions, {"op": "search", "q": text, "stats": merge_stats([stats]).to_wire(), "k": 5, "aggs": aggs or {}}
    )


queries = st.lists(st.one_of(st.text(alphabet=QUERY_ALPHABET, max_size=12), st.sampled_from(FIELD_WORDS)), max_size=6).map("".join)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=queries)
def test_any_query_text_is_answered_or_refused_with_a_bad_request(shard, text):
    try:
        answer = run(shard, text)
    except BadRequest as refused:
        assert refused.message
        return
    assert answer["total"] >= len(answer["hits"])
    json.dumps(answer)  # the answer crosses the network


@pytest.mark.parametrize(
    ("text", "total"),
    [("alpha", 20), ("dogs", 20), ('"running dogs"', 20), ("tag:t1", 7), ("n:[0 TO 4]", 5), ("ok:true", 10),
     ("when:[2024-01-01T00:00:00Z TO 2024-01-05T00:00:00Z}", 4), ("meta.k:3", 1), ("title:alpha -tag:t0", 13), ("*", 20)],
)  # fmt: skip
def test_typed_queries_match_what_they_say(shard, text, total):
    assert run(shard, text)["total"] == total


@pytest.mark.parametrize(
    ("text", "fragment"),
    [('title:"open', "syntax"), ("colour:red", "colour"), ("n:many", "'n' is i64"), ("u:-1", "'u' is u64"), ("ok:maybe", "ok")],
)
def test_bad_queries_say_what_is_wrong(shard, text, fragment):
    with pytest.raises(BadRequest) as refused:
        run(shard, text)
    assert fragment in refused.value.message


def test_aggregations_count_the_matching_documents(shard):
    aggs = {"tags": {"terms": {"field": "tag", "size": 10}}, "ns": {"stats": {"field": "n"}}}
    answer = run(shard, "alpha", aggs)
    buckets = {b["key"]: b["doc_count"] for b in answer["aggs"]["tags"]["buckets"]}
    assert buckets == {"t0": 7, "t1": 7, "t2": 6}
    assert answer["aggs"]["ns"]["count"] == 20 and answer["aggs"]["ns"]["min"] == -5


def test_hits_carry_stored_fields_and_highlighted_snippets(shard):
    answer = run(shard, "dogs")
    score, doc_id, doc, snippets = answer["hits"][0]
    assert doc["id"] == doc_id and "body" in doc
    assert "<b>" in snippets["body"]


def test_snippets_are_cut_from_the_source_value_by_value(tmp_path):
    schema = parse_schema({"fields": {"id": {"type": "keyword"}, "body": {"type": "text"}, "note": {"type": "text", "stored": False}}})
    doc = {"id": "a", "body": ["first value", "a second value with dogs"], "note": "dogs here too"}
    shard = _filled(tmp_path / "s", [doc], schema, incarnation="0000000000000abd")  # another schema: another incarnation
    [[_score, doc_id, stored, snippets]] = run(shard, "dogs")["hits"]
    assert doc_id == "a" and stored == {"id": "a", "body": doc["body"]}  # note is not stored: not returned
    # Cut from the values one after the other, as tantivy joins a stored field's values; not from note.
    assert snippets == {"body": "first value a second value with <b>dogs</b>"}
    shard.close()


def _legacy_index(directory, docs: list[dict], tombstones: dict[str, int]) -> None:
    """An index in the layout of earlier versions: an ``_id`` field of the engine's own besides the
    schema's id field, a ``_len_`` field for every scored field, every user field stored too."""
    builder = tantivy.SchemaBuilder()
    for spec in LEGACY_SCHEMA.fields:
        shard_module._add_field(builder, spec, stored=True)
    builder.add_text_field("_id", stored=True, tokenizer_name="raw")
    builder.add_unsigned_field("_partition", stored=True, indexed=True, fast=True)
    builder.add_unsigned_field("_deleted", indexed=True, fast=True)
    builder.add_unsigned_field("_hlc", stored=True)
    builder.add_text_field("_origin", stored=True, tokenizer_name="raw", index_option="basic")
    builder.add_unsigned_field("_pos", stored=True)
    builder.add_bytes_field("_source", stored=True, indexed=False)
    for name in ("id", "title", "body", "tag"):
        builder.add_unsigned_field(f"_len_{name}", fast=True)
    directory.mkdir()
    index = tantivy.Index(builder.build(), path=str(directory))
    writer = index.writer(15_000_000, 1)
    for i, doc in enumerate(docs):
        engine = {"_id": doc["id"], "_partition": partition_of(doc["id"], PARTITIONS), "_deleted": 0, "_hlc": i + 1,
                  "_origin": "n1", "_source": base64.b64encode(ops.encode_source(doc)).decode(), "_len_id": 1,
                  "_len_title": 3, "_len_body": 0, "_len_tag": 1}  # fmt: skip
        writer.add_json(json.dumps({**doc, **engine}))
    for doc_id, hlc in tombstones.items():
        tombstone = {"_id": doc_id, "_partition": partition_of(doc_id, PARTITIONS), "_deleted": 1, "_hlc": hlc, "_origin": "n1"}
        writer.add_json(json.dumps(tombstone))
    writer.commit()
    writer.wait_merging_threads()


LEGACY_SCHEMA = parse_schema(
    {
        "id_field": "id",
        "default_fields": ["title", "body"],
        "fields": {"id": {"type": "keyword"}, "title": {"type": "text"}, "body": {"type": "text"}, "tag": {"type": "keyword", "fast": True}},
    }
)


@pytest.mark.parametrize("stopped", [None, "before the swap", "amid the swap", "after the swap"])
def test_an_index_of_an_earlier_layout_is_rebuilt_in_this_one_with_its_documents_and_tombstones(tmp_path, stopped):
    docs = [{"id": f"d{i}", "title": f"title {i} alpha", "tag": f"t{i % 3}"} for i in range(20)]
    live, deleted = [d for d in docs if d["id"] != "d3"], {"d3": 100}
    directory = tmp_path / "s"
    _legacy_index(directory, live, deleted)
    with pytest.raises(ValueError, match="schema does not match"):  # it is not the index this version creates
        tantivy.Index(shard_module.tantivy_schema(LEGACY_SCHEMA), path=str(directory))
    if stopped is not None:  # a node that stopped in the middle of an earlier rebuild
        rebuilding, legacy = directory.with_name("s.rebuilding"), directory.with_name("s.legacy")
        if stopped == "before the swap":
            rebuilding.mkdir()
            (rebuilding / "meta.json").write_text("half written")
        elif stopped == "amid the swap":
            directory.rename(legacy)
            rebuilding.mkdir()
        else:
            directory.rename(legacy)
            _legacy_index(directory, live, deleted)  # stands for the rebuilt one, which the next open rebuilds again

    reopened = Shard(directory, "docs", "0000000000000abc", LEGACY_SCHEMA)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]
    answer = run(reopened, "alpha")
    assert answer["total"] == len(live) == 19
    assert answer["hits"][0][2] in live  # its source, as it was
    assert run(reopened, "tag:t0")["total"] == sum(d["tag"] == "t0" for d in live)
    # The tombstone is kept: an older write of its id still loses to it, a newer one wins.
    tombstone = reopened.get("d3")
    assert tombstone is not None and tombstone.source is None and tombstone.hlc == 100
    older, newer = (Operation(ops.ENGINE_NAME, partition_of("d3", PARTITIONS), b"d3", hlc, "n1", ops.KIND_INDEX,
                              ops.index_body("docs", "0000000000000abc", ops.encode_source({"id": "d3", "title": "alpha"})))
                    for hlc in (50, 150))  # fmt: skip
    reopened.apply([(older, ops.decode(older))])
    reopened.commit()
    assert run(reopened, "alpha")["total"] == 19
    reopened.apply([(newer, ops.decode(newer))])
    reopened.commit()
    assert run(reopened, "alpha")["total"] == 20 and reopened.get("d3").hlc == 150
    reopened.close()




def test_a_less_exact_ranking_asked_for_changes_the_rounds_and_says_so(shard):
    some = list(range(PARTITIONS // 2))  # this node answers for half of the plan
    request = {"op": "search", "q": "dogs", "stats": None, "plan": PARTITIONS, "k": 5, "aggs": {}}
    # exact (the default) and global_idf count the plan's statistics first; global_idf no field lengths.
    exact_first = local_search.answer(shard, some, request)
    global_first = local_search.answer(shard, some, {**request, "ranking": "global_idf"})
    assert set(exact_first) == set(global_first) == {"stats", "stamp"}
    assert CollectionStats.from_wire(exact_first["stats"]).field_tokens
    assert not CollectionStats.from_wire(global_first["stats"]).field_tokens
    second = local_search.answer(shard, some, {**request, "ranking": "global_idf", "stats": global_first["stats"]})
    assert second["ranking"] == "global_idf" and second["hits"]
    # local: no statistics at all, the hits in the first round, scored with this node's own.
    local = local_search.answer(shard, some, {**request, "ranking": "local"})
    assert local["ranking"] == "local" and local["total"] == second["total"]
    assert {hit[1] for hit in local["hits"]} <= {d["id"] for d in DOCS if partition_of(d["id"], PARTITIONS) in some}
    # Given the whole plan, its own statistics are the plan's: that is exact.
    assert local_search.answer(shard, list(range(PARTITIONS)), {**request, "ranking": "local"})["ranking"] == "exact"
    with pytest.raises(BadRequest, match="ranking must be one of"):
        local_search.answer(shard, some, {**request, "ranking": "approximate"})


def test_a_floor_leaves_out_only_the_hits_below_it_and_stops_the_rescoring_there(shard, monkeypatch):
    from engines.search import node_hits

    explained = []
    score_of = node_hits.explained_score
    monkeypatch.setattr(node_hits, "explained_score", lambda *args: explained.append(1) or score_of(*args))
    some = list(range(PARTITIONS // 2))  # not every partition: the scores are rescored exactly
    request = {"op": "search", "q": "dogs OR alpha", "k": 10, "aggs": {}, "stats": None, "plan": PARTITIONS}
    request["stats"] = local_search.answer(shard, some, request)["stats"]
    full = local_search.answer(shard, some, request)
    assert full["ranking"] == "exact" and len(full["hits"]) >= 6
    explained_in_full = len(explained)
    explained.clear()
    floor = full["hits"][4][0]  # the page's lowest score, as a coordinator would have learnt it
    floored = local_search.answer(shard, some, {**request, "floor": floor})
    assert floored["hits"] == [hit for hit in full["hits"] if hit[0] >= floor]
    assert floored["total"] == full["total"]
    assert len(explained) < explained_in_full
    for bad in ("high", float("nan"), True):
        with pytest.raises(BadRequest, match="floor"):
            local_search.answer(shard, some, {**request, "floor": bad})
