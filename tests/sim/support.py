"""Helpers shared by the simulation tests: a formed cluster, failure reports, known bugs.

A hand-written scenario builds a ``Simulation`` with ``formed``, drives it with
operator actions, and runs its checks inside ``with sim_report(sim):`` (the
``SimReport`` fixture of ``conftest``) so that a failure names the seed, the
command that replays it and the trace.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

from legion.testing.checkers import InvariantChecker
from legion.testing.scenario import TRACE_TAIL_LINES, Scenario, SimulationFailed, reported, settle
from legion.testing.sim import Simulation

JOIN_SPACING_MS = 100


@dataclass(frozen=True)
class SimReport:
    """How a failing simulation reports itself: the replay command, and how much trace to show."""

    replay: str | None = None
    trace_lines: int | None = TRACE_TAIL_LINES  # None: the whole trace

    def __call__(self, sim: Simulation, scenario: Scenario | None = None) -> AbstractContextManager[None]:
        return reported(sim, self.replay, scenario, self.trace_lines)


def formed(
    seed: int,
    nodes: int = 3,
    *,
    partitions: int = 16,
    replicas: int = 3,
    loss: float = 0.02,
    report: SimReport = SimReport(),
) -> Simulation:
    """A cluster of n1..n<nodes> formed through n1, checked all along, converged."""
    sim = Simulation(seed, partitions=partitions, replicas=replicas, loss=loss, observers=[InvariantChecker()])
    with report(sim):
        sim.start("n1")
        for i in range(2, nodes + 1):
            sim.run_until(sim.now_ms + JOIN_SPACING_MS)
            sim.join(f"n{i}", "n1")
        settle(sim)
    return sim


def claimants(sim: Simulation, node_ids: list[str]) -> dict[str, str | None]:
    """Whom each of ``node_ids`` takes for the claimant right now."""
    return {n: sim.nodes[n].claimant() for n in node_ids}


# --- bugs the simulation found in the core / protocol (not fixed here) -----------


@dataclass(frozen=True)
class KnownBug:
    """A bug the simulation found: how to recognise its evidence in a run, and its symptoms."""

    key: str
    title: str
    evidence: Callable[[Simulation], bool]
    symptoms: tuple[str, ...]

    def explains(self, failure: SimulationFailed) -> bool:
        message = str(failure.error)
        return self.evidence(failure.sim) and any(re.search(s, message) for s in self.symptoms)


SPLIT_BRAIN = (
    "split brain / stale claimant: two claimants commit the same epoch and gossip keeps one branch "
    "whole (test_known_bugs.py)"
)
SPLIT_BRAIN_DATA = KnownBug(
    key="LEGION-SIM-1/3",
    title=SPLIT_BRAIN + "; a node dropped copies acting on the branch that was thrown away",
    evidence=lambda sim: bool(sim.discarded(view for _, _, view in sim.drop_views)),
    symptoms=(r"holds? no copy", r"still assigns it there", r"drops the last copy"),
)
SPLIT_BRAIN_ACKNOWLEDGED = KnownBug(
    key="LEGION-SIM-1/3",
    title=SPLIT_BRAIN + "; a membership change was acknowledged on the branch that was thrown away",
    evidence=lambda sim: bool(sim.discarded(sim.membership_commits)),
    symptoms=(r"join was acknowledged", r"removal of \S+ was acknowledged"),
)
JOINER_LIVELOCK = KnownBug(
    key="LEGION-SIM-2",
    title=(
        "a joiner with the lowest id whose join answer was lost is forwarded its own retries and, "
        "having no state, answers 500 until it gives up; its rebalance never completes (test_known_bugs.py)"
    ),
    evidence=lambda sim: sim.stateless_join_answers > 0,
    symptoms=(r"rebalance is still pending", r"nodes still starting", r"are not running"),
)
KNOWN_BUGS = (SPLIT_BRAIN_DATA, SPLIT_BRAIN_ACKNOWLEDGED, JOINER_LIVELOCK)


def known_bug(failure: SimulationFailed) -> KnownBug | None:
    """The known bug whose evidence and symptom this failure shows, if any."""
    return next((bug for bug in KNOWN_BUGS if bug.explains(failure)), None)


__all__ = ["KNOWN_BUGS", "KnownBug", "SimReport", "claimants", "formed", "known_bug"]
