"""Acceptance: a search over shards ranks as one tantivy index over the same documents.

In process, no cluster: ``engines.search.testing`` indexes a few thousand
standard-library docstrings into one reference index and into three shards
split by ``legion.keyspace.partition_of(id, 64)`` (partitions spread over
the shards), then runs ``QUERIES`` — words, phrases, fields, booleans,
keyword and numeric terms, ranges, boosts — through both rounds and
compares the merged top 10 with the reference's.

The "messy" variant gives the shards what a real node's index holds: old
versions of updated docs (deleted but not merged away), tombstones of
deleted docs, and a replica of another shard's partitions that the plan
does not ask them for.

Each variant also runs without global statistics, and with global idf but
each node's own average field length, and prints all three, so that the
figures can be quoted (``pytest -s`` shows them).
"""

from __future__ import annotations

import pytest

from engines.search import corpus, testing
from engines.search.query_compile import RANKING_EXACT, RANKING_GLOBAL_IDF, RANKING_LOCAL

DOCS = 3000
OVERLAP_AT_10_MIN = 0.99
TOP1_AGREEMENT_MIN = 0.97


@pytest.fixture(scope="module", params=["clean", "messy"])
def sharded(request: pytest.FixtureRequest) -> testing.ShardedCorpus:
    return testing.ShardedCorpus.build(corpus.documents(limit=DOCS), shards=3, messy=request.param == "messy")


def run(sharded: testing.ShardedCorpus, ranking: str) -> dict[str, float]:
    comparisons = [sharded.compare(query, ranking, k=10) for query in testing.QUERIES]
    assert {c.ranking for c in comparisons} == {ranking}, [c.query for c in comparisons if c.ranking != ranking]
    figures = testing.summary(comparisons)
    print(
        f"\n{ranking:>10}: overlap@10 {figures['overlap']:.4f}  top-1 {figures['top1']:.4f}  "
        f"bit-identical scores {figures['identical_scores']:.3f}  "
        f"({len(comparisons)} queries; round 1 {figures['round1_ms']:.1f} ms, round 2 {figures['round2_ms']:.1f} ms "
        "for 3 shards in turn)"
    )
    return figures


def test_global_statistics_rank_the_shards_as_the_single_index(sharded: testing.ShardedCorpus) -> None:
    exact = run(sharded, RANKING_EXACT)
    assert exact["overlap"] >= OVERLAP_AT_10_MIN
    assert exact["top1"] >= TOP1_AGREEMENT_MIN
    assert exact["identical_scores"] >= 0.95  # the rest differ in the last bit: tantivy's order of adding clauses


def test_without_global_statistics_the_shards_rank_differently(sharded: testing.ShardedCorpus) -> None:
    local = run(sharded, RANKING_LOCAL)
    idf_only = run(sharded, RANKING_GLOBAL_IDF)
    # the split is real: each shard's own statistics do change the ranking, and idf alone does not fix it
    assert local["overlap"] < OVERLAP_AT_10_MIN
    assert idf_only["overlap"] < OVERLAP_AT_10_MIN
    assert local["identical_scores"] < 0.5
