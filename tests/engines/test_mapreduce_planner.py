"""engines.mapreduce.planner: data-local map tasks from a placement view (pure, property tests)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from engines.mapreduce.planner import (
    RESOURCE_ATTRIBUTE,
    THREADS_ATTRIBUTE,
    MapTaskPlan,
    Placement,
    choose_replicas,
    group_tasks,
    replan,
    tasks_per_node,
)
from legion.placement import place

NODES = [f"n{i}" for i in range(1, 7)]


@st.composite
def views(draw):
    members = NODES[: draw(st.integers(1, 6))]
    partitions = draw(st.sampled_from([1, 4, 16, 64]))
    replicas = draw(st.integers(1, min(3, len(members))))
    preference = tuple(tuple(p) for p in place(None, members, partitions, replicas))
    live = frozenset(draw(st.sets(st.sampled_from(members))))
    workers = set(draw(st.sets(st.sampled_from(members)))) | set(members[:1])
    attributes = {n: {RESOURCE_ATTRIBUTE: f"legion-node-{n}", THREADS_ATTRIBUTE: str(draw(st.integers(1, 3)))} for n in workers}
    return Placement(partitions, preference, live, attributes)


def eligible(view, node, avoid=frozenset()):
    return node in view.live and node not in avoid and RESOURCE_ATTRIBUTE in view.attributes.get(node, {})


@settings(max_examples=200, deadline=None)
@given(view=views(), avoid=st.sets(st.sampled_from(NODES), max_size=2))
def test_each_partition_goes_to_its_first_eligible_replica_or_is_missing(view, avoid):
    chosen, missing = choose_replicas(view, avoid=avoid)
    assert sorted([*chosen, *missing]) == list(range(view.partitions))
    for p, node in chosen.items():
        first = next(n for n in view.preference[p] if eligible(view, n, avoid))
        assert node == first  # the primary while it is up and runs a worker
    for p in missing:
        assert not any(eligible(view, n, avoid) for n in view.preference[p])


@settings(max_examples=200, deadline=None)
@given(view=views(), sizes=st.lists(st.integers(0, 1000), min_size=64, max_size=64), limit=st.integers(1, 4))
def test_tasks_cover_every_chosen_partition_once_on_its_node_within_the_limit(view, sizes, limit):
    chosen, _ = choose_replicas(view)
    plans = group_tasks(chosen, limit, dict(enumerate(sizes)))
    seen = [p for plan in plans for p in plan.partitions]
    assert sorted(seen) == sorted(chosen)
    for plan in plans:
        assert plan.partitions and all(chosen[p] == plan.node for p in plan.partitions)
    for node in set(chosen.values()):
        assert 1 <= sum(plan.node == node for plan in plans) <= limit


def test_tasks_of_a_node_are_balanced_by_bytes():
    plans = group_tasks({p: "n1" for p in range(8)}, 2, {0: 100, 1: 100, 2: 1, 3: 1, 4: 1, 5: 1, 6: 1, 7: 1})
    loads = sorted(sum({0: 100, 1: 100}.get(p, 1) for p in plan.partitions) for plan in plans)
    assert loads == [103, 103]


@settings(max_examples=100, deadline=None)
@given(view=views(), dead_index=st.integers(0, 5))
def test_replanned_partitions_avoid_the_dead_node(view, dead_index):
    chosen, _ = choose_replicas(view)
    plans = group_tasks(chosen, 1)
    if not plans:
        return
    lost = plans[dead_index % len(plans)]
    moved, missing = replan(view, [lost], {lost.node})
    assert sorted([*moved, *missing]) == sorted(lost.partitions)
    assert lost.node not in moved.values()


def test_threads_per_node_come_from_the_published_attribute():
    view = Placement(1, (("a",),), frozenset({"a"}), {"a": {THREADS_ATTRIBUTE: "3"}, "b": {THREADS_ATTRIBUTE: "x"}})
    assert tasks_per_node(view) == {"a": 3, "b": 1}
    assert group_tasks({0: "a"}, {"a": 3}) == [MapTaskPlan("a", (0,))]
