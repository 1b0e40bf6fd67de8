"""A seeded, deterministic simulator of a Legion cluster: time, network, crashes and operators.

Pure: no threads, no asyncio, no wall clock, no sockets. ``Simulation`` is a
cluster of ``SimNode``\\ s (``legion.testing.sim_node``, the runtime's shell
over the same pure core: ``legion.consensus`` decides) on the discrete-event kernel of
``legion.testing.sim_kernel``: a fake clock in milliseconds, an event heap, and
a network that delays (1-50 ms), loses (a fixed rate) and splits messages.
One ``random.Random(seed)`` drives every choice, so a seed replays a run.

The operator acts as a person with the CLI would: ``start`` founds a cluster,
``join`` starts a new node that joins through a seed, ``remove`` asks any live
node (which forwards to the claimant) and, when the answer is "retry shortly"
(503) or none came, asks again a little later, a bounded number of times;
``crash`` is ``kill -9`` (the node keeps its persisted cluster state and its
data, loses everything in memory) and ``restart`` starts it again; ``split``
and ``heal`` cut and mend the network. An action counts as acknowledged only
once its answer carries a committed state that shows it.

``Observer`` hooks see every adopted state, pull and drop as it happens;
``legion.testing.checkers`` holds the invariants, and
``legion.testing.scenario`` the generated scenarios that exercise them::

    from legion.testing.checkers import InvariantChecker
    from legion.testing.scenario import settle

    sim = Simulation(seed=7, partitions=16, replicas=3, loss=0.05, observers=[InvariantChecker()])
    sim.start("n1")
    for node in ("n2", "n3"):
        sim.join(node)
    sim.run_until(2_000)
    sim.crash("n1")
    sim.run_until(8_000)
    settle(sim)  # restarts n1 and waits for convergence (checkers.check_convergence)
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Any

from legion import cluster_state as cs
from legion import consensus as cn
from legion.errors import LegionError
from legion.limits import REQUEST_DEADLINE_MS
from legion.testing.sim_kernel import Call, Endpoint, Kernel, Sleep
from legion.testing.sim_node import SimNode

# A diligent operator retries a remove that got no answer or a 503 ("retry
# shortly": no claimant, or no majority of the voters reachable) a little
# later, for a while: removes are idempotent, so a retry is always safe.
OPERATOR_ATTEMPTS_MAX = 20
OPERATOR_RETRY_INTERVAL_MS = 500
# Bounds a run, so that a livelock fails instead of hanging the test.
EVENTS_PER_SIMULATED_SECOND_MAX = 20_000
TRACE_LINES_MAX = 20_000


class Observer:
    """Hooks the simulation calls as things happen; all no-ops here. A hook may raise AssertionError."""

    def on_adopt(
        self, sim: Simulation, node: SimNode, before: cs.ClusterState | None, after: cs.ClusterState, committed: bool
    ) -> None:
        """``node`` took the committed state ``after`` as its state (``committed``: it decided it, as the leader)."""

    def on_record(self, sim: Simulation, node: SimNode, before: cn.Record, after: cn.Record) -> None:
        """``node``'s consensus record changed (``before`` is what it held in memory, or on disk after a restart)."""

    def on_elected(self, sim: Simulation, node: SimNode, term: int, adopted: cs.ClusterState) -> None:
        """``node`` won ``term`` and adopts ``adopted``."""

    def on_publish(self, sim: Simulation, node: SimNode, state: cs.ClusterState) -> None:
        """The leader ``node`` publishes ``state``."""

    def on_commit(
        self, sim: Simulation, node: SimNode, state: cs.ClusterState, acks: set[str], started_ms: int
    ) -> None:
        """The leader ``node`` is about to commit ``state``, which ``acks`` acknowledged (published at ``started_ms``)."""

    def on_pull(self, sim: Simulation, node: SimNode, partition: int, source: str, copied: bool) -> None:
        """``node`` pulled ``partition`` from ``source``; ``copied`` if the source held a copy."""

    def on_drop(self, sim: Simulation, node: SimNode, partition: int) -> None:
        """``node`` is about to drop its copy of ``partition``."""


