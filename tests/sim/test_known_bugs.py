"""Bugs the simulator found in the protocol, each as a minimal deterministic scenario.

Each test states the property that should hold and runs under the invariant
checkers (``legion.testing.checkers``); most end with a quiet period that must
converge. A fixed bug's test stays here as a regression test
(``pytest tests/sim/test_known_bugs.py -k NAME`` shows its trace on failure).

Fixed: LEGION-SIM-1 (split brain), LEGION-SIM-2 (lowest-id joiner whose join
answer was lost), LEGION-SIM-3 (restarted node committed on its stale state),
LEGION-SIM-4 (the claimant protocol was not consensus: a claimant cut off by a
split, or crashing right after a commit, forked the history; closed by
``legion.consensus``), LEGION-SIM-5 (a node whose gains were cancelled kept
copying them), LEGION-SIM-6 (removing a dead joiner gave it a vote, and the
cluster could no longer commit anything).

The simulator runs the runtime's shell over the same pure core
(``legion.consensus``, ``membership``, ``cluster_state``).
"""

from __future__ import annotations

from legion import cluster_state as cs
from legion.limits import FAILURE_TIMEOUT_MS, GOSSIP_INTERVAL_MS, HEARTBEAT_INTERVAL_MS
from legion.testing.checkers import InvariantChecker
from legion.testing.scenario import reported, settle
from legion.testing.sim import Observer, Simulation, describe
from legion.testing.sim_node import SimNode
from tests.sim.support import formed

# Long enough for every node to time out every peer it no longer hears, and act on it.
DETECTION_MS = FAILURE_TIMEOUT_MS + 2 * GOSSIP_INTERVAL_MS


def _replay(name: str) -> str:
    return f"pytest tests/sim/test_known_bugs.py -k {name}"


# --- fixed -------------------------------------------------------------------------


def test_split_brain_loses_no_data_and_no_acknowledged_change() -> None:
    """LEGION-SIM-1 (fixed). n1 founds; n2 and n3 join; n3 crashes before pulling, so the
    rebalance stays pending. Split {n2} | {n1}; the operator asks n2 to remove n2, then n1
    to remove n3. Both sides used to elect a claimant and commit the same epoch; healing
    kept one branch and lost two partitions and an acknowledged removal. Now n2 (joining)
    never claims, so its side decides nothing: the operator's request to n2 gets "retry
    shortly" until the split heals."""
    sim = Simulation(1, partitions=8, replicas=1, loss=0.0, observers=[InvariantChecker()])
    with reported(sim, _replay("split_brain")):
        sim.start("n1")
        sim.join("n2", "n1")
        sim.run_until(20)
        sim.join("n3", "n1")
        while sim.nodes["n3"].state is None:
            sim.run_until(sim.now_ms + 1)
        sim.crash("n3")  # a joining member that never pulls: the rebalance stays pending
        sim.run_until(1_000)  # n2 has pulled its share and n1 has marked it ready
        sim.split(["n2"])
        sim.run_until(5_000)  # n1 has marked the other side down
        sim.remove("n2", via="n2")
        sim.run_until(6_000)
        sim.remove("n3", via="n1")
        sim.run_until(8_000)
        assert all("n2" not in committed for committed in sim.commits.values()), "the minority side committed"
        sim.heal()
        sim.restart("n3")
        settle(sim)
        assert sim.removes_acknowledged == {"n2", "n3"}


def test_a_lowest_id_joiner_whose_answer_was_lost_still_joins() -> None:
    """LEGION-SIM-2 (fixed). n2 and n3 form a cluster; n1 joins through n2, whose answer
    is lost in a split. The seed used to take n1 (joining, lowest id, just heard from) for
    the claimant and forward n1's retries to n1, which had no state and answered 500, as
    it answered gossip: n1 gave up and its rebalance never completed. Now joiners never
    claim, and a node without state answers gossip with the digest (0, ''), so the first
    gossip round after the split heals brings it the state, and its join loop ends."""
    sim = Simulation(1, partitions=8, replicas=2, loss=0.0, observers=[InvariantChecker()])
    with reported(sim, _replay("joiner")):
        sim.start("n2")
        sim.join("n3", "n2")
        sim.run_until(2_000)
        sim.join("n1", "n2")  # the request is on its way (a message's fate is decided when sent) ...
        sim.split(["n1"])  # ... but the answer will be lost
        sim.run_until(sim.now_ms + 2_000)
        assert sim.newest_state().has_member("n1")  # type: ignore[union-attr]
        sim.heal()
        sim.run_until(sim.now_ms + 2_000)  # its join request is still waiting for the lost answer
        assert sim.nodes["n1"].state is not None, "gossip did not bring the joiner the state"
        settle(sim)
        final = sim.newest_state()
        assert final is not None and final.member("n1").status == cs.UP and "n1" in sim.joins_acknowledged


