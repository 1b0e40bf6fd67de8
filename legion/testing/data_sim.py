"""A seeded, deterministic simulator of Legion's data path: writes, hints, anti-entropy and handoff.

Pure: no threads, no asyncio, no wall clock, no sockets. ``DataSimulation`` is
a cluster of 3-5 ``DataNode``\\ s (``legion.testing.data_node``) on the
discrete-event kernel of ``legion.testing.sim_kernel`` (fake clock, event
heap, generator processes), whose network here also *duplicates* messages
(``DataKernel``), besides delaying (so reordering), losing and splitting them.
One ``random.Random(seed)`` drives every choice, so a seed replays a run.
Clients write with W=2 to N=3 replicas and record what was acknowledged;
``legion.testing.data_checkers`` judges the run, ``legion.testing.data_scenario``
generates runs from a seed.

What is real and what is modelled
---------------------------------
Real — every decision the core makes in a pure function is the core's own
call, not a copy:

- routing and quorums: ``keyspace.partition_of``; ``routing.live_nodes``,
  ``write_plan`` (who gets a write, who counts, and for each down owner the
  node keeping its hint), ``forward_targets`` (a replica that knows a newer
  placement forwards a write to the owners its coordinator did not know of)
  and ``read_order`` (where a gaining node pulls from); ``replication``'s
  ``Operation``, ``supersedes`` (last writer wins) and ``write_quorum``;
  ``clock.HybridClock`` stamps writes and advances on what a replica applies;
- sloppy quorum and hinted handoff, ``legion.hints``: fallbacks and which hint
  counts towards W (through ``write_plan``), ``hint_after_failure``,
  ``replay_owners`` (whom to replay to, whose hints are orphaned),
  ``readdress`` (a hint follows its partition to the current owners),
  ``replay_chunks`` and ``settle_replay`` (drop only what the owner
  acknowledged); ``write_batch.is_owner_failure`` (which failure earns a hint);
- anti-entropy, ``legion.hash_tree``: each replica keeps a ``HashTree`` per
  partition, updated write by write, over the default ``Engine.versions``
  (``ops_version``); an exchange walks it with ``root_of``,
  ``differing_indexes`` and ``differing_keys`` in three round trips, looks at
  the differing items again a moment later, and ships the keys that still
  differ both ways — each pair compared by its lower id, as the runtime does;
- membership and handoff, ``cluster_state``: ``add_member`` / ``remove_member``
  plan a move over ``placement.place``, ``gained_slots`` say what to pull,
  ``mark_ready`` / ``try_commit`` / ``commit`` finish it, ``owners`` /
  ``partitions_held`` say what a node keeps and accepts writes for.

Modelled — the plumbing the runtime does with I/O:

- *membership* is an oracle, not the protocol: the ``claimant`` endpoint
  decides joins, leaves and handoff commits at once, and every node learns
  each committed state after a random lag (gossip and claimant election are
  the membership simulator's, ``sim`` / ``sim_node``);
- *storage*: a node's replica (key → newest ``Operation``), hint store and
  cluster state are durable — they survive ``crash`` (``kill -9``) — and
  its suspicions, clock, hash trees and running processes are not;
- *the failure detector*: a node suspects a peer for ``SUSPECT_MS`` after a
  call to it failed as ``is_owner_failure`` says;
- the loops (hint replay, one anti-entropy exchange with a random replica of a
  random partition, pulling gained partitions) run on fixed short intervals.

Not modelled: reads (read quorum, read repair, the catch-up that keeps a
restarted owner from serving reads until its hints arrived), snapshot files
(a partition moves as a fold of its operations), engines other than one
last-writer-wins key/value map, and disks that fill.

Two behaviours were the runtime's way when the simulator found they break a
rule; the runtime has been fixed since, each is a ``Mutations`` flag that
restores the old way, and a test shows the checkers catch it:

- *hand over before dropping* (``drop_at_commit`` was the runtime's way, fixed
  since: ``AntiEntropy.hand_over``): a node that no longer owns a partition
  ships its copy to the partition's owners and drops it once every one of them
  took it all. Dropping at the commit loses the copy a coordinator with an
  older state still counted towards W;
- *readdress orphaned hints* (``drop_orphaned_hints`` was the runtime's way, fixed since): a
  hint for an owner that was removed (``hints.replay_owners`` names it) goes to
  the partition's current owners (``hints.readdress``), like a hint whose owner
  no longer owns the partition. Dropped, it can take with it a copy that
  counted towards W: a coordinator that has not yet heard of the removal picks
  a fallback for the removed owner, the fallback (which has) drops the hint at
  once, and the write is acknowledged held by one node
  (``tests/sim/test_data_path.py::test_a_hint_for_a_removed_owner_keeps_its_copy``).

The other ``Mutations`` are bugs put in on purpose (a hint dropped before its
owner acknowledged it, a hint never readdressed, anti-entropy moving data one
way only, an acknowledgement before the write is durable).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from legion import cluster_state as cs
from legion.errors import LegionError
from legion.placement import place
from legion.primaries import balance_primaries
from legion.replication import Operation
from legion.testing.data_node import DataNode
from legion.testing.sim_kernel import Call, Endpoint, Kernel, Process, Sleep

REPLICAS = 3
CLUSTER_ID = "data-sim"
CLIENT_TIMEOUT_MS = 1_500
STATE_LAG_MS_MAX = 300
TRACE_LINES_MAX = 20_000
EVENTS_PER_SIMULATED_SECOND_MAX = 50_000


@dataclass(frozen=True)
class Mutations:
    """Changes that break a rule of the data path, to show the checkers catch them. All off: as designed.

    ``drop_at_commit`` and ``drop_orphaned_hints`` are what the runtime did before it was fixed (module docstring)."""

    drop_hint_before_ack: bool = False
    # An anti-entropy exchange pushes what its peer lacks but never pulls what it lacks itself.
    aae_one_direction: bool = False
    ack_before_durable: bool = False
    drop_at_commit: bool = False
    # A hint stays addressed to its first owner after the partition moved away from it.
    no_readdress: bool = False
    drop_orphaned_hints: bool = False


class DataObserver:
    """Hooks the simulation calls as things happen; all no-ops here. A hook may raise AssertionError."""

    def on_ack(self, sim: DataSimulation, coordinator: DataNode, op: Operation, holders: frozenset[str]) -> None:
        """``coordinator`` is about to acknowledge ``op``: ``holders`` acknowledged it (replica or hint)."""

    def on_hint_dropped(self, sim: DataSimulation, holder: DataNode, target: str, op: Operation, why: str) -> None:
        """``holder`` dropped its hint of ``op`` for ``target``: ``why`` is "delivered", "readdressed" or "orphaned"."""

    def on_drop(self, sim: DataSimulation, node: DataNode, partition: int) -> None:
        """``node`` is about to drop its copy of ``partition`` (it no longer owns it)."""


class DataKernel(Kernel):
    """The simulator kernel with one more network fault: each message is delivered twice with ``duplicate`` odds."""

    def __init__(self, rng: random.Random, loss: float, duplicate: float, delay_ms_max: int) -> None:
        super().__init__(rng, loss, 1, delay_ms_max)
        assert 0.0 <= duplicate < 1.0
        self.duplicate = duplicate
        self.duplicated = 0

    def _transmit(self, src: str, dst: str, callback: Callable[..., None], *args: Any) -> None:
        super()._transmit(src, dst, callback, *args)
        if self.duplicate and self.rng.random() < self.duplicate:
            self.duplicated += 1
            super()._transmit(src, dst, callback, *args)


class Claimant(Endpoint):
    """The membership oracle: decides joins, leaves and handoff commits with the real ``cluster_state`` functions."""

    def __init__(self, sim: DataSimulation) -> None:
        super().__init__("claimant")
        self.sim = sim

    def handler(self, kind: str) -> Callable[[str, Any], Any]:
        assert kind == "handoff-done", kind
        return self._on_handoff_done

    def _on_handoff_done(self, src: str, body: dict[str, Any]) -> str:
        self.sim.log(f"claimant: {body['node']} ready with {body['partitions']}")
        self.sim.decide(lambda s: cs.try_commit(cs.mark_ready(s, body["node"], body["partitions"])))
        return "ok"


class Client(Endpoint):
    """Writers: each writes random keys through random live members and records what was acknowledged."""

    def __init__(self, sim: DataSimulation) -> None:
        super().__init__("client")
        self.sim = sim

    def writer(self, name: str, until_ms: int, keys: tuple[bytes, ...]) -> Process:
        sim, rng = self.sim, self.sim.rng
        count = 0
        while True:
            yield Sleep(rng.randint(5, 60))
            if sim.now_ms >= until_ms:
                return
            entries = [n.id for n in sim.running() if not sim.removed(n.id)]
            if not entries:
                continue
            count += 1
            yield from self.write_once(rng.choice(entries), rng.choice(keys), f"{name}-{count}".encode())

    def write_once(self, coordinator: str, key: bytes, value: bytes) -> Process:
        """One write through ``coordinator``; recorded if it was acknowledged."""
        try:
            op = yield Call(coordinator, "write", {"key": key, "value": value}, CLIENT_TIMEOUT_MS)
        except LegionError:
            return
        self.sim.acknowledged.append(op)


class DataSimulation:
    """A simulated cluster's data path: nodes, network, the membership oracle, writers and observers."""

    def __init__(
        self,
        seed: int,
        *,
        nodes: Iterable[str],
        partitions: int,
        loss: float = 0.0,
        duplicate: float = 0.0,
        delay_ms_max: int = 20,
        mutations: Mutations = Mutations(),
        observers: Iterable[DataObserver] = (),
        anti_entropy: bool = True,
    ) -> None:
        self.seed = seed
        # Off only to show that another path (hints) repairs a replica on its own.
        self.anti_entropy = anti_entropy
        self.rng = random.Random(seed)
        self.kernel = DataKernel(self.rng, loss, duplicate, delay_ms_max)
        self.mutations = mutations
        self.observers = list(observers)
        self.trace: list[str] = []
        self.stats: Counter[str] = Counter()
        self.written: set[Operation] = set()
        # What coordinators acknowledged, and what of that reached the client (a reply may be lost).
        self.acks: set[Operation] = set()
        self.acknowledged: list[Operation] = []
        ids = sorted(nodes)
        members = tuple(cs.Member(n, f"sim://{n}", cs.UP) for n in ids)
        placement = balance_primaries(place(None, ids, partitions, REPLICAS))
        self.committed = cs.ClusterState(CLUSTER_ID, partitions, REPLICAS, 1, "claimant", members, placement)
        self.history: dict[int, cs.ClusterState] = {1: self.committed}
        self.nodes: dict[str, DataNode] = {}
        for endpoint in (Claimant(self), Client(self)):
            self.kernel.endpoints[endpoint.id] = endpoint
        for node_id in ids:
            self._launch(node_id)

    @property
    def now_ms(self) -> int:
        return self.kernel.now_ms

    def log(self, text: str) -> None:
        if len(self.trace) < TRACE_LINES_MAX:
            self.trace.append(f"{self.now_ms:>7} {text}")

    def run_until(self, until_ms: int) -> None:
        self.kernel.run_until(until_ms, EVENTS_PER_SIMULATED_SECOND_MAX * (until_ms // 1000 + 1))

    def running(self) -> list[DataNode]:
        return [n for n in self.nodes.values() if n.running]

    def removed(self, node_id: str) -> bool:
        return not self.committed.has_member(node_id) or self.committed.member(node_id).status == cs.REMOVED

    # --- what the operator and the clients do ----------------------------------------

    def write(self, writers: int, until_ms: int, keys: tuple[bytes, ...]) -> None:
        client = self.kernel.endpoints["client"]
        assert isinstance(client, Client)
        for i in range(writers):
            self.kernel.spawn(client, client.writer(f"w{i}", until_ms, keys))

    def write_through(self, coordinator: str, key: bytes, value: bytes) -> None:
        """One client write through ``coordinator``, now."""
        client = self.kernel.endpoints["client"]
        assert isinstance(client, Client)
        self.kernel.spawn(client, client.write_once(coordinator, key, value))

    def join(self, node_id: str) -> None:
        self.stats["joins"] += 1
        self.log(f"operator: join {node_id}")
        self.decide(lambda s: cs.add_member(s, node_id, f"sim://{node_id}"))
        self._launch(node_id)

    def remove(self, node_id: str) -> None:
        """``remove-node``: the node leaves once its partitions have moved."""
        self.stats["removes"] += 1
        self.log(f"operator: remove {node_id}")
        self.decide(lambda s: cs.remove_member(s, node_id))

    def crash(self, node_id: str) -> None:
        node = self.nodes[node_id]
        self.kernel.kill(node)
        node.forget()
        self.stats["crashes"] += 1
        self.log(f"operator: crash {node_id}")

    def restart(self, node_id: str) -> None:
        node = self.nodes[node_id]
        node.running = True
        node.adopt(self.committed)  # the first gossip round of the restarted node
        self.log(f"operator: restart {node_id}")
        node.boot()

    def split(self, side: Iterable[str]) -> None:
        cut = frozenset(side)
        self.kernel.split(cut)
        self.stats["splits"] += 1
        self.log(f"network: split {sorted(cut)} from the rest")

    def heal(self) -> None:
        self.kernel.heal()
        self.log("network: healed")

    # --- membership, as the oracle decides it ----------------------------------------

    def decide(self, change: Callable[[cs.ClusterState], cs.ClusterState]) -> None:
        """Commit ``change`` of the newest state (if it changes anything); nodes learn it after a lag."""
        new = cs.commit(self.committed, change(self.committed), "claimant")
        if new is self.committed:
            return
        self.committed = self.history[new.epoch] = new
        self.log(f"claimant: commits {describe(new)}")
        for node in self.nodes.values():
            lag = self.rng.randint(0, STATE_LAG_MS_MAX)
            self.kernel.at(self.now_ms + lag, self._learn, node, node.incarnation, new)

    def _learn(self, node: DataNode, incarnation: int, state: cs.ClusterState) -> None:
        if node.running and node.incarnation == incarnation:
            node.adopt(state)

    def _launch(self, node_id: str) -> None:
        node = DataNode(self, node_id, self.committed)
        self.nodes[node_id] = node
        self.kernel.endpoints[node_id] = node
        node.boot()

    def dropping(self, node: DataNode, partition: int) -> None:
        self.log(f"{node.id} drops p{partition}")
        for observer in self.observers:
            observer.on_drop(self, node, partition)


def describe(state: cs.ClusterState) -> str:
    members = ",".join(f"{m.id}:{m.status}" for m in state.members)
    pending = "" if state.pending is None else f" pending {len(state.ready)}/{len(cs.gained_slots(state.placement, state.pending))} ready"
    return f"e{state.epoch} [{members}]{pending}"
