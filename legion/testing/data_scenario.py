"""Data-path scenarios: faults and writes generated from a seed, run until healed, then judged.

Pure. ``generate(seed)`` draws a bounded scenario: 3 or 4 nodes (at most 5
with joins), 4 or 8 partitions, N=3, 2-4 writers with W=2 over a handful of
keys (so writes to one key race), a loss rate up to 20% and a duplication
rate up to 10%, and 2-7 faults among crash, restart, split (healed later),
join and remove. ``run`` runs it under ``DataChecker``: the writes stop at
``WRITES_MS``; then the quiet period — network healed and lossless, every
crashed node restarted — lasts until the cluster has converged
(``check_converged``) within ``QUIET_MS_MAX``, and ``check_acknowledged``
judges it. A failure raises ``DataSimulationFailed`` with the seed, the command
that replays it, the scenario and the tail of the trace.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from legion import cluster_state as cs
from legion.testing.data_checkers import DataChecker, check_acknowledged, check_converged
from legion.testing.data_sim import DataObserver, DataSimulation, Mutations
from legion.testing.scenario import Action, failure_report

NODE_IDS = ("n1", "n2", "n3", "n4", "n5")
WRITES_MS = 3_000
QUIET_MS_MAX = 30_000
QUIET_STEP_MS = 250
TRACE_TAIL_LINES = 60
REPLAY = "pytest tests/sim/test_data_path.py --seed {seed}"


@dataclass(frozen=True)
class DataScenario:
    """A cluster, a network, the writers and the faults to run."""

    seed: int
    nodes: tuple[str, ...]
    partitions: int
    loss: float
    duplicate: float
    writers: int
    keys: tuple[bytes, ...]
    actions: tuple[Action, ...]
    observers: tuple[DataObserver, ...] = field(default=(), compare=False)

    def describe(self) -> str:
        head = (
            f"nodes {list(self.nodes)} P={self.partitions} loss={self.loss:.0%} duplicate={self.duplicate:.0%} "
            f"writers={self.writers} keys={len(self.keys)}"
        )
        return "\n".join([head, *(f"  {action}" for action in self.actions)])


def generate(seed: int) -> DataScenario:
    """A random scenario, the same for the same seed."""
    rng = random.Random(f"legion-data-scenario-{seed}")
    initial = rng.choice((3, 3, 4))
    members, waiting = list(NODE_IDS[:initial]), list(NODE_IDS[initial:])
    crashed: set[str] = set()
    actions: list[Action] = []
    split_until_ms = 0
    t = 0
    for _ in range(rng.randint(2, 7)):
        t += rng.randint(50, 600)
        if t >= WRITES_MS:
            break
        running = sorted(set(members) - crashed)
        choices = ["crash"] * (len(running) >= 2) + ["restart"] * bool(crashed) + ["join"] * bool(waiting)
        choices += ["remove"] * (len(members) >= 4) + ["split"] * (t > split_until_ms and len(running) >= 2)
        kind = rng.choice(choices)
        if kind == "split":
            side = tuple(sorted(rng.sample(running, rng.randint(1, len(running) - 1))))
            split_until_ms = t + rng.randint(100, 1_500)
            actions += [Action(t, "split", side=side), Action(split_until_ms, "heal")]
            continue
        node = {"crash": lambda: rng.choice(running), "restart": lambda: rng.choice(sorted(crashed)),
                "join": lambda: waiting.pop(0), "remove": lambda: rng.choice(members)}[kind]()
        if kind == "crash":
            crashed.add(node)
        elif kind == "restart":
            crashed.discard(node)
        elif kind == "join":
            members.append(node)
        else:
            members.remove(node)
        actions.append(Action(t, kind, node))
    return DataScenario(
        seed=seed,
        nodes=tuple(NODE_IDS[:initial]),
        partitions=rng.choice((4, 8)),
        loss=rng.choice((0.0, 0.02, 0.05, 0.1, 0.2)),
        duplicate=rng.choice((0.0, 0.02, 0.1)),
        writers=rng.randint(2, 4),
        keys=tuple(f"k{i}".encode() for i in range(rng.randint(3, 12))),
        actions=tuple(sorted(actions, key=lambda a: a.at_ms)),
    )


class DataSimulationFailed(AssertionError):
    """An invariant broke: the message carries the seed, how to replay, the scenario and the trace tail."""

    def __init__(self, message: str, sim: DataSimulation, error: AssertionError) -> None:
        super().__init__(message)
        self.sim = sim
        self.error = error


def run(
    scenario: DataScenario,
    mutations: Mutations = Mutations(),
    replay: str | None = None,
    trace_lines: int | None = TRACE_TAIL_LINES,
) -> DataSimulation:
    """Run ``scenario``, heal, wait for convergence, check; ``DataSimulationFailed`` on any broken invariant."""
    sim = DataSimulation(
        scenario.seed,
        nodes=scenario.nodes,
        partitions=scenario.partitions,
        loss=scenario.loss,
        duplicate=scenario.duplicate,
        mutations=mutations,
        observers=[DataChecker(), *scenario.observers],
    )
    try:
        sim.write(scenario.writers, WRITES_MS, scenario.keys)
        for action in scenario.actions:
            sim.run_until(action.at_ms)
            apply(sim, action)
        sim.run_until(WRITES_MS)
        settle(sim)
        check_acknowledged(sim)
    except AssertionError as exc:
        replay = replay or REPLAY.format(seed=sim.seed)
        raise DataSimulationFailed(failure_report(sim, exc, replay, scenario, trace_lines), sim, exc) from exc
    return sim


def apply(sim: DataSimulation, action: Action) -> None:
    """Carry out one fault, skipping (and logging) one that no longer makes sense."""
    node = sim.nodes.get(action.node)
    if action.kind == "crash" and node is not None and node.running:
        sim.crash(action.node)
    elif action.kind == "restart" and node is not None and not node.running:
        sim.restart(action.node)
    elif action.kind == "split":
        sim.split(action.side)
    elif action.kind == "heal":
        sim.heal()
    elif action.kind == "join" and node is None:
        sim.join(action.node)
    elif action.kind == "remove" and node is not None and _may_remove(sim, action.node):
        sim.remove(action.node)
    else:
        sim.log(f"operator: skipped {action}")


def _may_remove(sim: DataSimulation, node_id: str) -> bool:
    """The operator keeps N=3 data holders (so W=2 stays possible)."""
    return len([n for n in cs.data_holders(sim.committed) if n != node_id]) >= 3


def settle(sim: DataSimulation) -> None:
    """The quiet period: the network heals and loses nothing, crashed nodes restart; wait for convergence."""
    sim.heal()
    sim.kernel.loss = 0.0
    for node in list(sim.nodes.values()):
        if not node.running:
            sim.restart(node.id)
    deadline_ms = sim.now_ms + QUIET_MS_MAX
    while True:
        sim.run_until(sim.now_ms + QUIET_STEP_MS)
        try:
            check_converged(sim)
            return
        except AssertionError as exc:
            if sim.now_ms >= deadline_ms:
                raise AssertionError(f"no convergence {QUIET_MS_MAX} ms into the quiet period: {exc}") from None