class Operator(Endpoint):
    """The person at the CLI: sends removes to any live node and retries on a 5xx or no answer."""

    def __init__(self, sim: Simulation) -> None:
        super().__init__("operator")
        self.sim = sim
        self.in_flight = 0

    def remove(self, node_id: str, via: str | None) -> Any:
        self.in_flight += 1
        try:
            yield from self._remove(node_id, via)
        finally:
            self.in_flight -= 1

    def _remove(self, node_id: str, via: str | None) -> Any:
        sim = self.sim
        for _attempt in range(OPERATOR_ATTEMPTS_MAX):
            entries = [n.id for n in sim.running() if n.state is not None]
            if via is not None:  # the first attempt goes where the caller said
                entries, via = [via], None
            if entries:
                entry = sim.rng.choice(entries)
                try:
                    reply = yield Call(entry, "remove", {"node_id": node_id}, REQUEST_DEADLINE_MS)
                except LegionError as exc:
                    if exc.http_status < 500:
                        sim.log(f"operator: remove {node_id} refused by {entry}: {exc}")
                        return
                    sim.log(f"operator: remove {node_id} via {entry} failed, will retry: {exc}")
                else:
                    self._acknowledged(node_id, entry, cs.from_dict(reply["state"]))
                    return
            yield Sleep(OPERATOR_RETRY_INTERVAL_MS)
        sim.log(f"operator: gave up removing {node_id}")

    def _acknowledged(self, node_id: str, entry: str, state: cs.ClusterState) -> None:
        """A success answer carries the claimant's committed state, which must show the removal."""
        leaving = not state.has_member(node_id) or state.member(node_id).status in (cs.LEAVING, cs.REMOVED)
        assert leaving, (
            f"the removal of {node_id} was acknowledged by {entry} with {describe(state)}, which does not show it"
        )
        self.sim.removes_acknowledged.add(node_id)
        self.sim.log(f"operator: remove {node_id} acknowledged by {entry}: {describe(state)}")


