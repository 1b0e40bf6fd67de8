"""One simulated node of the data-path simulator: replica, hint store, coordinator and background loops.

Pure: runs as generator processes on ``legion.testing.sim_kernel``; no I/O.
Each step is the core's own decision where the core has one in a pure
function — ``routing.write_plan`` (with its sloppy-quorum ``hinted`` pairs and
``quorum`` from ``legion.hints``), ``hints.hint_after_failure``,
``replay_owners``, ``readdress``, ``replay_chunks``, ``settle_replay``,
``routing.forward_targets`` and ``read_order``, ``replication.supersedes`` and
``write_quorum``, ``cluster_state.owners`` / ``partitions_held`` /
``gained_slots``, ``hash_tree.HashTree`` and its exchange functions, and
``clock.HybridClock``. What is left here is the runtime's plumbing, modelled
(``legion.testing.data_sim`` lists what is real and what is not).

Durable (kept across ``crash``): the replica (key → newest ``Operation`` per
partition), the hint store, the cluster state. Lost on crash: suspicions,
the clock, operations acknowledged but not yet durable (only with
``Mutations.ack_before_durable``), the hash trees (rebuilt from the replica on
restart, as the runtime rebuilds them), and every running process.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from legion import cluster_state as cs
from legion import hash_tree
from legion.clock import HybridClock
from legion.errors import LegionError, NotOwner, Unavailable
from legion.hints import hint_after_failure, readdress, replay_chunks, replay_owners, settle_replay
from legion.keyspace import partition_of
from legion.limits import PEER_BATCH_BYTES_MAX
from legion.replication import Operation, supersedes, write_quorum
from legion.routing import forward_targets, live_nodes, read_order, write_plan
from legion.testing.sim_kernel import Call, Endpoint, Gather, Process, Sleep
from legion.write_batch import is_owner_failure, op_wire_bytes

if TYPE_CHECKING:
    from legion.testing.data_sim import DataSimulation

ENGINE = "kv"
W = 2
PEER_TIMEOUT_MS = 150
SUSPECT_MS = 400
HINT_INTERVAL_MS = 100
AAE_INTERVAL_MS = 120
# The runtime's ANTI_ENTROPY_SETTLE_MS, scaled to the simulated network's delays.
AAE_SETTLE_MS = 50
HANDOFF_INTERVAL_MS = 100
# Only with Mutations.ack_before_durable: how long an acknowledged write may sit in memory.
FLUSH_INTERVAL_MS = 30
HINT_CHUNK_OPS_MAX = 16
# The hash tree's shape: smaller than the runtime's default (the simulated partitions hold a
# handful of keys, and a run builds thousands of trees), the same code.
TREE_SEGMENTS = 64
TREE_FANOUT = 8


class DataNode(Endpoint):
    """One node: a durable replica and hint store, a coordinator, and its hint, anti-entropy and handoff loops."""

    def __init__(self, sim: DataSimulation, node_id: str, state: cs.ClusterState) -> None:
        super().__init__(node_id)
        self.sim = sim
        # Durable: survives crash.
        self.state = state
        self.replica: dict[int, dict[bytes, Operation]] = {}
        self.hints: dict[tuple[str, Operation], None] = {}
        # Lost on crash.
        self.trees: dict[int, hash_tree.HashTree] = {}
        self.unflushed: list[Operation] = []
        self.suspects: dict[str, int] = {}
        self.clock = HybridClock(lambda: sim.now_ms)
        self._handlers: dict[str, Callable[[str, Any], Any]] = {
            "write": self._on_write,
            "apply": self._on_apply,
            "hint": self._on_hint,
            "buckets": self._on_buckets,
            "segments": self._on_segments,
            "items": self._on_items,
            "fold": self._on_fold,
        }
        self._hold_partitions()

    def handler(self, kind: str) -> Callable[[str, Any], Any]:
        return self._handlers[kind]

    # --- lifecycle -------------------------------------------------------------

    def boot(self) -> None:
        """Start this incarnation's background loops."""
        kernel, sim = self.sim.kernel, self.sim
        kernel.spawn(self, self._hint_loop())
        if sim.anti_entropy:
            kernel.spawn(self, self._anti_entropy_loop())
        kernel.spawn(self, self._handoff_loop())
        if sim.mutations.ack_before_durable:
            kernel.spawn(self, self._flush_loop())

    def forget(self) -> None:
        """What ``kill -9`` takes: everything in memory."""
        self.unflushed = []
        self.suspects = {}
        self.trees = {}
        self.clock = HybridClock(lambda: self.sim.now_ms)

    def adopt(self, state: cs.ClusterState) -> None:
        """Take a newer committed state; open what it gives this node."""
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
        self.trees.pop(partition, None)

    # --- liveness as this node sees it -----------------------------------------

    def live(self) -> set[str]:
        now = self.sim.now_ms
        return live_nodes(self.state, frozenset(n for n, until in self.suspects.items() if until > now))

    def _call(self, dst: str, kind: str, body: Any) -> Process:
        """A call to a peer that feeds the failure detector: a failure suspects it, an answer clears it."""
        try:
            reply = yield Call(dst, kind, body, PEER_TIMEOUT_MS)
        except LegionError as exc:
            if dst != self.id and is_owner_failure(exc):
                self.suspects[dst] = self.sim.now_ms + SUSPECT_MS
            raise
        self.suspects.pop(dst, None)
        return reply

    # --- storage ---------------------------------------------------------------

    def store(self, ops: Iterable[Operation]) -> None:
        """Make ``ops`` durable in the replica, last writer wins; ops of partitions not held are ignored."""
        for op in ops:
            held = self.replica.get(op.partition)
            if held is None:
                continue
            current = held.get(op.key)
            if supersedes(op.version, None if current is None else current.version):
                held[op.key] = op
                self.tree(op.partition).set(op.key, _version(op))

    def tree(self, partition: int) -> hash_tree.HashTree:
        """The partition's hash tree, kept current by ``store``; built from the replica after a restart."""
        tree = self.trees.get(partition)
        if tree is None:
            items = ((key, _version(op)) for key, op in self.replica[partition].items())
            tree = self.trees[partition] = hash_tree.HashTree.build(items, TREE_SEGMENTS, TREE_FANOUT)
        return tree

    def holds(self, op: Operation) -> bool:
        """True if this node's durable replica has ``op`` or a write that wins over it."""
        current = self.replica.get(op.partition, {}).get(op.key)
        return current is not None and not supersedes(op.version, current.version)

    def keeps_hint(self, op: Operation) -> bool:
        """True if this node's durable hint store holds ``op`` for some owner."""
        return any(held == op for _, held in self.hints)

    def keep_hint(self, owner: str, op: Operation) -> None:
        self.hints[(owner, op)] = None
        self.sim.stats["hints kept"] += 1
        self.sim.log(f"{self.id} keeps a hint of {_op(op)} for {owner}")

    def _owned(self, partition: int) -> dict[bytes, Operation]:
        """The replica of a partition this node owns (``cluster_state.owners``), else NotOwner, as the runtime checks."""
        held = self.replica.get(partition)
        if held is None or self.id not in cs.owners(self.state, partition):
            raise NotOwner(f"{self.id} holds no replica of partition {partition}")
        return held

    # --- handlers --------------------------------------------------------------

    def _on_apply(self, src: str, body: dict[str, Any]) -> list[int]:
        """Store what this node owns; the positions of the refused operations (the runtime's ``accept_ops``)."""
        ops: list[Operation] = body["ops"]
        refused, accepted = [], []
        for i, op in enumerate(ops):
            try:
                self._owned(op.partition)
                accepted.append(op)
            except NotOwner:
                refused.append(i)
        if accepted:
            self.clock.advance_to(max(op.hlc for op in accepted))
            if self.sim.mutations.ack_before_durable:
                self.unflushed.extend(accepted)
            else:
                self.store(accepted)
        theirs = body.get("epoch")
        if theirs is not None and theirs < self.state.epoch:
            self._forward(accepted, self.sim.history.get(theirs))
        return refused

    def _on_hint(self, src: str, body: dict[str, Any]) -> str:
        self.keep_hint(body["owner"], body["op"])
        return "ok"

    def _on_buckets(self, src: str, body: dict[str, Any]) -> list[int]:
        self._owned(body["partition"])
        return self.tree(body["partition"]).bucket_hashes()

    def _on_segments(self, src: str, body: dict[str, Any]) -> dict[int, int]:
        self._owned(body["partition"])
        return self.tree(body["partition"]).segment_hashes(body["buckets"])

    def _on_items(self, src: str, body: dict[str, Any]) -> list[Operation]:
        """The operations of the keys in ``segments``: the items and, in the same answer, what they are."""
        held = self._owned(body["partition"])
        return [held[key] for key in sorted(self.tree(body["partition"]).items_in(body["segments"]))]

    def _on_fold(self, src: str, body: dict[str, Any]) -> list[Operation]:
        return list(self._owned(body["partition"]).values())

    def _forward(self, ops: list[Operation], theirs: cs.ClusterState | None) -> None:
        live = self.live()
        for op in ops:
            for target in forward_targets(self.state, theirs, op.partition, live, self.id):
                self.sim.stats["writes forwarded"] += 1
                self.sim.log(f"{self.id} forwards {_op(op)} to {target}")
                self.sim.kernel.spawn(self, self._send_or_hint(target, op, None), _ignore)

    # --- coordinating a write (the runtime's Coordinator.write) -------------------

    def _on_write(self, src: str, body: dict[str, Any]) -> Process:
        state = self.state
        partition = partition_of(body["key"], state.partitions)
        plan = write_plan(state, partition, self.live(), self.id)
        need = write_quorum(W, plan.replicas)
        if len(plan.quorum) < need:
            raise Unavailable(f"partition {partition}: {len(plan.quorum)} of {need} needed can take the write")
        op = Operation(ENGINE, partition, body["key"], self.clock.now(), self.id, "put", body["value"])
        self.sim.written.add(op)
        counted = list(plan.counted)
        sends = [self._send_or_hint(n, op, state.epoch) for n in plan.counted]
        others = []
        for owner, holder in plan.hinted:
            if holder in plan.counted_holders and holder not in counted:
                counted.append(holder)
                sends.append(self._keep_hint_on(holder, owner, op))
            else:
                others.append(self._keep_hint_on(holder, owner, op))
        others += [self._send_or_hint(n, op, state.epoch) for n in plan.extra]
        results = yield Gather(tuple(sends + others))
        acks = frozenset(n for n, ok in zip(counted, results) if ok)
        if len(acks) < need:
            self.sim.log(f"{self.id} fails {_op(op)}: {sorted(acks)} of {need} needed")
            raise Unavailable(f"partition {partition}: only {len(acks)} of {need} required acknowledged")
        for observer in self.sim.observers:
            observer.on_ack(self.sim, self, op, acks)
        self.sim.acks.add(op)
        self.sim.stats["writes acknowledged"] += 1
        self.sim.log(f"{self.id} acks {_op(op)} held by {sorted(acks)}")
        return op

    def _send_or_hint(self, node: str, op: Operation, epoch: int | None) -> Process:
        """Send ``op`` to an owner; when the owner failed, keep it as a hint (``hint_after_failure``). Took it?"""
        if node == self.id:  # this node's own log, not the network
            return not self._on_apply(self.id, {"ops": [op], "epoch": epoch})
        try:
            refused = yield from self._call(node, "apply", {"ops": [op], "epoch": epoch})
        except LegionError as exc:
            if node != self.id and is_owner_failure(exc):
                holder = hint_after_failure(self.id)
                yield from self._keep_hint_on(holder, node, op)
            return False
        return not refused

    def _keep_hint_on(self, holder: str, owner: str, op: Operation) -> Process:
        """Have ``holder`` durably keep ``op`` as a hint for ``owner``. Did it?"""
        if holder == self.id:
            self.keep_hint(owner, op)
            return True
        try:
            yield from self._call(holder, "hint", {"owner": owner, "op": op})
        except LegionError:
            return False
        return True

    # --- hinted handoff (the runtime's HintedHandoff replay) ----------------------

    def _hint_loop(self) -> Process:
        while True:
            yield Sleep(HINT_INTERVAL_MS + self.sim.rng.randrange(HINT_INTERVAL_MS))
            pending = Counter(owner for owner, _ in self.hints)
            members = {m.id: m.status for m in self.state.members}
            replay, orphaned = replay_owners(pending, self.live(), members, self.id)
            for owner in orphaned:
                ops = [op for o, op in self.hints if o == owner]
                if self.sim.mutations.drop_orphaned_hints:
                    for op in ops:
                        self._drop_hint(owner, op, "orphaned")
                else:
                    self._readdress(owner, ops)
            for owner in replay:
                ops = self._readdress(owner, [op for o, op in self.hints if o == owner])
                sizes = [op_wire_bytes(op) for op in ops]
                for chunk in replay_chunks(sizes, ops_max=HINT_CHUNK_OPS_MAX, bytes_max=PEER_BATCH_BYTES_MAX):
                    if not (yield from self._replay(owner, ops[chunk.start : chunk.stop])):
                        break

    def _readdress(self, owner: str, ops: list[Operation]) -> list[Operation]:
        """Hints whose partition ``owner`` no longer owns go to the partition's owners now (``hints.readdress``):
        kept for them first, then dropped. The hints that stay ``owner``'s."""
        if self.sim.mutations.no_readdress:
            return ops
        staying = []
        for op in ops:
            targets = readdress(owner, cs.owners(self.state, op.partition))
            if targets == (owner,):
                staying.append(op)
                continue
            for target in targets:
                self.hints[(target, op)] = None
            self._drop_hint(owner, op, "readdressed")
        return staying

    def _replay(self, owner: str, ops: list[Operation]) -> Process:
        """Send one chunk of hints; drop what the owner acknowledged. False if the owner did not answer."""
        if self.sim.mutations.drop_hint_before_ack:
            for op in ops:
                self._drop_hint(owner, op, "delivered")
        refused: list[int] = []
        failed = False
        try:
            if owner == self.id:  # a hint readdressed to this node: its own log
                refused = self._on_apply(self.id, {"ops": ops})
            else:
                refused = yield from self._call(owner, "apply", {"ops": ops})
        except LegionError:
            failed = True
        drop, _keep = settle_replay(list(range(len(ops))), set(refused), failed)
        for i in drop:
            self._drop_hint(owner, ops[i], "delivered")
        return not failed

    def _drop_hint(self, owner: str, op: Operation, why: str) -> None:
        if self.hints.pop((owner, op), "absent") is None:
            self.sim.stats[f"hints {why}"] += 1
            self.sim.log(f"{self.id} drops its hint of {_op(op)} for {owner}: {why}")
            for observer in self.sim.observers:
                observer.on_hint_dropped(self.sim, self, owner, op, why)

    # --- active anti-entropy -----------------------------------------------------

    def _anti_entropy_loop(self) -> Process:
        """Like the runtime's rounds: each pair of replicas is compared by its lower id, partition by partition."""
        rng = self.sim.rng
        while True:
            yield Sleep(AAE_INTERVAL_MS + rng.randrange(AAE_INTERVAL_MS))
            state, live = self.state, self.live()
            mine = [p for p in range(state.partitions) if self.id in state.placement[p] and p in self.replica]
            if not mine:
                continue
            partition = rng.choice(mine)
            for peer in sorted(n for n in state.placement[partition] if n > self.id and n in live):
                try:
                    yield from self._exchange(peer, partition)
                except LegionError:
                    pass

    def _exchange(self, peer: str, partition: int) -> Process:
        """One exchange with ``peer`` over ``partition``: walk the trees down where they differ (three round
        trips), look again ``AAE_SETTLE_MS`` later (a write in flight differs for a moment), ship both ways."""
        theirs = yield from self._call(peer, "buckets", {"partition": partition})
        if partition not in self.replica:
            return
        mine = self.tree(partition).bucket_hashes()
        if hash_tree.root_of(mine) == hash_tree.root_of(theirs):
            return
        buckets = hash_tree.differing_indexes(mine, theirs)
        their_segments = yield from self._call(peer, "segments", {"partition": partition, "buckets": buckets})
        if partition not in self.replica:
            return
        segments = hash_tree.differing_indexes(self.tree(partition).segment_hashes(buckets), their_segments)
        first, _ = yield from self._differing_keys(peer, partition, segments)
        if not first:
            return
        yield Sleep(AAE_SETTLE_MS)
        again, their_ops = yield from self._differing_keys(peer, partition, segments)
        keys = first & again
        if not keys or partition not in self.replica:
            return
        take = [op for op in their_ops if op.key in keys]
        give = [op for key, op in sorted(self.replica[partition].items()) if key in keys]
        if self.sim.mutations.aae_one_direction:
            take = []
        self.store(take)
        self.sim.stats["anti-entropy repairs"] += 1
        self.sim.log(f"{self.id} anti-entropy p{partition} with {peer}: {len(keys)} keys differ")
        if give:
            yield from self._call(peer, "apply", {"ops": give})

    def _differing_keys(self, peer: str, partition: int, segments: list[int]) -> Process:
        """The keys of ``segments`` on which this replica and ``peer``'s differ, and the peer's operations there."""
        their_ops = yield from self._call(peer, "items", {"partition": partition, "segments": segments})
        if partition not in self.replica:
            return set(), []
        theirs = {op.key: _version(op) for op in their_ops}
        return hash_tree.differing_keys(self.tree(partition).items_in(segments), theirs), their_ops

    # --- handoff: pulling what this node gains, handing over what it loses ---------

    def _handoff_loop(self) -> Process:
        while True:
            yield Sleep(HANDOFF_INTERVAL_MS)
            yield from self._pull_gained()
            for partition in self.leaving():
                yield from self._hand_over(partition)

    def _pull_gained(self) -> Process:
        """Pull every partition this node gains and has not reported ready; report those it copied."""
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

    def _hand_over(self, partition: int) -> Process:
        """Ship a copy this node no longer owns to each of the partition's owners; drop it once all took it all."""
        ops = list(self.replica[partition].values())
        owners = [n for n in cs.owners(self.state, partition) if n != self.id]
        shipped = yield Gather(tuple(self._ship(owner, ops) for owner in owners))
        if all(shipped) and partition in self.leaving():
            self.sim.stats["partitions handed over"] += 1
            self.sim.log(f"{self.id} handed p{partition} over to {owners}")
            self._drop(partition)

    def _ship(self, owner: str, ops: list[Operation]) -> Process:
        if not ops:
            return True
        try:
            refused = yield from self._call(owner, "apply", {"ops": ops})
        except LegionError:
            return False
        return not refused

    def _flush_loop(self) -> Process:
        while True:
            yield Sleep(FLUSH_INTERVAL_MS)
            ops, self.unflushed = self.unflushed, []
            self.store(ops)


def _version(op: Operation) -> bytes:
    """A key's version as anti-entropy compares it: what ``Engine.versions`` lists by default."""
    return hash_tree.ops_version([op.to_wire()])


def _op(op: Operation) -> str:
    return f"{op.key.decode()}={op.body.decode()}@{op.hlc >> 16}.{op.hlc & 0xFFFF}/{op.origin}"


def _ignore(_value: Any, _error: LegionError | None) -> None:
    """A background send's outcome: anything it missed, anti-entropy repairs."""