def test_a_restarted_node_does_not_acknowledge_changes_it_then_loses() -> None:
    """LEGION-SIM-3 (fixed). n1..n4 (N=2). n1, the claimant, crashes; n2 takes over and,
    asked to remove n4, moves the cluster a few epochs past n1's persisted state. n1
    restarts and at once gets a remove of n3. It used to commit that on its stale state
    and acknowledge it, and gossip then threw it away. Now a restarted node waits out a
    grace period before committing: the operator gets "retry shortly" and retries until
    the removal is committed on the current state."""
    sim = Simulation(1, partitions=8, replicas=2, loss=0.0, observers=[InvariantChecker()])
    with reported(sim, _replay("restarted")):
        sim.start("n1")
        for node in ("n2", "n3", "n4"):
            sim.run_until(sim.now_ms + 100)
            sim.join(node, "n1")
        settle(sim)
        sim.crash("n1")
        sim.run_until(sim.now_ms + 5_000)  # n2 takes over and marks n1 down
        sim.remove("n4", via="n2")  # the cluster moves a few epochs past n1's persisted state
        sim.run_until(sim.now_ms + 4_000)
        sim.restart("n1")
        sim.remove("n3", via="n1")  # reaches n1 before its first gossip exchange has answered
        settle(sim)
        assert sim.removes_acknowledged == {"n3", "n4"}


