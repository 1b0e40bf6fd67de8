"""In-process sharded search over the docstring corpus, compared with one reference index.

For tests and benchmarks that ask "does a search over shards rank as one
index would?" without a cluster: the shards are plain in-memory tantivy
indexes, split the way nodes hold them (each doc in
``legion.keyspace.partition_of(id, partitions)``, partitions spread over
the shards), and a query runs its two rounds by calling
``query_compile``/``node_hits`` directly.

- ``corpus_fields`` is an index schema for ``corpus.CorpusDoc`` with the
  internal fields a node keeps (``_id``, ``_partition``, ``_deleted``, and
  a ``_len_<field>`` token count per scored field);
- ``ShardedCorpus.build`` indexes docs into a reference index and the
  shards; with ``messy=True`` the shards also hold what a real node holds —
  older versions of updated docs (deleted, not yet merged away), tombstones
  of deleted docs, and a second replica of another shard's partitions that
  the plan does not ask them for — while the reference holds exactly the
  live docs;
- ``ShardedCorpus.compare`` runs one query both ways and measures
  overlap@k, top-1 agreement and how many scores are bit-identical;
- ``QUERIES`` is a varied query set over the corpus (words, phrases,
  fields, booleans, keyword and numeric terms, ranges, boosts).

Does I/O: builds in-memory tantivy indexes (and reads the corpus files).
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

import tantivy

from engines.search import node_hits, query_compile, ranking
from engines.search.corpus import CorpusDoc
from engines.search.query_compile import IndexFields
from legion.keyspace import partition_of

TEXT_FIELDS = ("title", "body")  # the corpus fields the default tokenizer splits
SCORED_FIELDS = ("title", "body", "module", "kind", "lines", "size")
WRITER_HEAP_BYTES = 50_000_000
UPDATED_SHARE = 0.10  # of the docs, re-indexed with a new body in the messy variant
DELETED_SHARE = 0.05  # of the docs, deleted (tombstoned) in the messy variant

QUERIES = (
    "decode", "socket", "thread", "iterator", "deprecated",
    "parse arguments", "return the number of items", "file object", "read write close",
    "error exception raise", "lock acquire release", "calendar month", "decimal context precision",
    "tar archive member", "dict mapping keys", "utf 8", "coroutine task future", "email header",
    "pickle protocol",
    '"return a new"', '"file object"', '"the default is"~2', '"abstract base class"',
    "title:decoder", "body:deprecated", "title:abc", "title:(get set)", "body:(timeout seconds)",
    "+json -decoder", "encode AND unicode", "title:path OR body:directory", "compress OR decompress",
    "+stream +close",
    "kind:class", "kind:method buffer", "module:argparse", "module:argparse help",
    "lines:1", "size:0 title:get", "lines:[10 TO 20] buffer",
    "body:buffer^1.3 title:read", "(body:buffer^1.3)^1.7 write", 'body:"return the num"* buffer',
)  # fmt: skip


def corpus_fields(length_fields: bool = True) -> IndexFields:
    """A schema for corpus docs plus a node's internal fields; ``length_fields`` adds ``_len_<field>``."""
    builder = tantivy.SchemaBuilder()
    builder.add_text_field("_id", stored=True, tokenizer_name="raw", fast=True)
    builder.add_unsigned_field("_partition", indexed=True, fast=True)
    builder.add_unsigned_field("_deleted", indexed=True, fast=True)
    builder.add_text_field("title", stored=True)
    builder.add_text_field("body", stored=True)
    builder.add_text_field("module", stored=True, tokenizer_name="raw")
    builder.add_text_field("kind", stored=True, tokenizer_name="raw")
    builder.add_integer_field("lines", indexed=True, fast=True, stored=True)
    builder.add_unsigned_field("size", indexed=True, fast=True, stored=True)
    names = ["_id", "_partition", "_deleted", "title", "body", "module", "kind", "lines", "size"]
    lengths = {}
    if length_fields:
        for name in SCORED_FIELDS:
            builder.add_unsigned_field(f"_len_{name}", fast=True)
            names.append(f"_len_{name}")
            lengths[name] = f"_len_{name}"
    return IndexFields(builder.build(), tuple(names), lengths)


def corpus_document(
    fields: IndexFields, doc: CorpusDoc, partitions: int, analyzer: tantivy.TextAnalyzer, tombstone: bool = False
) -> tantivy.Document:
    """``doc`` as a node indexes it (a tombstone carries only the internal fields)."""
    values: dict[str, object] = {"_id": doc.id, "_partition": partition_of(doc.id, partitions)}
    values["_deleted"] = int(tombstone)
    if not tombstone:
        values.update({name: value for name, value in doc.fields().items() if name != "id" and value != ""})
        for name, length_field in fields.length_fields.items():
            present = [values[name]] if name in values else []
            values[length_field] = query_compile.field_length(present, analyzer if name in TEXT_FIELDS else None)
    return tantivy.Document.from_dict(values, fields.schema)


@dataclass(frozen=True)
class Comparison:
    """One query run over the shards and over the reference index."""

    query: str
    ranking: str  # how the shards ranked it (query_compile.RANKING_*)
    ids: list[str]  # the sharded search's first k ids
    reference_ids: list[str]
    overlap: float  # ranking.overlap_at_k
    top1: bool  # ranking.top1_agrees
    identical_scores: int  # of the sharded hits, how many carry the reference's score bit for bit
    round1_s: float  # round 1 on every shard, one after the other
    round2_s: float  # round 2 on every shard, one after the other, and the merge


