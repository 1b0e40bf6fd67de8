"""Consensus under the faults it exists for: crashes mid-publication, whole-cluster restarts,
rival campaigners, and a stale lowest-id node coming back.

Each test runs under the invariant checkers (``legion.testing.checkers``: one
leader per term, one chain of commits, durable majorities, no acknowledged
change lost) for a handful of seeds, and ends converged.
"""

from __future__ import annotations

import pytest

from legion import cluster_state as cs
from legion.errors import LegionError
from legion.limits import FAILURE_TIMEOUT_MS, GOSSIP_INTERVAL_MS, REQUEST_DEADLINE_MS
from legion.testing.scenario import settle
from legion.testing.sim import Simulation
from legion.testing.sim_node import SimNode
from tests.sim.support import SimReport, formed, wait_for

DETECTION_MS = FAILURE_TIMEOUT_MS + 4 * GOSSIP_INTERVAL_MS
# Long enough for an operator that retries (a lost message costs it a request deadline) to be answered.
ANSWER_MS = DETECTION_MS + 3 * REQUEST_DEADLINE_MS


def removal_acknowledged(sim: Simulation, node_id: str) -> bool:
    return wait_for(sim, lambda: node_id in sim.removes_acknowledged, ANSWER_MS)


def assert_removed(sim: Simulation, node_id: str) -> None:
    final = sim.newest_state()
    assert final is not None and final.member(node_id).status == cs.REMOVED, f"{node_id} is not removed"


@pytest.mark.parametrize(
    ("who", "point"),
    [
        ("n2", "accepted"),  # a voter persisted the publication and died before answering
        ("n1", "quorum"),  # the leader had its majority and died before committing
        ("n1", "committed"),  # the leader committed and died before telling anyone
        ("n1", "replying"),  # the leader committed and died before answering the operator
    ],
)
def test_a_crash_at_any_step_of_a_publication_loses_no_acknowledged_removal(
    seed: int, sim_report: SimReport, who: str, point: str
) -> None:
    sim = formed(seed, 4, partitions=16, replicas=2, report=sim_report)
    with sim_report(sim):
        sim.crash_points.add((who, point))
        sim.remove("n4", via="n1")
        assert removal_acknowledged(sim, "n4"), "the operator's retries never got the removal acknowledged"
        assert (who, point) not in sim.crash_points, f"{who} never reached {point}"
        sim.join("n5", "n3")  # the cluster goes on deciding after the crash
        sim.run_until(sim.now_ms + DETECTION_MS)
        settle(sim)
        assert_removed(sim, "n4")
        assert sim.newest_state().member("n5").status == cs.UP  # type: ignore[union-attr]


def test_every_node_restarting_at_once_loses_nothing(seed: int, sim_report: SimReport) -> None:
    sim = formed(seed, 4, partitions=16, replicas=2, report=sim_report)
    with sim_report(sim):
        sim.remove("n4", via="n2")
        assert removal_acknowledged(sim, "n4")
        before = {node.id: node.record for node in sim.nodes.values()}
        for node in sim.running():
            sim.crash(node.id)
        for node_id in sorted(sim.nodes):
            sim.restart(node_id)
        for node_id, record in before.items():
            assert sim.nodes[node_id].record == record, f"{node_id} lost its record in the restart"
        settle(sim)
        assert_removed(sim, "n4")


def campaign_once(node: SimNode) -> object:
    try:
        yield from node.campaign()
    except LegionError as exc:
        node.sim.log(f"{node.id}: {exc}")


def test_two_campaigners_at_once_make_at_most_one_leader(seed: int, sim_report: SimReport) -> None:
    sim = formed(seed, 5, partitions=16, replicas=3, report=sim_report)
    with sim_report(sim):
        term = max(node.record.current_term for node in sim.nodes.values())
        for node_id in ("n2", "n4"):  # both ask for the same next term at the same moment
            node = sim.nodes[node_id]
            sim.kernel.spawn(node, campaign_once(node))
        sim.run_until(sim.now_ms + REQUEST_DEADLINE_MS)
        # A split vote may elect neither (the checker fails at once on two leaders of one term);
        # the claimant's next campaign, in a higher term, then decides.
        assert sum(1 for t in sim.leaders if t == term + 1) <= 1
        sim.remove("n5", via="n3")
        assert removal_acknowledged(sim, "n5")
        settle(sim)
        assert_removed(sim, "n5")


def test_a_stale_lowest_id_node_coming_back_adopts_the_newest_state(seed: int, sim_report: SimReport) -> None:
    sim = formed(seed, 4, partitions=16, replicas=2, report=sim_report)
    with sim_report(sim):
        sim.crash("n1")
        sim.run_until(sim.now_ms + DETECTION_MS)
        sim.remove("n4", via="n3")  # decided by n2 while n1 is away
        assert removal_acknowledged(sim, "n4")
        stale = sim.nodes["n1"].record.committed
        assert stale is not None and stale.member("n4").status == cs.UP
        sim.restart("n1")  # the lowest id: it will campaign again, on a stale state
        settle(sim)
        assert_removed(sim, "n4")
        assert sim.nodes["n1"].claimant() == "n1" and sim.nodes["n1"].record.current_term > stale.term
