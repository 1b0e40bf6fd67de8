"""A seeded, deterministic simulator of Legion's data path: writes, hints, anti-entropy and handoff.

Pure: no threads, no asyncio, no wall clock, no sockets. ``DataSimulation`` is
a cluster of 3-5 ``DataNode``\\ s on the discrete-event kernel of
``legion.testing.sim_kernel`` (fake clock, event heap, generator processes),
whose network here also *duplicates* messages (``DataKernel``), besides
delaying (so reordering), losing and splitting them. One
``random.Random(seed)`` drives every choice, so a seed replays a run.

What is real and what is modelled
---------------------------------
Every decision the core already makes in a pure function is the core's own
call, not a copy: ``keyspace.partition_of``; ``routing.live_nodes``,
``write_plan`` (who gets a write, who counts), ``forward_targets`` (a replica
that knows a newer placement forwards a write to the owners its coordinator
did not know of) and ``read_order`` (where a gaining node pulls from);
``replication.Operation``, ``supersedes`` (last writer wins) and
``write_quorum``; ``cluster_state`` (``add_member`` / ``remove_member`` plan a
move, ``gained_slots`` say what to pull, ``mark_ready`` / ``try_commit`` /
``commit`` finish it, ``owners`` / ``partitions_held`` say what a node keeps)
over ``placement.place``; ``clock.HybridClock`` stamps writes.

Modelled here or in ``legion.testing.data_standins``:

- *sloppy quorum and hinted handoff* — which node keeps a hint for a down owner
  (``data_standins.fallbacks``), and the replay loop: a hint is sent to its
  owner, dropped once the owner acknowledged it, re-aimed at the partition's
  current owners when its owner no longer holds the partition;
- *the anti-entropy hash tree* (``data_standins.tree`` and friends) and the
  exchange: a node picks one of its partitions and one other replica, compares
  trees, fetches the keys of differing buckets and ships each side what the
  other lacks;
- *membership* is an oracle, not the protocol: the ``claimant`` endpoint
  decides joins, leaves and handoff commits at once with the real
  ``cluster_state`` functions, and every node learns each committed state after
  a random lag (the membership simulator, ``sim`` / ``sim_node``, is where
  gossip and claimant election are tested);
- *storage*: a node's replica (key → newest ``Operation``), its hint store and
  its cluster state are durable — they survive ``crash`` (``kill -9``) — while
  its suspicions, its clock and its running processes do not;
- *the failure detector*: a node suspects a peer for ``SUSPECT_MS`` after a
  call to it failed.

``Mutations`` break the model on purpose (a hint dropped before its owner
acknowledged it, anti-entropy shipping one way only, an acknowledgement before
the write is durable) so the tests can show the checkers
(``legion.testing.data_checkers``) catch each one.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Callable

from legion import cluster_state as cs
from legion.clock import HybridClock
from legion.errors import LegionError, NotOwner, Unavailable
from legion.keyspace import partition_of
from legion.placement import place
from legion.primaries import balance_primaries
from legion.replication import Operation, supersedes, write_quorum
from legion.routing import forward_targets, live_nodes, read_order, write_plan
from legion.testing import data_standins as standins
from legion.testing.sim_kernel import Call, Endpoint, Gather, Kernel, Process, Sleep

ENGINE = "kv"
REPLICAS = 3
W = 2
CLUSTER_ID = "data-sim"
PEER_TIMEOUT_MS = 150
CLIENT_TIMEOUT_MS = 1_500
SUSPECT_MS = 400
HINT_INTERVAL_MS = 100
AAE_INTERVAL_MS = 120
HANDOFF_INTERVAL_MS = 100
# Only with Mutations.ack_before_durable: how long an acknowledged write may sit in memory.
FLUSH_INTERVAL_MS = 30
STATE_LAG_MS_MAX = 300
HINT_BATCH_OPS_MAX = 64
TRACE_LINES_MAX = 20_000
EVENTS_PER_SIMULATED_SECOND_MAX = 50_000


@dataclass(frozen=True)
class Mutations:
    """Bugs put in on purpose, to show the checkers catch them. All off: the data path as designed."""

    drop_hint_before_ack: bool = False
    # Anti-entropy moves data from the lower node id of a pair to the higher one only.
    aae_one_direction: bool = False
    ack_before_durable: bool = False
    drop_at_commit: bool = False


class DataObserver:
    """Hooks the simulation calls as things happen; all no-ops here. A hook may raise AssertionError."""

    def on_ack(self, sim: DataSimulation, coordinator: DataNode, op: Operation, holders: frozenset[str]) -> None:
        """``coordinator`` is about to acknowledge ``op``: ``holders`` acknowledged it (replica or hint)."""

    def on_hint_dropped(self, sim: DataSimulation, holder: DataNode, target: str, op: Operation, why: str) -> None:
        """``holder`` dropped its hint of ``op`` for ``target``: ``why`` is "delivered" or "re-aimed"."""

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


class DataNode(Endpoint):
    """One node: a durable replica and hint store, a coordinator, and its hint, anti-entropy and handoff loops."""

    def __init__(self, sim: DataSimulation, node_id: str, state: cs.ClusterState) -> None:
        super().__init__(node_id)
        self.sim = sim
        # Durable: survives crash.
        self.state = state
        self.replica: dict[int, dict[bytes, Operation]] = {}
        self.hints: dict[tuple[str, Operation], None] = {}
        self.changes = 0  # bumped by every write that changes the replica
        # Lost on crash.
        self.unflushed: list[Operation] = []
        self.suspects: dict[str, int] = {}
        self.clock = HybridClock(lambda: sim.now_ms)
        self._handlers: dict[str, Callable[[str, Any], Any]] = {
            "write": self._on_write,
            "apply": self._on_apply,
            "hint": self._on_hint,
            "tree": self._on_tree,
            "segment": self._on_segment,
            "fold": self._on_fold,
        }
        self._hold_partitions()

    def handler(self, kind: str) -> Callable[[str, Any], Any]:
        return self._handlers[kind]

    # --- lifecycle -------------------------------------------------------------

    def boot(self) -> None:
        """Start this incarnation's background loops."""
        kernel = self.sim.kernel
        kernel.spawn(self, self._hint_loop())
        if self.sim.anti_entropy:
            kernel.spawn(self, self._anti_entropy_loop())
        kernel.spawn(self, self._handoff_loop())
        kernel.spawn(self, self._hand_over_loop())
        if self.sim.mutations.ack_before_durable:
            kernel.spawn(self, self._flush_loop())

    def forget(self) -> None:
        """What ``kill -9`` takes: everything in memory."""
        self.unflushed = []
        self.suspects = {}
        self.clock = HybridClock(lambda: self.sim.now_ms)

    def adopt(self, state: cs.ClusterState) -> None:
        """Take a newer committed state; open what it gives this node, drop what it takes away."""
        if state.epoch <= self.state.epoch:
            return
        self.state = state
        self._hold_partitions()

    def _hold_partitions(self) -> None:
        held = set(cs.partitions_held(self.state, self.id))
        for p in sorted(held - set(self.replica)):
            self.replica[p] = {}
        if self.sim.mutations.drop_at_commit:
            for p in self.leaving():
                self._drop(p)

    def leaving(self) -> list[int]:
        """Partitions this node holds a copy of but no longer owns: to hand to their owners, then drop."""
        held = set(cs.partitions_held(self.state, self.id))
        return sorted(p for p in self.replica if p not in held)

    def _drop(self, partition: int) -> None:
        self.sim.dropping(self, partition)
        del self.replica[partition]

    # --- liveness as this node sees it -----------------------------------------

    def live(self) -> set[str]:
        now = self.sim.now_ms
        return live_nodes(self.state, frozenset(n for n, until in self.suspects.items() if until > now))

    def _suspect(self, node_id: str) -> None:
        if node_id != self.id:
            self.suspects[node_id] = self.sim.now_ms + SUSPECT_MS

    def _call(self, dst: str, kind: str, body: Any) -> Process:
        """A call to a peer that feeds the failure detector: a failure suspects it, an answer clears it."""
        try:
            reply = yield Call(dst, kind, body, PEER_TIMEOUT_MS)
        except NotOwner:
            self.suspects.pop(dst, None)
            raise
        except LegionError:
            self._suspect(dst)
            raise
        self.suspects.pop(dst, None)
        return reply

    # --- storage ---------------------------------------------------------------

    def store(self, ops: Iterable[Operation]) -> None:
        """Make ``ops`` durable in the replica, last writer wins; ops of partitions no longer held are ignored."""
        for op in ops:
            held = self.replica.get(op.partition)
            if held is None:
                continue
            current = held.get(op.key)
            if supersedes(op.version, None if current is None else current.version):
                held[op.key] = op
                self.changes += 1

    def holds(self, op: Operation) -> bool:
        """True if this node's durable replica has ``op`` or a write that wins over it."""
        current = self.replica.get(op.partition, {}).get(op.key)
        return current is not None and not supersedes(op.version, current.version)

    def keeps_hint(self, op: Operation) -> bool:
        """True if this node's durable hint store holds ``op`` for some owner."""
        return any(held == op for _, held in self.hints)

    def _held_or_refuse(self, partition: int) -> dict[bytes, Operation]:
        held = self.replica.get(partition)
        if held is None:
            raise NotOwner(f"{self.id} holds no copy of partition {partition}")
        return held

    # --- handlers --------------------------------------------------------------

    def _on_apply(self, src: str, body: dict[str, Any]) -> str:
        ops: list[Operation] = body["ops"]
        for op in ops:
            self._held_or_refuse(op.partition)
        if self.sim.mutations.ack_before_durable:
            self.unflushed.extend(ops)
        else:
            self.store(ops)
        theirs = body.get("epoch")
        if theirs is not None and theirs < self.state.epoch:
            self._forward(ops, self.sim.history.get(theirs))
        return "ok"

    def _on_hint(self, src: str, body: dict[str, Any]) -> str:
        self.hints[(body["target"], body["op"])] = None
        self.sim.stats["hints kept"] += 1
        self.sim.log(f"{self.id} keeps a hint of {_op(body['op'])} for {body['target']}")
        return "ok"

    def _on_tree(self, src: str, body: dict[str, Any]) -> standins.Tree:
        return standins.tree(self._held_or_refuse(body["partition"]).values())

    def _on_segment(self, src: str, body: dict[str, Any]) -> list[Operation]:
        buckets = set(body["buckets"])
        held = self._held_or_refuse(body["partition"])
        return [op for op in held.values() if standins.bucket_of(op.key) in buckets]

    def _on_fold(self, src: str, body: dict[str, Any]) -> list[Operation]:
        return list(self._held_or_refuse(body["partition"]).values())

    def _forward(self, ops: list[Operation], theirs: cs.ClusterState | None) -> None:
        live = self.live()
        for op in ops:
            for target in forward_targets(self.state, theirs, op.partition, live, self.id):
                self.sim.stats["writes forwarded"] += 1
                self.sim.log(f"{self.id} forwards {_op(op)} to {target}")
                self.sim.kernel.spawn(self, self._call(target, "apply", {"ops": [op]}), _ignore)

    # --- coordinating a write --------------------------------------------------

    def _on_write(self, src: str, body: dict[str, Any]) -> Process:
        state = self.state
        partition = partition_of(body["key"], state.partitions)
        live = self.live()
        plan = write_plan(state, partition, live)
        need = write_quorum(W, plan.replicas)
        op = Operation(ENGINE, partition, body["key"], self.clock.now(), self.id, "put", body["value"])
        self.sim.written.add(op)
        spare = list(standins.fallbacks(state, partition, live))
        down = [n for n in state.placement[partition] if n not in live]
        failed: set[str] = set()
        sends = [self._deliver(n, op, state.epoch, spare, failed) for n in plan.counted]
        sends += [self._hint(n, op, spare, failed) for n in down]
        extra = [self._extra(n, op, state.epoch) for n in plan.extra]
        results = yield Gather(tuple(sends + extra))
        # An owner whose own copy failed does not count as a hint keeper either: its hint
        # for another owner and the hint kept for it may end up on it alone.
        holders = frozenset(n for result in results[: len(sends)] for n in result) - failed
        if len(holders) < need:
            self.sim.log(f"{self.id} fails {_op(op)}: {sorted(holders)} of {need} needed")
            raise Unavailable(f"partition {partition}: {len(holders)} of {need} needed acknowledged")
        for observer in self.sim.observers:
            observer.on_ack(self.sim, self, op, holders)
        self.sim.stats["writes acknowledged"] += 1
        self.sim.log(f"{self.id} acks {_op(op)} held by {sorted(holders)}")
        return op

    def _deliver(self, owner: str, op: Operation, epoch: int, spare: list[str], failed: set[str]) -> Process:
        """Send ``op`` to ``owner``; if that fails, leave it as a hint with a fallback. The nodes that took it."""
        try:
            yield from self._call(owner, "apply", {"ops": [op], "epoch": epoch})
            return [owner]
        except LegionError:
            failed.add(owner)
            return (yield from self._hint(owner, op, spare, failed))

    def _hint(self, owner: str, op: Operation, spare: list[str], failed: set[str]) -> Process:
        """Leave ``op`` as a hint for ``owner`` with the first spare node that takes it."""
        while spare:
            keeper = spare.pop(0)
            if keeper == owner or keeper in failed:
                continue
            try:
                yield from self._call(keeper, "hint", {"target": owner, "op": op})
            except LegionError:
                continue
            return [keeper]
        return []

    def _extra(self, node: str, op: Operation, epoch: int) -> Process:
        """A node gaining the partition gets the write too; it does not count towards ``W``."""
        try:
            yield from self._call(node, "apply", {"ops": [op], "epoch": epoch})
        except LegionError:
            pass
        return []

    # --- background loops ------------------------------------------------------

    def _hint_loop(self) -> Process:
        while True:
            yield Sleep(HINT_INTERVAL_MS + self.sim.rng.randrange(HINT_INTERVAL_MS))
            batches: dict[tuple[str, int], list[Operation]] = {}
            for target, op in self.hints:
                batches.setdefault((target, op.partition), []).append(op)
            for (target, _), ops in batches.items():
                yield from self._replay(target, ops[:HINT_BATCH_OPS_MAX])

    def _replay(self, target: str, ops: list[Operation]) -> Process:
        if self.sim.mutations.drop_hint_before_ack:
            for op in ops:
                self._drop_hint(target, op, "delivered")
        try:
            yield from self._call(target, "apply", {"ops": ops})
        except NotOwner:
            self._reaim(target, ops)
            return
        except LegionError:
            return
        for op in ops:
            self._drop_hint(target, op, "delivered")

    def _reaim(self, target: str, ops: list[Operation]) -> None:
        """``target`` no longer holds the partition: aim the hints at its current owners, as this node knows them."""
        owners = cs.owners(self.state, ops[0].partition)
        if target in owners:
            return  # it has not opened the partition yet; try again later
        for op in ops:
            for owner in owners:
                if owner == self.id:
                    self.store([op])
                else:
                    self.hints[(owner, op)] = None
            self._drop_hint(target, op, "re-aimed")

    def _drop_hint(self, target: str, op: Operation, why: str) -> None:
        if self.hints.pop((target, op), "absent") is None:
            self.sim.stats[f"hints {why}"] += 1
            self.sim.log(f"{self.id} drops its hint of {_op(op)} for {target}: {why}")
            for observer in self.sim.observers:
                observer.on_hint_dropped(self.sim, self, target, op, why)

    def _anti_entropy_loop(self) -> Process:
        rng = self.sim.rng
        while True:
            yield Sleep(AAE_INTERVAL_MS + rng.randrange(AAE_INTERVAL_MS))
            state, live = self.state, self.live()
            mine = [p for p in range(state.partitions) if self.id in state.placement[p] and p in self.replica]
            if not mine:
                continue
            partition = rng.choice(mine)
            peers = [n for n in state.placement[partition] if n != self.id and n in live]
            if peers:
                try:
                    yield from self._exchange(rng.choice(peers), partition)
                except LegionError:
                    pass

    def _exchange(self, peer: str, partition: int) -> Process:
        """One anti-entropy round with ``peer`` over ``partition``: each side ends with what the other had newer."""
        theirs = yield from self._call(peer, "tree", {"partition": partition})
        held = self.replica.get(partition)
        if held is None:
            return
        buckets = standins.differing_buckets(standins.tree(held.values()), theirs)
        if not buckets:
            return
        their_ops = yield from self._call(peer, "segment", {"partition": partition, "buckets": buckets})
        take = standins.newer_than(held, their_ops)
        one_way = self.sim.mutations.aae_one_direction
        if one_way and peer > self.id:
            take = []
        self.store(take)
        wanted = set(buckets)
        mine = [op for op in self.replica.get(partition, {}).values() if standins.bucket_of(op.key) in wanted]
        give = standins.newer_than({op.key: op for op in their_ops}, mine)
        self.sim.stats["anti-entropy repairs"] += 1
        self.sim.log(f"{self.id} anti-entropy p{partition} with {peer}: took {len(take)}, gives {len(give)}")
        if give and not (one_way and peer < self.id):
            yield from self._call(peer, "apply", {"ops": give})

    def _handoff_loop(self) -> Process:
        while True:
            yield Sleep(HANDOFF_INTERVAL_MS)
            state = self.state
            wanted = sorted(p for p, n in cs.gained_slots(state.placement, state.pending) - state.ready if n == self.id)
            done = []
            for partition in wanted:
                if (yield from self._pull(partition)):
                    done.append(partition)
            if done:
                try:
                    yield Call("claimant", "handoff-done", {"node": self.id, "partitions": done}, PEER_TIMEOUT_MS)
                except LegionError:
                    pass

    def _pull(self, partition: int) -> Process:
        """Copy ``partition`` from the first live current replica (the fold); the tail arrives as writes."""
        sources = [n for n in read_order(self.state, partition, self.live(), self.id) if n != self.id]
        if not sources:
            return False
        try:
            ops = yield from self._call(sources[0], "fold", {"partition": partition})
        except LegionError:
            return False
        if partition not in self.replica:
            return False
        self.store(ops)
        self.sim.stats["partitions pulled"] += 1
        self.sim.log(f"{self.id} pulled p{partition} from {sources[0]}: {len(ops)} keys")
        return True

    def _hand_over_loop(self) -> Process:
        while True:
            yield Sleep(HANDOFF_INTERVAL_MS)
            for partition in self.leaving():
                yield from self._hand_over(partition)

    def _hand_over(self, partition: int) -> Process:
        """Ship a copy this node no longer owns to each of the partition's owners; drop it once all of
        them acknowledged everything it held (a write that arrived meanwhile waits for the next round)."""
        changes = self.changes
        ops = list(self.replica[partition].values())
        owners = [n for n in cs.owners(self.state, partition) if n != self.id]
        shipped = yield Gather(tuple(self._ship(owner, ops) for owner in owners))
        if all(shipped) and self.changes == changes and partition in self.leaving():
            self.sim.stats["partitions handed over"] += 1
            self.sim.log(f"{self.id} handed p{partition} over to {owners}")
            self._drop(partition)

    def _ship(self, owner: str, ops: list[Operation]) -> Process:
        if not ops:
            return True
        try:
            yield from self._call(owner, "apply", {"ops": ops})
        except LegionError:
            return False
        return True

    def _flush_loop(self) -> Process:
        while True:
            yield Sleep(FLUSH_INTERVAL_MS)
            ops, self.unflushed = self.unflushed, []
            self.store(ops)


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
            body = {"key": rng.choice(keys), "value": f"{name}-{count}".encode()}
            try:
                op = yield Call(rng.choice(entries), "write", body, CLIENT_TIMEOUT_MS)
            except LegionError:
                continue
            sim.acknowledged.append(op)


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

    def join(self, node_id: str) -> None:
        self.stats["joins"] += 1
        self.log(f"operator: join {node_id}")
        self.decide(lambda s: cs.add_member(s, node_id, f"sim://{node_id}"))
        self._launch(node_id)

    def leave(self, node_id: str) -> None:
        self.stats["leaves"] += 1
        self.log(f"operator: leave {node_id}")
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


def _op(op: Operation) -> str:
    return f"{op.key.decode()}={op.body.decode()}@{op.hlc >> 16}.{op.hlc & 0xFFFF}/{op.origin}"


def _ignore(_value: Any, _error: LegionError | None) -> None:
    """A background send's outcome: anything it missed, anti-entropy repairs."""
