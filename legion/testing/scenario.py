"""Scenarios: timed operator actions generated from a seed, run under the invariant checkers.

Pure. ``generate(seed)`` draws a bounded scenario: 3-8 nodes (ids shuffled, so
a newcomer may well become the claimant), 8-32 partitions, 1-3 replicas, a
loss rate up to 20%, the cluster formed by joins through seeds, then a few
joins, removes, crashes, restarts, restarts of every node at once and network
splits that heal. It never asks to remove the last data holder (the core
would refuse anyway), and at run time
a crash is skipped if it would leave a partition with no live copy, unless the
scenario allows that. ``run`` runs the actions, then a quiet period — the
network healed and lossless, every crashed node restarted — until the cluster
has converged (``checkers.check_convergence``) within ``QUIET_MS_MAX``, and
stays converged. Any failure is re-raised with the seed, the command that
replays it, the scenario and the tail of the trace.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

from legion.limits import FAILURE_TIMEOUT_MS, GOSSIP_INTERVAL_MS
from legion.testing.checkers import InvariantChecker, check_convergence
from legion.testing.sim import Observer, Simulation

NODE_IDS = tuple(f"n{i}" for i in range(1, 9))
# 120 gossip rounds: once the faults stop, a cluster that has not converged by
# then is stuck, not slow (handoff of 32 partitions takes a few seconds).
QUIET_MS_MAX = 60_000
ACTIONS_TAIL_MS = 5_000
TRACE_TAIL_LINES = 60
KINDS = ("start", "join", "remove", "crash", "restart", "restart_all", "split", "heal")


@dataclass(frozen=True, slots=True)
class Action:
    """One operator action at ``at_ms``: ``node`` for most kinds, ``side`` for a split."""

    at_ms: int
    kind: str
    node: str = ""
    side: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        assert self.kind in KINDS, self.kind

    def __str__(self) -> str:
        target = self.node or (f"{list(self.side)} from the rest" if self.side else "")
        return f"t={self.at_ms} {self.kind} {target}".rstrip()


@dataclass(frozen=True)
class Scenario:
    """A cluster shape, a network, and the actions to run on it."""

    seed: int
    partitions: int
    replicas: int
    loss: float
    actions: tuple[Action, ...]
    allow_unavailable: bool = False
    observers: tuple[Observer, ...] = field(default=(), compare=False)

    def describe(self) -> str:
        head = f"P={self.partitions} N={self.replicas} loss={self.loss:.0%} allow_unavailable={self.allow_unavailable}"
        return "\n".join([head, *(f"  {action}" for action in self.actions)])


def generate(seed: int) -> Scenario:
    """A random scenario, the same for the same seed."""
    rng = random.Random(f"legion-scenario-{seed}")
    ids = list(NODE_IDS)
    rng.shuffle(ids)
    pool = ids[: rng.randint(3, 8)]
    initial = rng.randint(2, min(4, len(pool)))
    actions = [Action(0, "start", pool[0])]
    t = 0
    for node in pool[1:initial]:
        t += rng.randint(0, 400)
        actions.append(Action(t, "join", node))
    model = _Model(members=set(pool[:initial]), waiting=pool[initial:])
    for _ in range(rng.randint(3, 8)):
        t += rng.randint(200, 6_000)
        actions.extend(model.draw(rng, t))
    return Scenario(
        seed=seed,
        partitions=rng.choice((8, 16, 32)),
        replicas=rng.randint(1, 3),
        loss=rng.choice((0.0, 0.02, 0.05, 0.1, 0.2)),
        actions=tuple(sorted(actions, key=lambda a: a.at_ms)),
        allow_unavailable=rng.random() < 0.2,
    )


@dataclass
class _Model:
    """What the generator expects the cluster to look like, to keep its choices sensible."""

    members: set[str]
    waiting: list[str]
    crashed: set[str] = field(default_factory=set)
    split_until_ms: int = 0

    def draw(self, rng: random.Random, t: int) -> list[Action]:
        running = sorted(self.members - self.crashed)
        choices = ["join"] if self.waiting else []
        choices += ["remove"] if len(self.members) >= 2 else []
        choices += ["crash"] if len(running) >= 2 else []
        choices += ["restart"] if self.crashed else []
        choices += ["restart_all"] if len(running) >= 2 else []
        choices += ["split"] if len(running) >= 2 and t > self.split_until_ms else []
        if not choices:
            return []
        kind = rng.choice(choices)
        if kind == "join":
            node = self.waiting.pop(0)
            self.members.add(node)
        elif kind == "remove":
            node = rng.choice(sorted(self.members))
            self.members.discard(node)  # at least one member always stays
            self.crashed.discard(node)
        elif kind == "crash":
            node = rng.choice(running)
            self.crashed.add(node)
        elif kind == "restart":
            node = rng.choice(sorted(self.crashed))
            self.crashed.discard(node)
        elif kind == "restart_all":
            return [Action(t, kind)]
        else:
            side = tuple(sorted(rng.sample(running, rng.randint(1, len(running) - 1))))
            self.split_until_ms = t + rng.randint(1_000, 10_000)
            return [Action(t, "split", side=side), Action(self.split_until_ms, "heal")]
        return [Action(t, kind, node)]


class SimulationFailed(AssertionError):
    """An invariant broke: the message carries the seed, how to replay, the scenario and the trace tail.

    ``sim`` is the simulation as it stood, ``error`` the checker's own message."""

    def __init__(self, message: str, sim: Simulation, error: AssertionError) -> None:
        super().__init__(message)
        self.sim = sim
        self.error = error


