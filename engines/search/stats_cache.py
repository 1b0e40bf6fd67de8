"""Round-1 statistics a coordinator remembers per query, reused while every node's searcher is unchanged.

A search over several nodes is two coverage rounds: the nodes' term
statistics (round 1), merged into the global ones, then scoring with them
(round 2; ``handlers`` drives both). Between two commits a node's statistics
for a query do not change, so a coordinator that remembers the merged
statistics can send round 2 at once. It remembers them with:

- the *stamps* the nodes counted under (``scope.SearcherView.stamp``: one
  searcher of one node, and the partitions it was given). A node whose
  stamp is not among them — it committed since, restarted, or was given
  other partitions — answers with its statistics instead of hits, and the
  coordinator counts again;
- *which node served which partition*, so that the plan the statistics were
  counted over is asked for again (``Cluster.coverage``'s ``prefer``). An
  answer from another plan (a node died, a partition moved) is not used.

With them it remembers the lowest score of each full page it found (per
result window): the same statistics over the same searchers give the same
page, so the next search of the query tells the nodes not to send — nor to
rescore exactly — what scores below it.

Statistics are remembered only when round 1 covered every partition; an
answer with partitions missing always counts anew. Elasticsearch's request
cache is invalidated by refresh in the same way.

Pure: plain data, no I/O. One per node (``SearchEngine.remembered``), used from its event loop.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

QUERIES_REMEMBERED_MAX = 1_024  # per coordinator: a few hundred bytes each


@dataclass(frozen=True)
class RememberedStats:
    """The merged statistics of one query, the stamps they were counted under, and over which plan."""

    stats: list[Any]  # ``ranking.CollectionStats.to_wire()`` of the merged statistics
    stamps: tuple[str, ...]
    served_by: Mapping[int, str]  # partition → node that counted it
    # Per result window (offset + limit), the lowest score of a full page found with these statistics:
    # the same searchers give the same page, so a node may leave out what scores below it.
    floors: dict[int, float] = field(default_factory=dict, compare=False)

    def same_plan(self, served_by: Mapping[int, str]) -> bool:
        """Whether an answer came from the plan these statistics were counted over."""
        return dict(served_by) == dict(self.served_by)


class StatsCache:
    """Remembered statistics by (index, incarnation, query), the least recently used forgotten first.

    The query is whatever names what the statistics were counted for: the
    coordinator uses its text and the ranking asked for, which changes what
    round 1 counts."""

    def __init__(self, capacity: int = QUERIES_REMEMBERED_MAX) -> None:
        assert capacity > 0
        self.capacity = capacity
        self._entries: OrderedDict[tuple[str, str, Hashable], RememberedStats] = OrderedDict()
        self.hits = 0  # lookups that found statistics
        self.misses = 0  # lookups that found none
        self.stale = 0  # statistics found, then forgotten because a node had changed (``forget``)

    def get(self, index: str, incarnation: str, query: Hashable) -> RememberedStats | None:
        found = self._entries.get((index, incarnation, query))
        if found is None:
            self.misses += 1
            return None
        self._entries.move_to_end((index, incarnation, query))
        self.hits += 1
        return found

    def put(self, index: str, incarnation: str, query: Hashable, remembered: RememberedStats) -> None:
        self._entries[(index, incarnation, query)] = remembered
        self._entries.move_to_end((index, incarnation, query))
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    def forget(self, index: str, incarnation: str, query: Hashable) -> None:
        """Drop the statistics of a query, found out of date."""
        if self._entries.pop((index, incarnation, query), None) is not None:
            self.stale += 1

    def __len__(self) -> int:
        return len(self._entries)
