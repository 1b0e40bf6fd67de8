"""Helpers shared by the simulation tests: a formed cluster, failure reports, waiting on a condition.

A hand-written scenario builds a ``Simulation`` with ``formed``, drives it with
operator actions, and runs its checks inside ``with sim_report(sim):`` (the
``SimReport`` fixture of ``conftest``) so that a failure names the seed, the
command that replays it and the trace.

Every failure fails: LEGION-SIM-4 (two claimants committing the same epoch)
is closed by consensus (``legion.consensus``), and checker (e) now raises on
any fork as a plain failure.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from legion.testing.checkers import InvariantChecker
from legion.testing.scenario import TRACE_TAIL_LINES, Scenario, reported, settle
from legion.testing.sim import Simulation

JOIN_SPACING_MS = 100
WAIT_STEP_MS = 50


@dataclass(frozen=True)
class SimReport:
    """How a failing simulation reports itself: the replay command and how much trace to show."""

    replay: str | None = None
    trace_lines: int | None = TRACE_TAIL_LINES  # None: the whole trace

    @contextmanager
    def __call__(self, sim: Simulation, scenario: Scenario | None = None) -> Iterator[None]:
        with reported(sim, self.replay, scenario, self.trace_lines):
            yield


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


def wait_for(sim: Simulation, condition: Callable[[], bool], within_ms: int) -> bool:
    """Run the simulation until ``condition()`` holds (True) or ``within_ms`` have passed (False)."""
    deadline_ms = sim.now_ms + within_ms
    while not condition():
        if sim.now_ms >= deadline_ms:
            return False
        sim.run_until(sim.now_ms + WAIT_STEP_MS)
    return True


def claimants(sim: Simulation, node_ids: list[str]) -> dict[str, str | None]:
    """Whom each of ``node_ids`` takes for the claimant right now."""
    return {n: sim.nodes[n].claimant() for n in node_ids}


__all__ = ["SimReport", "claimants", "formed", "wait_for"]
