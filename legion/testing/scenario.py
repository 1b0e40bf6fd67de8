"""Scenarios: timed operator actions generated from a seed, run under the invariant checkers.

Pure. ``generate(seed)`` draws a bounded scenario: 3-8 nodes (ids shuffled, so
a newcomer may well become the claimant), 8-32 partitions, 1-3 replicas, a
loss rate up to 20%, the cluster formed by joins through seeds, then a few
joins, removes, crashes, restarts and network splits that heal. It never asks
to remove the last data holder (the core would refuse anyway), and at run time
a crash is skipped if it would leave a partition with no live copy, unless the
scenario allows that. ``run_checked`` runs the actions, then a quiet period —
the network healed, every crashed node restarted — until the cluster has
converged (``checkers.check_convergence``) within ``QUIET_MS_MAX``, and stays
converged. Any failure is re-raised with the seed, the command that replays
it, the scenario and the tail of the trace.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from legion.limits import FAILURE_TIMEOUT_MS, GOSSIP_INTERVAL_MS
from legion.testing.checkers import InvariantChecker, check_convergence
from legion.testing.sim import Observer, Simulation

NODE_IDS = tuple(f"n{i}" for i in range(1, 9))
QUIET_MS_MAX = 60_000
TRACE_TAIL_LINES = 60
KINDS = ("start", "join", "remove", "crash", "restart", "split", "heal")


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
        action = model.draw(rng, t)
        if action is not None:
            actions.append(action)
    if model.split_until_ms:
        actions.append(Action(model.split_until_ms, "heal"))
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

    def draw(self, rng: random.Random, t: int) -> Action | None:
        running = sorted(self.members - self.crashed)
        choices = []
        if self.waiting:
            choices.append("join")
        if len(self.members) >= 2:
            choices.append("remove")
        if len(running) >= 2:
            choices.append("crash")
        if self.crashed:
            choices.append("restart")
        if len(running) >= 2 and t > self.split_until_ms:
            choices.append("split")
        kind = rng.choice(choices)
        if kind == "join":
            node = self.waiting.pop(0)
            self.members.add(node)
            return Action(t, "join", node)
        if kind == "remove":
            node = rng.choice(sorted(self.members))
            self.members.discard(node)  # the last member is never removed
            self.crashed.discard(node)
            return Action(t, "remove", node)
        if kind == "crash":
            node = rng.choice(running)
            self.crashed.add(node)
            return Action(t, "crash", node)
        if kind == "restart":
            node = rng.choice(sorted(self.crashed))
            self.crashed.discard(node)
            return Action(t, "restart", node)
        side = rng.sample(running, rng.randint(1, len(running) - 1))
        self.split_until_ms = t + rng.randint(1_000, 10_000)
        return _split_then_heal(t, tuple(sorted(side)), self.split_until_ms)


def _split_then_heal(t: int, side: tuple[str, ...], heal_ms: int) -> Action:
    # The heal is appended by generate() once no later split can overlap it.
    return Action(t, "split", side=side)


def run(scenario: Scenario) -> Simulation:
    """Run ``scenario`` under the invariant checkers; AssertionError on the first broken invariant."""
    sim = Simulation(
        scenario.seed,
        partitions=scenario.partitions,
        replicas=scenario.replicas,
        loss=scenario.loss,
        observers=[InvariantChecker(), *scenario.observers],
    )
    sim.scenario = scenario  # type: ignore[attr-defined]
    try:
        for action in scenario.actions:
            sim.run_until(action.at_ms)
            apply(sim, scenario, action)
        settle(sim)
    except AssertionError as exc:
        raise SimulationFailed(sim, scenario, exc) from None
    return sim