def run(scenario: Scenario, replay: str | None = None, trace_lines: int | None = TRACE_TAIL_LINES) -> Simulation:
    """Run ``scenario`` and its quiet period under the invariant checkers.

    Raises ``SimulationFailed`` on the first broken invariant, or if the cluster
    has not converged by the end of the quiet period; its message ends with the
    last ``trace_lines`` lines of the trace (None: all of it)."""
    sim = Simulation(
        scenario.seed,
        partitions=scenario.partitions,
        replicas=scenario.replicas,
        loss=scenario.loss,
        observers=[InvariantChecker(), *scenario.observers],
    )
    with reported(sim, replay, scenario, trace_lines):
        for action in scenario.actions:
            sim.run_until(action.at_ms)
            apply(sim, scenario, action)
        # Let the last actions play out (the failure detector act on a last crash) before the quiet period.
        sim.run_until(sim.now_ms + ACTIONS_TAIL_MS)
        settle(sim)
    return sim


@contextmanager
def reported(
    sim: Simulation,
    replay: str | None = None,
    scenario: Scenario | None = None,
    trace_lines: int | None = TRACE_TAIL_LINES,
) -> Iterator[None]:
    """Turn an AssertionError inside into ``SimulationFailed``: seed, replay command, scenario, trace tail."""
    try:
        yield
    except SimulationFailed:
        raise
    except AssertionError as exc:
        raise SimulationFailed(failure_report(sim, exc, replay, scenario, trace_lines), sim, exc) from exc


class Traced(Protocol):
    """What a failure report reads of a simulation (this one's, or the data path's ``DataSimulation``)."""

    seed: int
    trace: list[str]

    @property
    def now_ms(self) -> int: ...


class Described(Protocol):
    def describe(self) -> str: ...


def failure_report(
    sim: Traced,
    error: AssertionError,
    replay: str | None = None,
    scenario: Described | None = None,
    trace_lines: int | None = TRACE_TAIL_LINES,
) -> str:
    tail = sim.trace if trace_lines is None else sim.trace[-trace_lines:]
    lines = [
        f"seed {sim.seed}, t={sim.now_ms} ms: {error}",
        f"replay: {replay or f'pytest tests/sim --seed {sim.seed}'}",
    ]
    if scenario is not None:
        lines.append("scenario: " + scenario.describe())
    return "\n".join([*lines, f"trace (last {len(tail)} of {len(sim.trace)} lines):", *tail])


def apply(sim: Simulation, scenario: Scenario, action: Action) -> None:
    """Carry out one action, skipping (and logging) one that no longer makes sense."""
    node = sim.nodes.get(action.node)
    if action.kind == "start":
        sim.start(action.node)
    elif action.kind == "join":
        sim.join(action.node)
    elif action.kind == "remove" and node is not None:
        sim.remove(action.node)
    elif action.kind == "crash" and node is not None and node.running and _may_crash(sim, scenario, node.id):
        sim.crash(action.node)
    elif action.kind == "restart" and node is not None and not node.running:
        sim.restart(action.node)
    elif action.kind == "restart_all":
        # Every running node is killed at once and started again (a power cut).
        running = [n.id for n in sim.running()]
        for node_id in running:
            sim.crash(node_id)
        for node_id in running:
            sim.restart(node_id)
    elif action.kind == "split":
        sim.split(action.side)
    elif action.kind == "heal":
        sim.heal()
    else:
        sim.log(f"operator: skipped {action}")


def _may_crash(sim: Simulation, scenario: Scenario, node_id: str) -> bool:
    others = [n for n in sim.running() if n.id != node_id]
    if not others:
        return False
    if scenario.allow_unavailable:
        return True
    # Every partition keeps a live copy elsewhere (a copy anywhere counts:
    # kill -9 loses no data, it only makes it unreachable).
    return all(any(p in n.data for n in others) for p in range(sim.partitions))


def settle(sim: Simulation) -> None:
    """The quiet period: the faults stop (the network heals and loses nothing, every crashed node
    restarts); wait for convergence, then check that it holds. The loss rate is restored after."""
    sim.heal()
    for node in sim.crashed():
        sim.restart(node.id)
    # Under steady loss a heartbeat detector keeps suspecting someone now and
    # then; convergence is promised once the faults stop, not during them.
    loss, sim.kernel.loss = sim.kernel.loss, 0.0
    try:
        _await_convergence(sim)
    finally:
        sim.kernel.loss = loss


def _await_convergence(sim: Simulation) -> None:
    deadline_ms = sim.now_ms + QUIET_MS_MAX
    while True:
        sim.run_until(sim.now_ms + GOSSIP_INTERVAL_MS)
        try:
            check_convergence(sim)
            break
        except AssertionError as exc:
            if sim.now_ms >= deadline_ms:
                raise AssertionError(f"no convergence {QUIET_MS_MAX} ms into the quiet period: {exc}") from None
    # Converged once; a claimant decision still in the pipeline must not undo it.
    sim.run_until(sim.now_ms + FAILURE_TIMEOUT_MS)
    check_convergence(sim)
