"""The batch writer: carries out ``Cluster.write_many`` for the coordinator.

I/O (through a narrow ``BatchHost``: it opens no connection itself). A batch
of a hundred thousand items must not become a hundred thousand round trips,
nor overflow the per-operation queue of a ``ReplicaSender``, so it takes its
own path:

1. every item is checked and stamped with its own timestamp (and, when it
   is named by an idempotency key, an origin derived from it); items that
   cannot go (bad key, oversized body, too few live replicas) are refused
   alone (``legion.write_batch``);
2. the operations are grouped by replica node — each partition's live
   current replicas, which count towards ``w``, and the nodes gaining it in a
   rebalance, which receive it but do not count — and, for each owner that
   is down, by the node keeping its hints (``legion.hints``; it counts
   towards ``w`` when it holds no replica itself);
3. each node's share is cut into chunks bounded by ``PEER_BATCH_OPS_MAX``
   operations and ``PEER_BATCH_BYTES_MAX`` bytes, and sent with at most
   ``PEER_CHUNKS_IN_FLIGHT_MAX`` chunks in flight per node — one
   ``/internal/apply`` request per chunk, or ``accept_ops`` for this node's
   own share. A node that cannot be reached fails its remaining chunks at once
   instead of timing out on each, and this node keeps what it failed to
   take as hints for it (not counted towards ``w``);
4. the peer answers per operation, and each answer goes to its item's tally.
   The call returns as soon as every item is decided; chunks still in flight
   finish in the background, bounded by the batch deadline.

The batch deadline grows with the number of rounds of chunks the busiest
node needs (``REQUEST_DEADLINE_MS`` per round), and no single chunk waits
longer than ``REQUEST_DEADLINE_MS``.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from legion.cluster_state import ClusterState
from legion.engine import WriteItem, WriteResult
from legion.errors import BadRequest, DeadlineExceeded, LegionError, Unavailable
from legion.idempotency import origin_for
from legion.keyspace import partition_of
from legion.limits import (
    PEER_BATCH_BYTES_MAX,
    PEER_BATCH_OPS_MAX,
    PEER_CHUNKS_IN_FLIGHT_MAX,
    REQUEST_DEADLINE_MS,
    WRITE_MANY_ITEMS_MAX,
)
from legion.replication import Operation, write_quorum
from legion.routing import WritePlan, write_plan
from legion.write_batch import BatchTally, ItemTally, check_item, chunk_ranges, op_wire_bytes, owner_missed


class BatchHost(Protocol):
    """What a batch writer needs of its node: the cluster view, a clock, and a way to ship a chunk."""

    node_id: str

    def current_state(self) -> ClusterState: ...

    def live(self) -> set[str]: ...

    def stamp(self) -> int:
        """A fresh hybrid-logical-clock timestamp."""
        ...

    async def apply_chunk(
        self, node_id: str, ops: Sequence[Operation], *, refresh: bool, timeout_ms: int, hint_for: str | None = None
    ) -> dict[int, LegionError]:
        """Log ``ops`` on ``node_id`` (or, with ``hint_for``, have it keep them as hints for that owner);
        the refused ones by index. Raises if the whole chunk failed."""
        ...

    async def keep_hints_after_failure(self, owner: str, ops: Sequence[Operation]) -> None:
        """Keep ``ops`` as hints for ``owner``, whose chunk failed (logged, not raised, if that fails too)."""
        ...

    def keep(self, task: asyncio.Future[Any]) -> None:
        """Let ``task`` finish in the background."""
        ...


@dataclass
class _Share:
    """One node's part of a batch: the indexes of its items, in order, and its chunks of them.

    ``hint_for`` names the owner when the node keeps them as hints; ``tally_as`` is the name its
    answers count under (a hint holder that also holds a replica answers under a name that counts for nothing)."""

    node_id: str
    indexes: list[int]
    chunks: list[range]
    hint_for: str | None = None
    tally_as: str = ""


class BatchWriter:
    """Runs ``write_many`` calls; stateless between calls."""

    def __init__(self, host: BatchHost) -> None:
        self.host = host

    async def write_many(
        self, engine: str, items: Sequence[WriteItem], *, w: int | None = None, refresh: bool = False
    ) -> list[WriteResult | LegionError]:
        """``Cluster.write_many``: one entry per item, in order, once every item is decided."""
        if len(items) > WRITE_MANY_ITEMS_MAX:
            raise BadRequest(f"a batch holds at most {WRITE_MANY_ITEMS_MAX} items, got {len(items)}")
        if w is not None:
            write_quorum(w, self.host.current_state().replicas)  # a bad w fails the call, not every item
        tally, ops, shares = self._plan(engine, items, w, refresh)
        if tally.undecided == 0:
            return tally.results()
        rounds = max(math.ceil(len(share.chunks) / PEER_CHUNKS_IN_FLIGHT_MAX) for share in shares)
        deadline = time.monotonic() + rounds * REQUEST_DEADLINE_MS / 1000
        decided = asyncio.Event()
        tasks = [asyncio.ensure_future(self._send_share(s, ops, tally, decided, refresh, deadline)) for s in shares]
        try:
            await asyncio.wait_for(decided.wait(), timeout=max(0.0, deadline - time.monotonic()) + 1)
        except asyncio.TimeoutError:
            _expire(tally, shares)  # not expected: every share settles its items before the deadline
        for task in tasks:
            if not task.done():
                self.host.keep(task)
        return tally.results()

    def _plan(
        self, engine: str, items: Sequence[WriteItem], w: int | None, refresh: bool
    ) -> tuple[BatchTally, list[Operation | None], list[_Share]]:
        """Check and stamp every item; group the items by replica node and chunk each node's share.

        Shares hold item indexes into one list of operations (a plain int per
        item and node, not an object: a batch may hold a hundred thousand)."""
        state, live = self.host.current_state(), self.host.live()
        plans: dict[int, WritePlan] = {}
        ops: list[Operation | None] = [None] * len(items)
        sizes = [0] * len(items)
        # (node, the owner it keeps hints for or None, the name its answers count under) -> item indexes
        by_node: dict[tuple[str, str | None, str], list[int]] = defaultdict(list)
        tally = BatchTally(len(items))
        for index, item in enumerate(items):
            try:
                key = check_item(item)
                partition = partition_of(key, state.partitions)
                plan = plans.get(partition) or plans.setdefault(
                    partition, write_plan(state, partition, live, self.host.node_id)
                )
                need = write_quorum(w, plan.replicas)
                if len(plan.quorum) < need:
                    raise Unavailable(
                        f"partition {partition}: {len(plan.counted)} of {plan.replicas} replicas are live "
                        f"and {len(plan.quorum) - len(plan.counted)} fallbacks can keep hints; the write needs {need}",
                        partition=partition,
                    )
            except LegionError as exc:
                tally.refuse(index, exc)
                continue
            origin = origin_for(engine, key, item.idempotency_key) or self.host.node_id
            op = ops[index] = Operation(engine, partition, key, self.host.stamp(), origin, item.kind, item.body)
            sizes[index] = op_wire_bytes(op)
            tally.track(index, ItemTally(partition, op.hlc, plan.quorum, need, plan.replicas, wait_all=refresh))
            for node_id in plan.counted + plan.extra:
                by_node[(node_id, None, node_id)].append(index)
            counted_holders = plan.counted_holders
            for owner, holder in plan.hinted:
                # A holder that also holds a replica answers under a name no tally counts.
                name = holder if holder in counted_holders else f"hint:{owner}@{holder}"
                by_node[(holder, owner, name)].append(index)
        shares = [
            _Share(node_id, indexes, _chunks(indexes, sizes), owner, name)
            for (node_id, owner, name), indexes in by_node.items()
        ]
        return tally, ops, shares

    async def _send_share(
        self,
        share: _Share,
        ops: Sequence[Operation | None],
        tally: BatchTally,
        decided: asyncio.Event,
        refresh: bool,
        deadline: float,
    ) -> None:
        """Send one node's chunks, a few at a time; every entry ends acknowledged or failed."""
        pending = iter(share.chunks)  # shared by the workers: each chunk is taken once
        unreachable: list[LegionError] = []

        async def worker() -> None:
            for chunk in pending:
                indexes = share.indexes[chunk.start : chunk.stop]
                refused: dict[int, LegionError] = {}
                error = unreachable[0] if unreachable else None
                remaining_ms = int((deadline - time.monotonic()) * 1000)
                if error is None and remaining_ms <= 0:
                    error = DeadlineExceeded(f"the batch deadline passed before sending to {share.node_id}")
                if error is None:
                    try:
                        refused = await self.host.apply_chunk(
                            share.node_id, [ops[i] for i in indexes], refresh=refresh,  # type: ignore[misc]
                            timeout_ms=min(REQUEST_DEADLINE_MS, remaining_ms), hint_for=share.hint_for,
                        )  # fmt: skip
                    except (Unavailable, DeadlineExceeded) as exc:
                        unreachable.append(exc)  # the node is gone: fail its other chunks without waiting
                        error = exc
                    except LegionError as exc:
                        error = exc
                if error is not None and share.hint_for is not None and share.node_id != self.host.node_id:
                    # The fallback could not keep them: this node does.
                    await self.host.keep_hints_after_failure(share.hint_for, [ops[i] for i in indexes])  # type: ignore[misc]
                elif share.hint_for is None and share.node_id != self.host.node_id:
                    epoch = self.host.current_state().epoch
                    if error is not None:
                        missed = list(indexes) if owner_missed(error, epoch) else []
                    else:
                        missed = [indexes[i] for i, exc in refused.items() if owner_missed(exc, epoch)]
                    if missed:
                        await self.host.keep_hints_after_failure(share.node_id, [ops[i] for i in missed])  # type: ignore[misc]
                _settle(tally, share.tally_as, indexes, refused, error)
                if tally.undecided == 0:
                    decided.set()

        finished = False
        try:
            await asyncio.gather(*(worker() for _ in range(min(PEER_CHUNKS_IN_FLIGHT_MAX, len(share.chunks)))))
            finished = True
        finally:
            if not finished:  # cancelled, or a bug: never leave the caller waiting on this node
                stopped = LegionError(f"the batch writer stopped before {share.node_id} answered")
                _settle(tally, share.tally_as, share.indexes, {}, stopped)
                if tally.undecided == 0:
                    decided.set()


def _chunks(indexes: list[int], sizes: list[int]) -> list[range]:
    return chunk_ranges([sizes[i] for i in indexes], ops_max=PEER_BATCH_OPS_MAX, bytes_max=PEER_BATCH_BYTES_MAX)


def _settle(
    tally: BatchTally, node_id: str, indexes: Sequence[int], refused: dict[int, LegionError], error: LegionError | None
) -> None:
    """Record one chunk's outcome on ``node_id``: all failed with ``error``, or per operation."""
    if error is None and not refused:
        for index in indexes:
            tally.ack(index, node_id)
        return
    for position, index in enumerate(indexes):
        failure = error or refused.get(position)
        if failure is None:
            tally.ack(index, node_id)
        else:
            tally.fail(index, node_id, failure)


def _expire(tally: BatchTally, shares: Sequence[_Share]) -> None:
    expired = DeadlineExceeded("the batch deadline passed before the replicas answered")
    for share in shares:
        _settle(tally, share.tally_as, share.indexes, {}, expired)
