"""One node's share of a search, in process: any query string is answered or refused with a BadRequest.

A node parses whatever text a client sends with tantivy's parser, then runs
it; neither step may fail any other way (a Rust panic surfaces in Python as
a ``BaseException``, which would take the request down with a 500).
"""

from __future__ import annotations

import json

import pytest
import tantivy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engines.search import local_search
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


def test_an_index_whose_user_fields_tantivy_stores_too_opens_and_answers(tmp_path, monkeypatch):
    # Earlier versions stored every user field in tantivy besides _source; their indexes still open.
    from engines.search import shard as shard_module

    def stored_add_field(builder, spec):
        if spec.type in ("text", "keyword"):
            tokenizer = spec.tokenizer if spec.type == "text" else "raw"
            builder.add_text_field(spec.name, stored=True, fast=spec.fast, tokenizer_name=tokenizer)
        else:
            add = {"i64": builder.add_integer_field, "u64": builder.add_unsigned_field, "f64": builder.add_float_field,
                   "bool": builder.add_boolean_field, "date": builder.add_date_field}.get(spec.type)  # fmt: skip
            if add is not None:
                add(spec.name, stored=True, indexed=spec.indexed, fast=spec.fast)
            else:
                builder.add_json_field(spec.name, stored=True, tokenizer_name=spec.tokenizer)

    with monkeypatch.context() as patched:
        patched.setattr(shard_module, "_add_field", stored_add_field)
        _filled(tmp_path / "s", DOCS).close()
    with pytest.raises(ValueError, match="schema does not match"):  # it is not the index this version creates
        tantivy.Index(shard_module.tantivy_schema(SCHEMA), path=str(tmp_path / "s"))
    reopened = Shard(tmp_path / "s", "docs", "0000000000000abc", SCHEMA)
    answer = run(reopened, "dogs")
    assert answer["total"] == len(DOCS)
    score, doc_id, doc, snippets = answer["hits"][0]
    assert doc == next(d for d in DOCS if d["id"] == doc_id) and "<b>" in snippets["body"]
    reopened.close()
