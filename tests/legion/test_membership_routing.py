"""Failure detection, the claimant rule and routing decisions."""

from legion import cluster_state as cs
from legion.limits import FAILURE_TIMEOUT_MS
from legion.membership import alive_ids, claimant, liveness_verdicts
from legion.routing import coverage_plan, live_nodes, read_order, write_plan
from tests.legion.test_cluster_state import finish_handoff, three_nodes


def test_silent_members_are_not_alive_and_lose_the_claim():
    state = three_nodes()
    now = 100_000
    heard = {"n1": now - FAILURE_TIMEOUT_MS - 1, "n2": now - 10, "n3": now - 10}
    alive = alive_ids(state, "n3", heard, now)
    assert alive == {"n2", "n3"}
    assert claimant(state, alive) == "n2"
    assert liveness_verdicts(state, alive) == {"n1": True}


def test_a_member_that_returns_is_marked_up_again():
    state = cs.set_down(three_nodes(), "n2", True)
    assert liveness_verdicts(state, {"n1", "n2", "n3"}) == {"n2": False}


def test_removed_members_never_claim():
    state = finish_handoff(cs.remove_member(three_nodes(), "n1"))
    assert claimant(state, {"n1", "n2", "n3"}) == "n2"


def test_writes_count_only_current_replicas_and_skip_dead_ones():
    state = three_nodes(16, 3)
    joined = cs.add_member(state, "n4", "http://x:4")
    p = next(p for p, n in cs.gained_slots(joined.placement, joined.pending))
    live = live_nodes(joined) - {"n2"}
    plan = write_plan(joined, p, live)
    assert "n2" not in plan.counted and set(plan.counted) <= set(joined.placement[p])
    assert plan.extra == ("n4",)
    assert plan.replicas == 3


def test_reads_try_the_local_replica_first_then_preference_order():
    state = three_nodes(16, 2)
    p = next(p for p, nodes in enumerate(state.placement) if nodes[1] == "n2")
    assert read_order(state, p, {"n1", "n2", "n3"}, "n2")[0] == "n2"
    assert read_order(state, p, {"n1", "n2", "n3"}, "n3") == state.placement[p]
    assert read_order(state, p, {"n1", "n3"}, "n3") == tuple(n for n in state.placement[p] if n != "n2")


def test_coverage_plan_covers_every_partition_once_on_live_nodes():
    state = three_nodes(64, 3)
    plan = coverage_plan(state, {"n1", "n3"}, "n1")
    covered = sorted(p for parts in plan.values() for p in parts)
    assert covered == list(range(64))
    assert set(plan) <= {"n1", "n3"}
    avoided = coverage_plan(state, {"n1", "n2", "n3"}, "n1", avoid=frozenset({"n1"}))
    assert "n1" not in avoided
