"""Bugs the simulator found in the protocol, each as a minimal deterministic scenario.

Each test states the property that *should* hold and is marked as an expected
failure, strictly: it fails today only with the symptom named (any other
failure is a real test failure), and when the bug is fixed it passes, which
pytest reports as XPASS(strict) — then drop the marker and keep the test as a
regression test (and drop the bug from ``support.KNOWN_BUGS``).

The simulator mirrors the runtime (``legion.runtime.node``, ``gossiper``,
``handoff_receiver``, ``http_api``); the trace of each scenario is printed on
failure: ``pytest tests/sim/test_known_bugs.py -rx`` shows the reasons,
``pytest tests/sim/test_known_bugs.py --runxfail`` the full reports.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from legion.testing.checkers import InvariantChecker
from legion.testing.scenario import SimulationFailed, reported, settle
from legion.testing.sim import Simulation


class KnownBugReproduced(Exception):
    """The scenario failed exactly the way the bug predicts."""


def expect_symptom(pattern: str, scenario: Callable[[], Simulation]) -> Simulation:
    """Run ``scenario``; a failure matching ``pattern`` is the known bug, any other is re-raised."""
    try:
        return scenario()
    except SimulationFailed as failure:
        if re.search(pattern, str(failure.error)):
            raise KnownBugReproduced(str(failure)) from None
        raise


def _split_brain_loses_data() -> Simulation:
    sim = Simulation(1, partitions=8, replicas=1, loss=0.0, observers=[InvariantChecker()])
    with reported(sim, "pytest tests/sim/test_known_bugs.py --runxfail -k split_brain"):
        sim.start("n1")
        sim.join("n2", "n1")
        sim.run_until(20)
        sim.join("n3", "n1")
        while sim.nodes["n3"].state is None:
            sim.run_until(sim.now_ms + 1)
        sim.crash("n3")  # a joining member that never pulls: the rebalance stays pending
        sim.run_until(1_000)  # n2 has pulled its share and n1 has marked it ready
        sim.split(["n2"])
        sim.run_until(5_000)  # each side has marked the other down; each has a claimant
        sim.remove("n2", via="n2")  # n2 commits its own leave and drops its copies
        sim.run_until(6_000)
        sim.remove("n3", via="n1")  # n1 commits too: its branch now ties n2's
        sim.run_until(8_000)
        sim.heal()
        sim.restart("n3")
        settle(sim)
    return sim


@pytest.mark.xfail(raises=KnownBugReproduced, strict=True, reason="LEGION-SIM-1: split brain loses data")
def test_split_brain_loses_no_data_and_no_acknowledged_change() -> None:
    """LEGION-SIM-1. Both sides of a network split elect a claimant (the lowest id each side
    hears) and both commit; when the split heals, gossip keeps the branch with the higher
    epoch, ties going to the lower committer id, and silently discards the other — although
    nodes already acted on it and the operator got an acknowledgement from it.

    Trace (P=8, N=1, no loss): n1 founds; n2 and n3 join (e3/n1, pending); n3 crashes before
    pulling, so the rebalance stays pending while n2 pulls p0, p2, p4 and n1 marks them ready
    (e4/n1). Split {n2} | {n1}. n1 marks n2 and n3 down (e5/n1). The operator asks n2 to remove
    n2: n2, the claimant of its side, commits e5/n2 (n2 leaving), so n2 gains nothing any more
    and drops p0, p2, p4; the operator gets "acknowledged". The operator asks n1 to remove n3:
    e6/n1; n2 marks n1 and n3 down: e6/n2. Heal: e6/n1 beats e6/n2 (same epoch, lower
    committer). In e6/n1, n2 is joining again and its slots p0, p2, p4 are still marked ready
    (``plan`` keeps ``ready`` across a re-plan). n2 pulls what it still lacks, the claimant
    commits e7/n1 giving p0, p2, p4 to n2, which holds no copy, and n1 drops its copies:
    p0 and p2 are lost from the cluster (checker (b): "the commit came before the handoff").
    The acknowledged removal of n2 is gone too.

    First seen in sweep seeds 9 and 76 (data), 35, 52, 97, 105, 110 (lost acknowledged
    removes and joins); a restarted claimant does the same without any split (LEGION-SIM-3).
    The root cause is that commits are not fenced: any node that believes itself claimant
    commits, and ``newer`` resolves conflicting histories by overwriting one.
    """
    expect_symptom(r"giving partition \d+ to n2, which holds no copy", _split_brain_loses_data)


def _lost_join_answer() -> Simulation:
    sim = Simulation(1, partitions=8, replicas=2, loss=0.0, observers=[InvariantChecker()])
    with reported(sim, "pytest tests/sim/test_known_bugs.py --runxfail -k joiner"):
        sim.start("n2")
        sim.join("n3", "n2")
        sim.run_until(2_000)
        sim.join("n1", "n2")  # the request is on its way (a message's fate is decided when sent) ...
        sim.split(["n1"])  # ... but the answer will be lost
        sim.run_until(sim.now_ms + 2_000)
        assert sim.newest_state().has_member("n1")  # type: ignore[union-attr]
        sim.heal()
        settle(sim)
    return sim


@pytest.mark.xfail(raises=KnownBugReproduced, strict=True, reason="LEGION-SIM-2: lowest-id joiner livelock")
def test_a_lowest_id_joiner_whose_answer_was_lost_still_joins() -> None:
    """LEGION-SIM-2. n2 and n3 form a cluster; n1 joins through n2. n2 (the claimant) commits
    ``add_member(n1)``, but the answer never reaches n1, which retries (``Node._join`` retries
    5xx and timeouts). The join handler first calls ``heard_from(n1)``, so on the seed n1 — a
    joining member now, with the lowest id, just heard from — *is* the claimant, and
    ``change_state`` forwards n1's own join request to n1. n1 has no cluster state yet
    (``Node.state`` is None, its HTTP server already runs), so the handler fails with an
    AttributeError: 500. Every retry goes the same way; gossip cannot help, since n1 answers
    every digest with a 500 too and the state is only sent whole to a peer whose reply shows
    it is behind. After 60 attempts n1 exits. The cluster keeps a joining member that never
    pulls, so its rebalance never completes and nothing else can commit a placement until
    an operator removes n1 (checker (c): "a rebalance is still pending").

    First seen in sweep seeds 3, 15, 34, 59, 67, 75, 102, 128, 184. Any lost or late answer
    to a join triggers it when the joiner's id sorts lowest.
    """
    expect_symptom(r"rebalance is still pending|nodes still starting|are not running", _lost_join_answer)


def _stale_claimant_after_restart() -> Simulation:
    sim = Simulation(1, partitions=8, replicas=2, loss=0.0, observers=[InvariantChecker()])
    with reported(sim, "pytest tests/sim/test_known_bugs.py --runxfail -k restarted"):
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
    return sim


@pytest.mark.xfail(raises=KnownBugReproduced, strict=True, reason="LEGION-SIM-3: stale claimant after restart")
def test_a_restarted_node_does_not_acknowledge_changes_it_then_loses() -> None:
    """LEGION-SIM-3. n1..n4 (N=2). n1, the claimant, crashes; n2 marks it down and, asked to
    remove n4, commits that rebalance up to e12/n2. n1 restarts with its persisted e8/n1 and
    treats every member as alive for its first 3 s (``Node.start`` sets ``last_heard_ms`` to
    the start time), so it is the claimant in its own eyes. ``may_claim``'s grace period
    holds back the gossiper's claimant duties, but ``Node.change_state`` does not look at it:
    a remove of n3 sent to n1 within the ~40 ms before its first gossip answer arrives is
    committed as e9/n1 on the stale state and acknowledged. e12/n2 then overwrites it: n3 is
    never removed (checker (c): "the removal of n3 was acknowledged, but ... still has it").
    No network fault is needed. A stale claimant's commits of ``handoff-done`` and ``join``
    are lost the same way (a join is then silently undone, as in LEGION-SIM-1).
    """
    expect_symptom(r"removal of n3 was acknowledged", _stale_claimant_after_restart)
