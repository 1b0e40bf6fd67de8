"""Invariants of the simulated data path, checked at every step and once the cluster has healed.

Pure. ``DataChecker`` is a ``DataObserver`` of a ``DataSimulation``
(``legion.testing.data_sim``): it checks each acknowledgement, each dropped
hint and each dropped copy the moment it happens, and raises ``AssertionError``
naming the node, the operation and what was missing.

At every step:

(a) durable before acknowledged: when a coordinator acknowledges a write, at
    least ``W`` distinct nodes hold it durably — in their replica (or a write
    that wins over it) or in their hint store;
(b) a hint is dropped only once its owner holds the write durably (or has
    since handed the partition over, which (c) judges), or once it has been
    readdressed to every current owner of the partition (a hint for each kept
    by the same node, ``hints.readdress``); a hint orphaned by its owner's removal
    (``hints.replay_owners``) is dropped only while ``W`` nodes still hold the
    write, if it was acknowledged;
(c) a node drops its copy of a partition only if every acknowledged write the
    copy holds is still held by ``W`` nodes without it (their replicas, or any
    node's hint store) — dropping must never take an acknowledged write below
    the copies its acknowledgement promised.

After healing and a quiet period (``check_converged``, then
``check_acknowledged``):

(d) convergence: no move is pending, every node knows the newest state, no hint
    is left, every owner of every partition holds an identical replica and
    no other node holds one;
(e) no acknowledged write lost: for every key, the replicas hold the last
    acknowledged write or one that wins over it under last-writer-wins, and
    every value held was written by a client (nothing invented).
"""

from __future__ import annotations

from legion import cluster_state as cs
from legion.replication import Operation
from legion.testing.data_node import W, DataNode
from legion.testing.data_sim import DataObserver, DataSimulation, describe


class DataChecker(DataObserver):
    """Checks invariants (a)-(c) as they happen."""

    def on_ack(self, sim: DataSimulation, coordinator: DataNode, op: Operation, holders: frozenset[str]) -> None:
        durable = sorted(n.id for n in sim.nodes.values() if n.holds(op) or n.keeps_hint(op))
        assert len(durable) >= W, (
            f"durable before acknowledged: {coordinator.id} acknowledges {_shown(op)} (acknowledged by "
            f"{sorted(holders)}) but only {durable} hold it durably; W={W}"
        )

    def on_hint_dropped(self, sim: DataSimulation, holder: DataNode, target: str, op: Operation, why: str) -> None:
        if why == "delivered":
            owner = sim.nodes[target]
            # An owner that has since handed the partition over is judged by (c) when it dropped it.
            assert owner.holds(op) or op.partition not in owner.replica, (
                f"hint dropped before its owner acknowledged it: {holder.id} dropped its hint of {_shown(op)} "
                f"for {target}, which does not hold it"
            )
            return
        if why == "orphaned":
            # Its owner was removed (``hints.replay_owners``): an acknowledged write keeps its W copies.
            if op in sim.acks:
                _assert_copies(sim, op, f"{holder.id} dropped its hint of {_shown(op)} for removed {target}")
            return
        for owner in cs.owners(holder.state, op.partition):
            assert (owner, op) in holder.hints, (
                f"hint dropped before it was readdressed: {holder.id} dropped its hint of {_shown(op)} for {target} "
                f"without keeping one for owner {owner}"
            )

    def on_drop(self, sim: DataSimulation, node: DataNode, partition: int) -> None:
        for op in sim.acks:
            if op.partition == partition and node.holds(op):
                _assert_copies(sim, op, f"{node.id} drops p{partition} ({describe(node.state)})", without=node)


def _assert_copies(sim: DataSimulation, op: Operation, event: str, without: DataNode | None = None) -> None:
    """An acknowledged write is still held durably by ``W`` nodes (replica or hint), ``without``'s replica aside."""
    holders = sorted(n.id for n in sim.nodes.values() if (n is not without and n.holds(op)) or n.keeps_hint(op))
    assert len(holders) >= W, (
        f"fewer than W copies left: {event}; acknowledged {_shown(op)} is held by {holders} alone, W={W}"
    )


def last_acknowledged(sim: DataSimulation) -> dict[bytes, Operation]:
    """Per key, the acknowledged write that wins under last-writer-wins."""
    last: dict[bytes, Operation] = {}
    for op in sim.acknowledged:
        if op.key not in last or op.version > last[op.key].version:
            last[op.key] = op
    return last


def check_converged(sim: DataSimulation) -> None:
    """(d): raise AssertionError naming the first thing that has not converged."""
    state = sim.committed
    assert state.pending is None, f"a move is still pending: {describe(state)}"
    for node in sim.nodes.values():
        assert node.running, f"{node.id} is not running"
        assert node.state.epoch == state.epoch, f"{node.id} is at epoch {node.state.epoch}, not {state.epoch}"
        assert not node.hints, f"{node.id} still keeps {len(node.hints)} hints, e.g. for {next(iter(node.hints))[0]}"
        assert not node.unflushed, f"{node.id} has {len(node.unflushed)} writes not yet durable"
    for partition, owners in enumerate(state.placement):
        strays = sorted(n.id for n in sim.nodes.values() if partition in n.replica and n.id not in owners)
        assert not strays, f"p{partition}: {strays} still hold a copy, but only {list(owners)} own it"
        reference = sim.nodes[owners[0]].replica[partition]
        for owner in owners[1:]:
            other = sim.nodes[owner].replica[partition]
            assert other == reference, (
                f"replicas differ: p{partition} on {owners[0]} {_summary(reference, other)} "
                f"than on {owner}"
            )


def check_acknowledged(sim: DataSimulation) -> None:
    """(e): every replica holds each key's last acknowledged write or a newer one, and only written values."""
    state = sim.committed
    for key, op in sorted(last_acknowledged(sim).items()):
        for owner in state.placement[op.partition]:
            held = sim.nodes[owner].replica[op.partition].get(key)
            assert held is not None and held.version >= op.version, (
                f"acknowledged write lost: {owner} holds {_shown(held) if held else 'nothing'} for {key!r}, "
                f"but {_shown(op)} was acknowledged"
            )
            assert held.version != op.version or held == op, f"two writes share version {op.version}: {held}, {op}"
    for node in sim.nodes.values():
        for held in node.replica.values():
            for op in held.values():
                assert op in sim.written, f"{node.id} holds {_shown(op)}, which no client wrote"


def _summary(a: dict[bytes, Operation], b: dict[bytes, Operation]) -> str:
    differing = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    key = differing[0]
    return f"holds {len(a)} keys vs {len(b)}; {len(differing)} differ, e.g. {key!r}: {a.get(key)} vs {b.get(key)}"


def _shown(op: Operation) -> str:
    return f"{op.key.decode(errors='replace')}={op.body.decode(errors='replace')} (hlc {op.hlc}, {op.origin})"