class Simulation:
    """A simulated cluster, its network, its operator, and the observers watching it."""

    def __init__(
        self, seed: int, *, partitions: int, replicas: int, loss: float = 0.0, observers: Iterable[Observer] = ()
    ) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.kernel = Kernel(self.rng, loss)
        self.partitions = partitions
        self.replicas = replicas
        self.nodes: dict[str, SimNode] = {}
        self.operator = Operator(self)
        self.kernel.endpoints["operator"] = self.operator
        self.observers = list(observers)
        self.trace: list[str] = []
        self.joins_acknowledged: set[str] = set()
        self.removes_requested: set[str] = set()
        self.removes_acknowledged: set[str] = set()
        self.gave_up: set[str] = set()
        # The epoch of the committed state that acknowledged each ("join" | "remove", node).
        self.acknowledged_at: dict[tuple[str, str], int] = {}
        # The history: every commit, by epoch and leader (one state per epoch, if consensus holds).
        self.commits: dict[int, dict[str, cs.ClusterState]] = {}
        # Every published state's parent, by (term, epoch): how the checkers follow a chain back.
        self.parents: dict[cn.Version, cn.Version] = {}
        self.leaders: dict[int, str] = {}
        # When the network was last split (None while whole).
        self.split_at_ms: int | None = None
        # (node, point) pairs where a node crashes mid-step, once: "accepted" (a voter persisted a
        # publication, before answering), "quorum" (a leader has its majority, before committing),
        # "committed" (before telling anyone), "replying" (before answering the change's requester).
        self.crash_points: set[tuple[str, str]] = set()

    @property
    def now_ms(self) -> int:
        return self.kernel.now_ms

    def log(self, text: str) -> None:
        if len(self.trace) < TRACE_LINES_MAX:
            self.trace.append(f"{self.now_ms:>8} {text}")

    def run_until(self, until_ms: int) -> None:
        budget = EVENTS_PER_SIMULATED_SECOND_MAX * max(1, until_ms // 1000 + 1)
        self.kernel.run_until(until_ms, budget)

    # --- views -----------------------------------------------------------------

    def running(self) -> list[SimNode]:
        return [n for n in self.nodes.values() if n.running]

    def crashed(self) -> list[SimNode]:
        return [n for n in self.nodes.values() if not n.running]

    def newest_state(self) -> cs.ClusterState | None:
        """The newest state any node holds, crashed or not: what gossip converges on."""
        newest: cs.ClusterState | None = None
        for node in self.nodes.values():
            if node.state is not None and cs.newer(node.state, newest):
                newest = node.state
        return newest

    # --- operator actions ----------------------------------------------------

    def start(self, node_id: str) -> None:
        """Found a new cluster on ``node_id``."""
        self._launch(SimNode(self, node_id, None))

    def join(self, node_id: str, seed_id: str | None = None) -> None:
        """Start a fresh node that joins through ``seed_id`` (default: a random running member)."""
        if seed_id is None:
            members = [n.id for n in self.running() if n.state is not None and n.state.has_member(n.id)]
            seed_id = self.rng.choice(members or sorted(self.nodes))
        self._launch(SimNode(self, node_id, seed_id))

    def remove(self, node_id: str, via: str | None = None) -> None:
        """Ask ``via`` (default: a random running node) to remove ``node_id``; it forwards to the claimant."""
        self.log(f"operator: remove {node_id}" + (f" via {via}" if via else ""))
        self.removes_requested.add(node_id)
        self.kernel.spawn(self.operator, self.operator.remove(node_id, via))

    def crash(self, node_id: str) -> None:
        node = self.nodes[node_id]
        assert node.running, f"{node_id} is not running"
        self.kernel.kill(node)
        before = node.record
        node.forget()
        self.log(f"operator: crash {node_id}")
        if node.record != before:
            self.recorded(node, before, node.record)

    def restart(self, node_id: str) -> None:
        node = self.nodes[node_id]
        assert not node.running, f"{node_id} is running"
        self.gave_up.discard(node_id)
        self.log(f"operator: restart {node_id}")
        self._boot(node)

    def split(self, side: Iterable[str]) -> None:
        cut = frozenset(side)
        self.kernel.split(cut)
        self.split_at_ms = self.now_ms
        self.log(f"network: split {sorted(cut)} from the rest")

    def heal(self) -> None:
        self.kernel.heal()
        self.split_at_ms = None
        self.log("network: healed")

    def _launch(self, node: SimNode) -> None:
        assert node.id not in self.nodes, f"{node.id} already exists"
        self.nodes[node.id] = node
        self.kernel.endpoints[node.id] = node
        self.log(f"operator: start {node.id}" + (f" joining through {node.seed_id}" if node.seed_id else ""))
        self._boot(node)

    def _boot(self, node: SimNode) -> None:
        node.running = True

        def booted(_value: Any, error: LegionError | None) -> None:
            if error is not None:  # the process exits, as Node.start would
                self.log(f"{node.id} gave up starting: {error}")
                self.gave_up.add(node.id)
                self.kernel.kill(node)
                node.forget()

        self.kernel.spawn(node, node.boot(), booted)

    # --- hooks the nodes call ------------------------------------------------

    def joined(self, node: SimNode) -> None:
        """``node`` has started with a state: the claimant's answer, or gossip when the answer was lost.

        Either way it is a committed state that admits the node."""
        state = node.state
        assert state is not None and state.has_member(node.id), (
            f"{node.id}'s join was acknowledged with {describe(state)}, which does not admit it"
        )
        self.joins_acknowledged.add(node.id)
        self.acknowledged_at.setdefault(("join", node.id), state.epoch)
        self.log(f"{node.id} joined")

    def adopted(self, node: SimNode, before: cs.ClusterState | None, after: cs.ClusterState, committed: bool) -> None:
        if committed:
            self.log(f"{node.id} commits {describe(after)}")
            self.commits.setdefault(after.epoch, {})[node.id] = after
        else:
            self.log(f"{node.id} adopts {describe(after)}")
        for observer in self.observers:
            observer.on_adopt(self, node, before, after, committed)

    def recorded(self, node: SimNode, before: cn.Record, after: cn.Record) -> None:
        for observer in self.observers:
            observer.on_record(self, node, before, after)

    def elected(self, node: SimNode, term: int, adopted: cs.ClusterState) -> None:
        self.log(f"{node.id} leads term {term}, adopting {describe(adopted)}")
        for observer in self.observers:
            observer.on_elected(self, node, term, adopted)
        self.leaders.setdefault(term, node.id)

    def published(self, node: SimNode, state: cs.ClusterState) -> None:
        self.parents[cn.version(state)] = (state.parent_term, state.epoch - 1)
        self.log(f"{node.id} publishes {describe(state)}")
        for observer in self.observers:
            observer.on_publish(self, node, state)

    def committing(self, node: SimNode, state: cs.ClusterState, acks: set[str], started_ms: int) -> None:
        for observer in self.observers:
            observer.on_commit(self, node, state, acks, started_ms)

    def pulled(self, node: SimNode, partition: int, source: str, copied: bool) -> None:
        self.log(f"{node.id} pulled p{partition} from {source}" + ("" if copied else " (EMPTY: source had no copy)"))
        for observer in self.observers:
            observer.on_pull(self, node, partition, source, copied)

    def dropping(self, node: SimNode, partition: int) -> None:
        self.log(f"{node.id} drops p{partition}")
        for observer in self.observers:
            observer.on_drop(self, node, partition)


def describe(state: cs.ClusterState | None) -> str:
    """A one-line summary of a state for traces: epoch/committer, members, rebalance progress."""
    if state is None:
        return "no state"
    members = ",".join(f"{m.id}:{m.status}{'(down)' if m.down else ''}" for m in state.members)
    text = f"e{state.epoch}/{state.committed_by} t{state.term} [{members}] voters {','.join(state.voters)}"
    if state.pending is not None:
        gained = cs.gained_slots(state.placement, state.pending)
        text += f" pending: {len(state.ready)}/{len(gained)} ready"
    return text
