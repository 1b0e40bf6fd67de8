"""Primaries: which replica of each partition is listed first.

Pure. ``placement.place`` decides *which* nodes hold a partition and keeps
every surviving node in its position, so a cluster grown one node at a time
would keep every primary on its first node. ``balance_primaries`` then
reorders preference lists — moving no data, since the set of holders of each
partition stays the same — until every node is first for floor(P/n) or
ceil(P/n) partitions where the lists allow it. The first replica is the one
routing tries first for reads from a node that holds no copy, and the one a
coverage request prefers, so balanced primaries spread that load evenly.
"""

from __future__ import annotations

from collections import Counter

from legion.placement import Placement


def balance_primaries(placement: Placement) -> Placement:
    """``placement`` with lists reordered so primary counts differ by at most one where possible.

    Deterministic; changes as few lists as the greedy allows (each step swaps the
    first entry of one list with a less-loaded holder of the same partition)."""
    lists = [list(nodes) for nodes in placement]
    holders = sorted({node for nodes in lists for node in nodes})
    counts = Counter({node: 0 for node in holders})
    counts.update(nodes[0] for nodes in lists if nodes)
    led: dict[str, list[int]] = {node: [] for node in holders}
    for p, nodes in enumerate(lists):
        if nodes:
            led[nodes[0]].append(p)
    while (path := _relief_path(lists, counts, led)) is not None:
        # Each hop hands one partition's lead to the next node: the first node
        # loses one primary, the last gains one, those between keep their count.
        for partition, index in path:
            nodes = lists[partition]
            led[nodes[0]].remove(partition)
            nodes[0], nodes[index] = nodes[index], nodes[0]
            led[nodes[0]].append(partition)
        counts[lists[path[0][0]][path[0][1]]] -= 1
        counts[lists[path[-1][0]][0]] += 1
    return tuple(tuple(nodes) for nodes in lists)


def _relief_path(
    lists: list[list[str]], counts: Counter[str], led: dict[str, list[int]]
) -> list[tuple[int, int]] | None:
    """A chain of (partition, position) swaps from the most-loaded primary to a node with
    at least two fewer primaries (breadth-first, so the shortest), or None if balanced."""
    for heavy in sorted(counts, key=lambda n: (-counts[n], n)):
        parent: dict[str, tuple[str, int, int] | None] = {heavy: None}
        frontier = [heavy]
        while frontier:
            following: list[str] = []
            for node in frontier:
                for p in sorted(led[node]):
                    nodes = lists[p]
                    for i in range(1, len(nodes)):
                        nxt = nodes[i]
                        if nxt in parent:
                            continue
                        parent[nxt] = (node, p, i)
                        if counts[nxt] <= counts[heavy] - 2:
                            return _unwind(parent, nxt)
                        following.append(nxt)
            frontier = following
    return None


def _unwind(parent: dict[str, tuple[str, int, int] | None], end: str) -> list[tuple[int, int]]:
    hops = []
    step = parent[end]
    while step is not None:
        node, p, i = step
        hops.append((p, i))
        step = parent[node]
    return hops[::-1]
