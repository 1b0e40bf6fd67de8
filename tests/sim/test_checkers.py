"""The checkers catch a broken core: each test breaks one rule and expects its invariant to fire.

The simulator calls the core through its modules, so patching
``legion.cluster_state`` or ``legion.membership`` here changes what every
simulated node does. A checker that stayed silent under these mutations would
prove nothing when it stays silent on the real code.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from legion import cluster_state as cs
from legion import membership
from legion.limits import FAILURE_TIMEOUT_MS
from legion.placement import place
from legion.testing.scenario import SimulationFailed, reported, settle
from tests.sim.support import SimReport, formed, sim4_evidence

SEED = 0


def test_a_commit_that_ignores_readiness_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    def commit_without_handoff(state: cs.ClusterState) -> cs.ClusterState:
        if state.pending is None:
            return cs._finish(state)
        return cs._finish(replace(state, placement=state.pending, pending=None, ready=frozenset()))

    monkeypatch.setattr(cs, "try_commit", commit_without_handoff)
    with pytest.raises(AssertionError, match="the commit came before the handoff"):
        formed(SEED, 3)


def test_dropping_a_copy_before_the_commit_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    def held_in_target(state: cs.ClusterState, node_id: str) -> list[int]:
        target = state.pending or state.placement
        return [p for p in range(state.partitions) if node_id in target[p]]

    monkeypatch.setattr(cs, "partitions_held", held_in_target)
    with pytest.raises(AssertionError, match="still assigns it there"):
        formed(SEED, 3, replicas=1)


def test_an_unbalanced_placement_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    def crowded(previous: object, members: list[str], partitions: int, replicas: int) -> cs.Placement:
        return place(None, list(members)[:1], partitions, replicas)

    monkeypatch.setattr(cs, "place", crowded)
    with pytest.raises(AssertionError, match="unbalanced loads|distinct nodes"):
        formed(SEED, 3)


def test_a_node_taking_an_older_state_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    # ``newer`` decides through ``digest_newer``, and so does gossip, which
    # then sends a state whole whenever the digests differ.
    monkeypatch.setattr(cs, "digest_newer", lambda a, b: a != b)
    with pytest.raises(AssertionError, match="went back"):
        formed(SEED, 3)


def test_a_member_never_marked_up_again_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    real = membership.liveness_verdicts
    sim = formed(SEED, 3)
    monkeypatch.setattr(
        membership, "liveness_verdicts", lambda state, alive: {m: d for m, d in real(state, alive).items() if d}
    )
    sim.crash("n3")
    sim.run_until(sim.now_ms + 2 * FAILURE_TIMEOUT_MS)
    with pytest.raises(AssertionError, match=r"\['n3'\] are still marked down"):
        settle(sim)


def test_a_claimant_that_is_not_the_lowest_id_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    def highest(state: cs.ClusterState, alive: set[str]) -> str | None:
        candidates = [m.id for m in state.members if m.status != cs.REMOVED and m.id in alive]
        return max(candidates) if candidates else None

    monkeypatch.setattr(membership, "claimant", highest)
    with pytest.raises(AssertionError, match="as claimant, not n1"):
        formed(SEED, 3)


def test_two_claimants_at_once_are_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    sim = formed(SEED, 2)
    # Split two voters: each side is half, which is no majority, unless a claimant need not see one.
    monkeypatch.setattr(membership, "has_majority", lambda state, alive: True)
    sim.split(["n1"])
    with pytest.raises(AssertionError, match="fork: .* already committed"):
        sim.run_until(sim.now_ms + 2 * FAILURE_TIMEOUT_MS)


def test_only_a_failure_that_a_fork_in_its_own_run_explains_counts_as_sim4(monkeypatch: pytest.MonkeyPatch) -> None:
    calm = formed(SEED, 2)
    lost = SimulationFailed("lost", calm, AssertionError("the removal of n2 was acknowledged, but e9/n1 still has it"))
    assert sim4_evidence(lost) is None, "no fork in this run: a lost removal is a bug of its own"
    forked = formed(SEED, 2)
    monkeypatch.setattr(membership, "has_majority", lambda state, alive: True)
    forked.split(["n1"])
    with pytest.raises(SimulationFailed) as caught, reported(forked):
        forked.run_until(forked.now_ms + 2 * FAILURE_TIMEOUT_MS)
    assert sim4_evidence(caught.value) == "e4 was committed by both n1 and n2"
    other = SimulationFailed("other", forked, AssertionError("unbalanced loads {'n1': 9, 'n2': 7}"))
    assert sim4_evidence(other) is None, "a fork does not explain an unbalanced placement"
    with pytest.raises(SimulationFailed), SimReport(xfail_sim4=True)(forked):
        raise AssertionError("unbalanced loads {'n1': 9, 'n2': 7}")


def test_an_acknowledged_join_that_never_happened_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    real = cs.add_member
    monkeypatch.setattr(cs, "add_member", lambda s, node_id, url: s if node_id == "n3" else real(s, node_id, url))
    with pytest.raises(AssertionError, match="n3's join was acknowledged"):
        formed(SEED, 3)
