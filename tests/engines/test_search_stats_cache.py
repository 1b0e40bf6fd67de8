"""A coordinator's remembered round-1 statistics: by index, incarnation and query; bounded; tied to a plan."""

from __future__ import annotations

from engines.search.stats_cache import RememberedStats, StatsCache


def remembered(n: int) -> RememberedStats:
    return RememberedStats([n, [], []], (f"view{n}:abc",), {0: "n1", 1: "n2"})


def test_statistics_are_remembered_per_index_incarnation_and_query_and_forgotten_on_request() -> None:
    cache = StatsCache()
    cache.put("docs", "inc1", "buffer", remembered(1))
    assert cache.get("docs", "inc1", "buffer") == remembered(1)
    assert cache.get("docs", "inc2", "buffer") is None  # a new incarnation of the index counts anew
    assert cache.get("other", "inc1", "buffer") is None
    assert cache.get("docs", "inc1", "buffers") is None
    cache.forget("docs", "inc1", "buffer")
    assert cache.get("docs", "inc1", "buffer") is None
    cache.forget("docs", "inc1", "buffer")  # forgetting twice is harmless
    assert (cache.hits, cache.misses, cache.stale) == (1, 4, 1)


def test_the_least_recently_used_query_is_forgotten_first() -> None:
    cache = StatsCache(capacity=2)
    cache.put("docs", "i", "a", remembered(1))
    cache.put("docs", "i", "b", remembered(2))
    assert cache.get("docs", "i", "a") is not None  # "a" is now the most recently used
    cache.put("docs", "i", "c", remembered(3))
    assert len(cache) == 2
    assert cache.get("docs", "i", "b") is None
    assert cache.get("docs", "i", "a") == remembered(1) and cache.get("docs", "i", "c") == remembered(3)


def test_an_answer_counts_as_the_remembered_plan_only_if_every_partition_had_the_same_node() -> None:
    entry = remembered(1)
    assert entry.same_plan({0: "n1", 1: "n2"})
    assert not entry.same_plan({0: "n1", 1: "n3"})  # a partition moved, or its node died and another answered
    assert not entry.same_plan({0: "n1"})  # a partition missing
