"""Bulk ingest on the coordinator: a line's own text is the source when that is safe, and documents go out as
one batch per partition per chunk, each failure reported by line."""

from __future__ import annotations

import asyncio
import json

import pytest

from engines.search import bulk_ingest, corpus
from engines.search import operations as ops
from engines.search.bulk_ingest import BulkIngest, document_body
from engines.search.document_builder import LengthCounter
from engines.search.schema import check_document, parse_schema
from legion import ndjson
from legion.engine import WriteItem, WriteResult
from legion.errors import BadRequest, Unavailable
from legion.keyspace import partition_of
from legion.replication import Operation

SCHEMA = parse_schema(corpus.SCHEMA)
INC = "0000000000000abc"


def _decoded(body: bytes) -> ops.Decoded:
    return ops.decode(Operation(ops.ENGINE_NAME, 0, b"a", 1, "n1", ops.KIND_INDEX, body))


@pytest.mark.parametrize(
    ("line", "kept"),
    [
        (b'{"id": "a", "title": "caf\xc3\xa9 au lait"}  \r', True),  # trailing whitespace is stripped
        (b'{"id": "a", "title": null}', False),  # a null is dropped: the checked document differs
        (b'{"id": "a", "title": "\\u00e9"}', False),  # an escape could name a lone surrogate
        (b'{"id": "a", "title": "\xed\x95\x9c"}', False),  # 0xED also leads surrogates in UTF-8
    ],
)
def test_the_line_is_the_source_when_nothing_in_it_needs_checking(line, kept):
    value = json.loads(line)
    _doc_id, checked = check_document(SCHEMA, value)
    sent = line if checked is value else None
    body = _decoded(document_body("docs", INC, checked, LengthCounter(SCHEMA), sent))
    assert json.loads(body.source) == checked
    assert (body.source == line.strip()) is kept
    assert body.lengths == LengthCounter(SCHEMA)(checked)


@pytest.mark.parametrize("line", [b'{"id": "a", "title": "\\ud800"}', b'{"id": "a", "module": "\\udfff"}'])
def test_a_lone_surrogate_is_refused_in_any_field(line):
    value = json.loads(line)
    _doc_id, checked = check_document(SCHEMA, value)
    with pytest.raises(BadRequest, match="Unicode"):
        document_body("docs", INC, checked, LengthCounter(SCHEMA), line)


# --- the coordinator's side of bulk ingest: one batch per partition per chunk ---------------------------


class _Cluster:
    """Acknowledges every batch but those of ``failing`` partitions; records what it was given."""

    partitions = 8

    def __init__(self, failing: frozenset[int] = frozenset()) -> None:
        self.failing = failing
        self.calls: list[list[WriteItem]] = []

    async def write_many(self, engine, items, *, w=None, refresh=False):
        self.calls.append(list(items))
        out = []
        for item in items:
            partition = partition_of(item.key, self.partitions)
            ok = WriteResult(partition=partition, hlc=1, acks=1, replicas=1)
            out.append(Unavailable(f"partition {partition} is down") if partition in self.failing else ok)
        return out


def _ingest(cluster: _Cluster, lines: list[bytes]) -> BulkIngest:
    async def run() -> BulkIngest:
        ingest = BulkIngest(cluster, "docs", INC, SCHEMA, None)
        for number, raw in enumerate(lines, start=1):
            await ingest.add(ndjson.parse_line(number, raw))
        await ingest.finish()
        return ingest

    return asyncio.run(run())


def _line(doc_id: str, title: str = "t") -> bytes:
    return json.dumps({"id": doc_id, "title": title}).encode()


def test_each_chunk_is_one_batch_per_partition_with_its_documents_in_line_order(monkeypatch):
    monkeypatch.setattr(bulk_ingest, "BULK_CHUNK_DOCS", 30)
    lines = [_line(f"d{n}", f"v{n}") for n in range(50)] + [_line("d3", "again")]
    cluster = _Cluster()
    ingest = _ingest(cluster, lines)
    assert (ingest.indexed, ingest.errors) == (51, [])
    assert len(cluster.calls) == 2  # 30 documents, then 21
    seen = []
    for call in cluster.calls:
        partitions = [partition_of(item.key, 8) for item in call]
        assert len(set(partitions)) == len(partitions)  # one batch per partition per chunk
        for item, partition in zip(call, partitions):
            op = Operation(ops.ENGINE_NAME, partition, item.key, 1, "n1", item.kind, item.body)
            decoded = ops.decode(op)
            ops.check_batch_partition(op, decoded)
            assert decoded.lengths_stride == len(LengthCounter(SCHEMA)({}))
            seen += [(i, json.loads(s)["title"]) for i, s in zip(decoded.ids, decoded.sources)]
    assert sorted(seen) == sorted([(f"d{n}", f"v{n}") for n in range(50)] + [("d3", "again")])
    # Within a partition's batch, documents keep their line order: the later "d3" comes later.
    assert [t for i, t in seen if i == "d3"] == ["v3", "again"]


def test_a_failed_batch_fails_each_of_its_documents_by_line_and_bad_lines_fail_alone():
    lines = [_line(f"d{n}") for n in range(40)] + [b'{"id": 5}', b"not json"]
    failing = partition_of("d0", 8)
    ingest = _ingest(_Cluster(frozenset({failing})), lines)
    expected_lost = [n + 1 for n in range(40) if partition_of(f"d{n}", 8) == failing]
    errors = sorted(ingest.errors, key=lambda e: e["line"])
    assert [e["line"] for e in errors if e["error"] == "unavailable"] == expected_lost
    assert [e["id"] for e in errors if e["error"] == "unavailable"] == [f"d{n - 1}" for n in expected_lost]
    assert [e["line"] for e in errors if e["error"] == "bad_request"] == [41, 42]
    assert ingest.indexed == 40 - len(expected_lost)


def test_a_partition_s_batch_is_cut_at_its_byte_bound(monkeypatch):
    monkeypatch.setattr(bulk_ingest, "BATCH_BYTES_MAX", 200)
    ids = [i for i in (f"d{n}" for n in range(200)) if partition_of(i, 8) == 0][:6]
    cluster = _Cluster()
    ingest = _ingest(cluster, [_line(i, "x" * 60) for i in ids])
    assert ingest.indexed == 6
    [call] = cluster.calls
    assert len(call) == 3 and all(partition_of(item.key, 8) == 0 for item in call)  # two documents per batch
