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
from legion import consensus as cn
from legion import membership
from legion.limits import FAILURE_TIMEOUT_MS
from legion.placement import place
from legion.testing.scenario import settle
from tests.sim.support import formed

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
    # Gossip sends a state whole whenever the digests differ, and a node takes any committed state it hears of.
    monkeypatch.setattr(cs, "digest_newer", lambda a, b: a != b)
    monkeypatch.setattr(
        cn, "learn_commit", lambda record, state: record if state == record.committed else replace(record, committed=state)
    )
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


def test_two_leaders_without_a_majority_are_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    sim = formed(SEED, 2)
    # Split two voters: each side is half, which is no majority, unless any set of voters counts as one.
    monkeypatch.setattr(cn, "majority", lambda acks, voters: True)
    sim.split(["n1"])
    with pytest.raises(AssertionError, match="no majority of voters|minority side|fork: |two leaders"):
        sim.run_until(sim.now_ms + 2 * FAILURE_TIMEOUT_MS)


def test_an_acknowledged_join_that_never_happened_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    real = cs.add_member
    monkeypatch.setattr(cs, "add_member", lambda s, node_id, url: s if node_id == "n3" else real(s, node_id, url))
    with pytest.raises(AssertionError, match="n3's join was acknowledged"):
        formed(SEED, 3)
