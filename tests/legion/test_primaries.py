"""Primary balancing reorders preference lists without moving data."""

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from legion.placement import place
from legion.primaries import balance_primaries


def grown_one_by_one(count: int, partitions: int, replicas: int):
    placement = None
    for n in range(1, count + 1):
        placement = place(placement, [f"n{i}" for i in range(1, n + 1)], partitions, replicas)
    return placement


def test_a_cluster_grown_node_by_node_gets_balanced_primaries():
    placement = grown_one_by_one(3, 64, 3)
    assert Counter(nodes[0] for nodes in placement) == Counter({"n1": 64}), "place() keeps positions"
    balanced = balance_primaries(placement)
    counts = Counter(nodes[0] for nodes in balanced)
    assert sorted(counts.values()) == [21, 21, 22]


@settings(max_examples=150, deadline=None)
@given(
    count=st.integers(1, 12),
    log_partitions=st.integers(0, 8),
    replicas=st.integers(1, 4),
)
def test_balancing_keeps_every_holder_and_evens_out_primaries(count, log_partitions, replicas):
    partitions = 2**log_partitions
    placement = grown_one_by_one(count, partitions, replicas)
    balanced = balance_primaries(placement)
    assert [set(a) for a in placement] == [set(b) for b in balanced], "no data may move"
    assert all(len(set(nodes)) == len(nodes) for nodes in balanced)
    counts = Counter(nodes[0] for nodes in balanced)
    nodes = {n for lst in balanced for n in lst}
    spread = [counts.get(n, 0) for n in nodes]
    if replicas >= 2 or count == 1:
        assert max(spread) - min(spread) <= 1, counts
    assert balance_primaries(balanced) == balanced, "balancing is idempotent"