@dataclass
class ShardedCorpus:
    """A reference index over the live docs and shards that split them by partition."""

    fields: IndexFields
    reference: tantivy.Index
    shards: list[tantivy.Index]
    plan: list[list[int]]  # for each shard, the partitions the plan asks it for
    partitions: int

    @classmethod
    def build(
        cls,
        docs: Iterable[CorpusDoc],
        shards: int = 3,
        partitions: int = 64,
        messy: bool = False,
        seed: int = 0,
        length_fields: bool = True,
    ) -> ShardedCorpus:
        """Index ``docs`` into a reference index and ``shards`` shards (see the module doc for ``messy``)."""
        assert shards >= 2 or not messy
        fields = corpus_fields(length_fields)
        analyzer = query_compile.default_text_analyzer()
        docs = list(docs)
        indexes = [tantivy.Index(fields.schema) for _ in range(shards)]
        writers = [index.writer(WRITER_HEAP_BYTES, 1) for index in indexes]

        def holders(doc_id: str) -> list[int]:
            owner = partition_of(doc_id, partitions) % shards
            return [owner, (owner + 1) % shards] if messy else [owner]

        def write(doc: CorpusDoc, tombstone: bool = False, supersede: bool = False) -> None:
            for shard in holders(doc.id):
                if supersede:
                    writers[shard].delete_documents_by_term("_id", doc.id)
                writers[shard].add_document(corpus_document(fields, doc, partitions, analyzer, tombstone))

        live = {doc.id: doc for doc in docs}
        for doc in docs:
            write(doc)
        if messy:
            for writer in writers:
                writer.commit()  # so that updates and deletes leave deleted docs behind in this segment
            rng = random.Random(seed)
            for doc in rng.sample(docs, int(len(docs) * UPDATED_SHARE)):
                live[doc.id] = replace(doc, body=doc.body + " updated revision", size=doc.size + 17)
                write(live[doc.id], supersede=True)
            for doc in rng.sample(docs, int(len(docs) * DELETED_SHARE)):
                live.pop(doc.id, None)
                write(doc, tombstone=True, supersede=True)
        for writer, index in zip(writers, indexes):
            writer.commit()
            writer.wait_merging_threads()
            index.reload()
        reference = tantivy.Index(fields.schema)
        writer = reference.writer(WRITER_HEAP_BYTES, 1)
        for doc in live.values():
            writer.add_document(corpus_document(fields, doc, partitions, analyzer))
        writer.commit()
        writer.wait_merging_threads()
        reference.reload()
        plan = [[p for p in range(partitions) if p % shards == shard] for shard in range(shards)]
        return cls(fields, reference, indexes, plan, partitions)

    def compare(self, query: str, ranking_mode: str = query_compile.RANKING_EXACT, k: int = 10) -> Comparison:
        """Run ``query`` over the shards (at most ``ranking_mode`` exact) and over the reference."""
        reference_searcher = self.reference.searcher()
        reference_parsed = query_compile.parse_query(self.reference, self.fields, query, TEXT_FIELDS)
        # enough reference hits to know the reference score of whatever the shards rank first
        reference = node_hits.top_hits(reference_searcher, self.fields, reference_parsed.original, None, 20 * k)
        reference_scores = {hit.id: hit.score for hit in reference}

        searchers = [shard.searcher() for shard in self.shards]
        parsed = [
            query_compile.with_ranking(query_compile.parse_query(shard, self.fields, query, TEXT_FIELDS), ranking_mode)
            for shard in self.shards
        ]
        started = time.perf_counter()
        stats = ranking.merge_stats(
            query_compile.local_stats(searcher, self.fields, p.stats_request, partitions)
            for searcher, p, partitions in zip(searchers, parsed, self.plan)
        )
        middle = time.perf_counter()
        answers = [
            node_hits.node_search(p, self.fields, searcher, stats, partitions, k)
            for searcher, p, partitions in zip(searchers, parsed, self.plan)
        ]
        merged = ranking.merge_hits([answer.hits for answer in answers], 0, k)
        ended = time.perf_counter()
        ids = [hit.id for hit in merged]
        return Comparison(
            query=query,
            ranking=min((answer.ranking for answer in answers), key=_RANKING_ORDER.index),
            ids=ids,
            reference_ids=[hit.id for hit in reference[:k]],
            overlap=ranking.overlap_at_k(ids, [hit.id for hit in reference], k),
            top1=ranking.top1_agrees(ids, reference, reference_scores),
            identical_scores=sum(1 for hit in merged if reference_scores.get(hit.id) == hit.score),
            round1_s=middle - started,
            round2_s=ended - middle,
        )


_RANKING_ORDER = (query_compile.RANKING_LOCAL, query_compile.RANKING_GLOBAL_IDF, query_compile.RANKING_EXACT)


def summary(comparisons: Sequence[Comparison]) -> dict[str, float]:
    """Mean overlap@k, top-1 agreement, share of bit-identical scores, and mean round times (ms)."""
    hits = sum(len(c.ids) for c in comparisons)
    count = len(comparisons)
    return {
        "overlap": sum(c.overlap for c in comparisons) / count,
        "top1": sum(c.top1 for c in comparisons) / count,
        "identical_scores": sum(c.identical_scores for c in comparisons) / hits if hits else 1.0,
        "round1_ms": 1000 * sum(c.round1_s for c in comparisons) / count,
        "round2_ms": 1000 * sum(c.round2_s for c in comparisons) / count,
    }
