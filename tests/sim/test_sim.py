"""Seeded simulations of a whole cluster: a random sweep, and hand-written scenarios.

Every test runs under ``legion.testing.checkers`` (valid placements, data
safety of handoff, epoch order) and ends with a quiet period that must
converge. A failure prints its seed and how to replay it:
``pytest tests/sim --seed N``.

Every failure fails; the checkers include consensus's own invariants (at
most one leader per term, one chain of commits, durable majorities, no
acknowledged change lost).
"""

from __future__ import annotations

import pytest

from legion import cluster_state as cs
from legion.limits import FAILURE_TIMEOUT_MS, GOSSIP_INTERVAL_MS, REQUEST_DEADLINE_MS
from legion.placement import moved_slots, node_loads
from legion.testing import scenario
from legion.testing.checkers import check_convergence
from legion.testing.scenario import settle
from tests.sim.support import SimReport, claimants, formed, wait_for

# Long enough for the failure detector to time out and the claimant to act on it.
DETECTION_MS = FAILURE_TIMEOUT_MS + 4 * GOSSIP_INTERVAL_MS


@pytest.mark.sweep
def test_random_scenario(seed: int, sim_report: SimReport) -> None:
    scenario.run(scenario.generate(seed), sim_report.replay, sim_report.trace_lines)


def test_the_same_seed_replays_the_same_run() -> None:
    runs = [scenario.run(scenario.generate(11)) for _ in range(2)]
    assert runs[0].trace == runs[1].trace
    assert runs[0].kernel.events_run == runs[1].kernel.events_run


def test_a_fourth_node_joins_a_three_node_cluster(seed: int, sim_report: SimReport) -> None:
    sim = formed(seed, 3, partitions=16, replicas=3, report=sim_report)
    with sim_report(sim):
        before = sim.newest_state()
        assert before is not None
        sim.join("n4", "n2")
        settle(sim)
        after = sim.newest_state()
        assert after is not None and after.member("n4").status == cs.UP
        loads = node_loads(after.placement)
        assert sorted(loads) == ["n1", "n2", "n3", "n4"] and max(loads.values()) - min(loads.values()) <= 1
        # Minimal movement: the newcomer's slots, and nothing else, moved.
        assert moved_slots(before.placement, after.placement) == loads["n4"]
        assert sim.nodes["n4"].data == set(cs.partitions_held(after, "n4"))


def test_the_next_lowest_takes_over_when_the_claimant_crashes(seed: int, sim_report: SimReport) -> None:
    sim = formed(seed, 3, report=sim_report)
    with sim_report(sim):
        sim.crash("n1")
        sim.run_until(sim.now_ms + DETECTION_MS)
        assert claimants(sim, ["n2", "n3"]) == {"n2": "n2", "n3": "n2"}
        for node in ("n2", "n3"):
            state = sim.nodes[node].state
            assert state is not None and state.member("n1").down, f"{node} does not see n1 down"
        assert sim.newest_state().committed_by == "n2"  # type: ignore[union-attr]
        sim.restart("n1")
        settle(sim)
        final = sim.newest_state()
        assert final is not None and not final.member("n1").down
        assert claimants(sim, ["n1", "n2", "n3"]) == {"n1": "n1", "n2": "n1", "n3": "n1"}


def test_a_node_is_removed_while_another_is_crashed(seed: int, sim_report: SimReport) -> None:
    sim = formed(seed, 4, partitions=16, replicas=2, report=sim_report)
    with sim_report(sim):
        sim.crash("n4")
        sim.run_until(sim.now_ms + DETECTION_MS)
        sim.remove("n3")
        # A lost message costs the operator a request deadline before it retries.
        waited = wait_for(sim, lambda: "n3" in sim.removes_acknowledged, DETECTION_MS + 2 * REQUEST_DEADLINE_MS)
        assert waited, "the removal of n3 was not acknowledged"
        sim.run_until(sim.now_ms + DETECTION_MS)
        # n4 is down, not removed: it gains some of n3's slots and must pull
        # them itself, so the rebalance waits for it, and n3 keeps its copies.
        state = sim.newest_state()
        assert state is not None and state.member("n3").status == cs.LEAVING and state.pending is not None
        assert sim.nodes["n3"].data, "n3 dropped its copies before the rebalance was committed"
        sim.restart("n4")
        settle(sim)
        final = sim.newest_state()
        assert final is not None and final.member("n3").status == cs.REMOVED
        assert sim.nodes["n3"].data == set()
        assert "n3" in sim.removes_acknowledged


def test_a_network_partition_heals(seed: int, sim_report: SimReport) -> None:
    sim = formed(seed, 5, partitions=16, replicas=3, report=sim_report)
    with sim_report(sim):
        before = sim.newest_state()
        sim.split(["n1", "n2"])
        sim.run_until(sim.now_ms + DETECTION_MS)
        # A lost publication costs the leader a term: it campaigns again on the next round.
        marked = wait_for(sim, lambda: all(sim.nodes["n4"].state.member(n).down for n in ("n1", "n2")), DETECTION_MS)
        # Each side takes its lowest live voter for the claimant, but only the
        # majority's can win a term and commit: it marks the other side down (down, not removed).
        assert claimants(sim, ["n1", "n2", "n3", "n4", "n5"]) == {
            "n1": "n1", "n2": "n1", "n3": "n3", "n4": "n3", "n5": "n3",
        }
        assert not sim.nodes["n1"].is_leader() and sim.nodes["n3"].is_leader()
        minority, majority = sim.nodes["n2"].state, sim.nodes["n4"].state
        assert minority == before, "the minority side committed during the split"
        assert marked and majority is not None and all(majority.member(n).down for n in ("n1", "n2"))
        settle(sim)
        final = sim.newest_state()
        assert final is not None and all(m.status == cs.UP and not m.down for m in final.members)
        check_convergence(sim)
