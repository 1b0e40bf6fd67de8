"""Documents as a node indexes them: the JSON-text path and the per-field path index the same thing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tantivy
from hypothesis import given, settings
from hypothesis import strategies as st

from engines.search import corpus
from engines.search import operations as ops
from engines.search.document_builder import (
    DocumentBuilder,
    LengthCounter,
    Version,
    counted_fields,
    default_token_count,
    length_fields,
)
from engines.search.query_compile import default_text_analyzer
from engines.search.schema import parse_schema
from engines.search.shard import Shard
from engines.search.testing import QUERIES
from legion.keyspace import partition_of
from legion.replication import Operation

INC = "0000000000000abc"
PARTITIONS = 8
SCHEMA = parse_schema(corpus.SCHEMA)


def _op(doc: dict, hlc: int = 1, lengths: bool = True, schema=SCHEMA) -> Operation:
    source = ops.encode_source(doc)
    counted = LengthCounter(schema)(doc) if lengths else None
    body = ops.index_body("docs", INC, source, counted)
    return Operation(ops.ENGINE_NAME, partition_of(doc["id"], PARTITIONS), doc["id"].encode(), hlc, "n1", ops.KIND_INDEX, body)


def _version(op: Operation, source: bytes | None = None, position: int = 0) -> Version:
    return Version(op.hlc, op.origin, position, op.partition, ops.decode(op).source if source is None else source)


def _shard_of(tmp_path: Path, name: str, items: list[Operation], schema=SCHEMA) -> Shard:
    shard = Shard(tmp_path / name, "docs", INC, schema)
    shard.apply([(op, ops.decode(op)) for op in items])
    shard.commit()
    return shard


def _stored(shard: Shard) -> dict[str, dict]:
    searcher = shard.searcher()
    hits = searcher.search(tantivy.Query.all_query(), limit=searcher.num_docs or 1).hits
    out = {}
    for _score, address in hits:
        doc = searcher.doc(address).to_dict()
        out[doc["id"][0]] = {name: sorted(values, key=repr) for name, values in doc.items()}
    return out


def test_both_paths_store_score_and_count_lengths_alike(tmp_path):
    docs = [doc.fields() for doc in corpus.documents(limit=400)]
    fast = _shard_of(tmp_path, "fast", [_op(doc) for doc in docs])
    slow = _shard_of(tmp_path, "slow", [_op(doc, lengths=False) for doc in docs])
    assert _stored(fast) == _stored(slow)
    sums = {f"f{i}": {"sum": {"field": name}} for i, name in enumerate(length_fields(SCHEMA).values())}
    everything = tantivy.Query.all_query()
    assert fast.searcher().aggregate(everything, sums) == slow.searcher().aggregate(everything, sums)
    for query in QUERIES[:20]:
        hits = []
        for shard in (fast, slow):
            parsed = shard.index.parse_query(query, ["title", "body"])
            found = shard.searcher().search(parsed, limit=10).hits
            hits.append([(score, shard.searcher().doc(address).get_first("id")) for score, address in found])
        assert hits[0] == hits[1], query
    fast.close()
    slow.close()


def test_the_length_counter_counts_tokens_per_value_and_one_per_untokenized_value():
    schema = parse_schema(
        {"fields": {"id": {"type": "keyword"}, "title": {"type": "text"}, "body": {"type": "text"}, "tag": {"type": "keyword"}, "n": {"type": "i64"}}}
    )
    counter = LengthCounter(schema)
    names = list(length_fields(schema))
    counted = dict(zip(names, counter({"id": "a", "title": "json.decoder JSONDecoder", "body": ["one two", "three"], "tag": ["x", "y"]})))
    assert counted == {"title": 3, "body": 3, "tag": 2, "n": 0}


def test_only_fields_whose_tokens_nothing_else_totals_get_a_length_field():
    schema = parse_schema(
        {
            "fields": {
                "id": {"type": "keyword"},  # one token in every document: the document count
                "title": {"type": "text"},  # tokenized: only a length field knows
                "raw": {"type": "text", "tokenizer": "raw", "fast": True},  # one token per value, in a fast column
                "tag": {"type": "keyword", "fast": True},
                "section": {"type": "keyword"},  # one per value, but no column to count them in
                "n": {"type": "i64", "fast": True},
                "attrs": {"type": "json"},  # never scored with global lengths
                "hidden": {"type": "keyword", "indexed": False, "fast": True},  # never scored
            }
        }
    )
    assert set(length_fields(schema)) == {"title", "section"}
    assert counted_fields(schema) == {"raw", "tag", "n"}
    assert set(length_fields(SCHEMA)) == {"title", "body"}


@pytest.mark.parametrize(
    "source",
    [
        b'{"id":"neg-zero","size":-0,"title":"kept"}',  # tantivy's JSON reader takes -0 for a float
        b'{"id":"surrogate","title":"\\ud800 broken","body":"kept"}',  # not valid JSON text for tantivy
    ],
)
def test_a_document_tantivy_s_json_reader_refuses_takes_the_per_field_path(tmp_path, source):
    doc_id = json.loads(source)["id"]
    body = ops.index_body("docs", INC, source, [1, 1])
    op = Operation(ops.ENGINE_NAME, partition_of(doc_id, PARTITIONS), doc_id.encode(), 1, "n1", ops.KIND_INDEX, body)
    shard = _shard_of(tmp_path, "s", [op])
    stored = _stored(shard)[doc_id]
    assert stored["_source"] == [source]
    # The rest of the document is indexed: its good text field finds it.
    found = shard.searcher().search(shard.index.parse_query("kept", ["title", "body"]), limit=1).hits
    assert [shard.searcher().doc(address).get_first("id") for _score, address in found] == [doc_id]
    shard.close()


def test_schemas_with_dates_or_json_fields_always_take_the_per_field_path(tmp_path):
    schema = parse_schema({"fields": {"id": {"type": "keyword"}, "t": {"type": "text"}, "d": {"type": "date"}}})
    builder = DocumentBuilder("docs", schema, tantivy.SchemaBuilder().build())
    op = _op({"id": "a", "t": "x", "d": "2024-05-01"}, schema=schema)
    assert builder.json_text("a", _version(op), ops.decode(op).lengths) is None
    shard = _shard_of(tmp_path, "dates", [op], schema=schema)
    assert shard.index.searcher().search(shard.index.parse_query("d:[2024-04-30T00:00:00Z TO 2024-05-02T00:00:00Z]"), 1).count == 1
    shard.close()


def test_json_text_appends_the_engine_fields_to_the_source():
    builder = DocumentBuilder("docs", SCHEMA, tantivy.SchemaBuilder().build())
    op = _op({"id": 'quote"d', "title": "t"})
    text = builder.json_text('quote"d', _version(op), ops.decode(op).lengths)
    parsed = json.loads(text)
    # The id is the source's own id field (indexed raw and stored), not a copy of it.
    assert parsed["id"] == 'quote"d' and "_id" not in parsed
    assert parsed["_partition"] == op.partition and parsed["_deleted"] == 0
    assert parsed["_hlc"] == 1 and parsed["_origin"] == "n1" and parsed["title"] == "t"
    assert parsed["_len_title"] == 1 and parsed["_len_body"] == 0
    assert "_pos" not in parsed  # a document written alone is at position 0, which is not stored
    assert json.loads(builder.json_text('quote"d', _version(op, position=7), ops.decode(op).lengths))["_pos"] == 7
    assert builder.json_text("x", _version(op, b"[1, 2]"), [0] * 2) is None  # not an object: per-field path
    assert builder.json_text("x", _version(op), [1]) is None  # wrong number of lengths
    assert builder.json_text("x", _version(op), ['1,"_deleted":1'] * 2) is None  # no count: no text


def test_counts_that_are_no_counts_make_the_replica_count_itself(tmp_path):
    doc = {"id": "a", "title": "two words", "body": "three more words"}
    good = _op(doc)
    shards = []
    for name, lengths in (("good", None), ("negative", [-2, 3]), ("text", ["1"] * 2)):
        body = ops.index_body("docs", INC, ops.encode_source(doc), lengths)
        op = good if lengths is None else Operation(good.engine, good.partition, good.key, good.hlc, good.origin, good.kind, body)
        shards.append(_shard_of(tmp_path, name, [op]))
    sums = {name: {"sum": {"field": name}} for name in length_fields(SCHEMA).values()}
    answers = [shard.searcher().aggregate(tantivy.Query.all_query(), sums) for shard in shards]
    assert answers[0]["_len_body"]["value"] == 3 and answers[0] == answers[1] == answers[2]
    for shard in shards:
        shard.close()


ascii_text = st.lists(
    st.one_of(st.text(alphabet=st.characters(max_codepoint=127), max_size=12), st.sampled_from(["a" * 39, "b" * 40, "9" * 41, "x_y"])),
    max_size=8,
).map("".join)


@settings(max_examples=500, deadline=None)
@given(ascii_text)
def test_ascii_text_is_counted_as_the_default_tokenizer_counts_it(text):
    assert default_token_count(text) == len(default_text_analyzer().analyze(text))