class _PullsAfterRemoval(Observer):
    """Counts the pulls ``node_id`` completes after it adopted a state that removes it."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.removed_at_ms: int | None = None
        self.pulls: list[str] = []

    def on_adopt(
        self, sim: Simulation, node: SimNode, before: cs.ClusterState | None, after: cs.ClusterState, committed: bool
    ) -> None:
        if node.id == self.node_id and self.removed_at_ms is None and after.member(node.id).status == cs.REMOVED:
            self.removed_at_ms = sim.now_ms

    def on_pull(self, sim: Simulation, node: SimNode, partition: int, source: str, copied: bool) -> None:
        if node.id == self.node_id and self.removed_at_ms is not None:
            self.pulls.append(f"p{partition} at t={sim.now_ms}")


def test_a_node_whose_gains_were_cancelled_stops_copying_them() -> None:
    """LEGION-SIM-5 (fixed). n1 founds (P=32, N=1); n2 joins and asks n1 for its first
    partition, but a split loses the answer; the operator removes n2, which cancels its
    join (e3/n1: n2 removed). After the split heals, n2 adopts e3/n1, yet its handoff
    round used to go on through the list of 16 partitions it wanted under e2/n1: once the
    lost fold timed out, it copied p1..p15 from n1, holding copies no state gave it, and
    dropped them only on its next round. Now ``HandoffReceiver.pull_gained`` (and the
    simulator with it) re-reads ``wanted()`` before every pull and reports only what is
    still wanted."""
    pulls = _PullsAfterRemoval("n2")
    sim = Simulation(1, partitions=32, replicas=1, loss=0.0, observers=[InvariantChecker(), pulls])
    with reported(sim, _replay("cancelled")):
        sim.start("n1")
        sim.join("n2", "n1")
        while sim.nodes["n2"].state is None:
            sim.run_until(sim.now_ms + 1)
        sim.split(["n2"])  # n2 has asked n1 for its first partition; the answer will be lost
        sim.remove("n2", via="n1")
        sim.run_until(sim.now_ms + 2_000)
        sim.heal()
        settle(sim)
        assert pulls.removed_at_ms is not None
        assert not pulls.pulls, f"n2 copied {pulls.pulls} after adopting its removal at t={pulls.removed_at_ms}"


def test_removing_a_dead_joiner_leaves_the_cluster_able_to_decide() -> None:
    """LEGION-SIM-6 (fixed). n1 founds; n2 and n3 join; n3 dies at once, for good. The
    operator removes n3: ``remove_member`` used to make it *leaving*, and leaving members
    vote (``membership.voters``), so the voters became n1 and the dead n3, and n1 never
    again saw a majority: n2's rebalance could not complete and n4 could not join. Now a
    joiner that is removed goes at once (``removed``, never a voter)."""
    sim = Simulation(1, partitions=8, replicas=2, loss=0.0, observers=[InvariantChecker()])
    with reported(sim, _replay("dead_joiner"), trace_lines=None):
        sim.start("n1")
        sim.join("n2", "n1")
        sim.join("n3", "n1")
        while sim.nodes["n3"].state is None:
            sim.run_until(sim.now_ms + 1)
        sim.crash("n3")
        sim.run_until(sim.now_ms + DETECTION_MS)
        sim.remove("n3", via="n1")
        sim.run_until(sim.now_ms + 1_000)
        sim.join("n4", "n1")
        sim.run_until(sim.now_ms + 15_000)  # plenty: a joiner is admitted within a gossip round or two
        final = sim.newest_state()
        assert final is not None and "n3" in sim.removes_acknowledged
        assert final.pending is None and final.member("n3").status == cs.REMOVED, (
            f"the removal of dead joiner n3 never completed: {describe(final)}"
        )
        assert "n4" in sim.joins_acknowledged, "n4 could not join after the dead joiner n3 was removed"


# --- LEGION-SIM-4 (fixed by consensus) ------------------------------------------------


def test_a_claimant_cut_off_by_a_split_decides_nothing() -> None:
    """LEGION-SIM-4 (fixed), through a split. n1..n3 (N=2, no loss); the claimant n1 is
    cut off. Asked to remove n3 at once, it used to commit e6/n1 alone and acknowledge,
    while n2 and n3 committed e6/n2 (n1 down): a fork, and after healing the acknowledged
    removal was gone. Now n1 cannot get a majority of the voters to accept anything: the
    operator gets 503 (no quorum) and retries until the split heals; n2 leads the
    majority, and the removal, once acknowledged, holds."""
    sim = formed(1, 3, partitions=8, replicas=2, loss=0.0)
    with reported(sim, _replay("cut_off")):
        sim.split(["n1"])
        sim.run_until(sim.now_ms + HEARTBEAT_INTERVAL_MS // 2)  # well within n1's fresh-majority window
        sim.remove("n3", via="n1")
        sim.run_until(sim.now_ms + DETECTION_MS)
        sim.join("n4", "n2")
        sim.run_until(sim.now_ms + DETECTION_MS)
        sim.heal()
        settle(sim)
        assert sim.removes_acknowledged == {"n3"}


def test_a_claimant_crashing_right_after_a_commit_loses_nothing() -> None:
    """LEGION-SIM-4 (fixed), through a crash; no network fault at all. n1..n3 (N=2, no
    loss). Asked to remove n3, the claimant n1 commits and answers the operator, then
    crashes. It used to be the only node holding that commit: n2 took over and committed
    the same epoch (a fork), and the acknowledged removal of n3 was lost. Now a commit is
    held by a majority of the voters before the operator hears of it, and n2's election
    adopts it."""
    sim = formed(1, 3, partitions=8, replicas=2, loss=0.0)
    with reported(sim, _replay("crashing")):
        sim.remove("n3", via="n1")
        n1, deadline_ms = sim.nodes["n1"], sim.now_ms + 10_000
        while n1.state.member("n3").status == cs.UP and sim.now_ms < deadline_ms:  # type: ignore[union-attr]
            sim.run_until(sim.now_ms + 1)
        sim.crash("n1")
        sim.run_until(sim.now_ms + DETECTION_MS)
        sim.join("n4", "n2")
        sim.run_until(sim.now_ms + DETECTION_MS)
        settle(sim)
        assert sim.removes_acknowledged == {"n3"}
