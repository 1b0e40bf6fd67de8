"""The batch writer: carries out ``Cluster.write_many`` for the coordinator.

I/O (through a narrow ``BatchHost``: it opens no connection itself). A batch
of a hundred thousand items must not become a hundred thousand round trips,
nor overflow the per-operation queue of a ``ReplicaSender``, so it takes its
own path:

1. every item is checked and stamped with its own timestamp; items that
   cannot go (bad key, oversized body, too few live replicas) are refused
   alone (``legion.write_batch``);
2. the operations are grouped by replica node — each partition's live
   current replicas, which count towards ``w``, and the nodes gaining it in a
   rebalance, which receive it but do not count;
3. each node's share is cut into chunks bounded by ``PEER_BATCH_OPS_MAX``
   operations and ``PEER_BATCH_BYTES_MAX`` bytes, and sent with at most
   ``PEER_CHUNKS_IN_FLIGHT_MAX`` chunks in flight per node — one
   ``/internal/apply`` request per chunk, or ``accept_ops`` for this node's
   own share. A node that cannot be reached fails its remaining chunks at once
   instead of timing out on each;
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
from legion.write_batch import BatchTally, ItemTally, check_item, chunk_ranges, op_wire_bytes


class BatchHost(Protocol):
    """What a batch writer needs of its node: the cluster view, a clock, and a way to ship a chunk."""

    node_id: str

    def current_state(self) -> ClusterState: ...

    def live(self) -> set[str]: ...

    def stamp(self) -> int:
        """A fresh hybrid-logical-clock timestamp."""
        ...

    async def apply_chunk(
        self, node_id: str, ops: Sequence[Operation], *, refresh: bool, timeout_ms: int
    ) -> dict[int, LegionError]:
        """Log ``ops`` on ``node_id``; the refused ones by index. Raises if the whole chunk failed."""
        ...

    def keep(self, task: asyncio.Future[Any]) -> None:
        """Let ``task`` finish in the background."""
        ...


@dataclass
class _Share:
    """One node's part of a batch: (item index, operation) pairs in item order, and their chunks."""

    node_id: str
    entries: list[tuple[int, Operation]]
    chunks: list[range]


class BatchWriter:
    """Runs ``write_many`` calls; stateless between calls."""

    def __init__(self, host: BatchHost) -> None:
        self.host = host

    async def write_many(
        self, engine: str, items: Sequence[WriteItem], *, w: int | None = None, refresh: bool = False
    ) -> list[WriteResult | LegionError]:
        if len(items) > WRITE_MANY_ITEMS_MAX:
            raise BadRequest(f"a batch holds at most {WRITE_MANY_ITEMS_MAX} items, got {len(items)}")
        if w is not None:
            write_quorum(w, 1)  # a bad w fails the call, not every item
        tally, shares = self._plan(engine, items, w, refresh)
        if tally.undecided == 0:
            return tally.results()
        rounds = max(math.ceil(len(share.chunks) / PEER_CHUNKS_IN_FLIGHT_MAX) for share in shares)
        deadline = time.monotonic() + rounds * REQUEST_DEADLINE_MS / 1000
        decided = asyncio.Event()
        tasks = [asyncio.ensure_future(self._send_share(s, tally, decided, refresh, deadline)) for s in shares]
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
    ) -> tuple[BatchTally, list[_Share]]:
        """Check and stamp every item; group the operations by replica node and chunk each node's share."""
        state, live = self.host.current_state(), self.host.live()
        # Per partition, decided once: where its items go, how many acks they need, or why they cannot go.
        routes: dict[int, tuple[WritePlan, int, tuple[str, ...]] | None] = {}
        by_node: dict[str, list[tuple[int, Operation]]] = defaultdict(list)
        sizes: dict[str, list[int]] = defaultdict(list)
        framing: dict[str, int] = {}  # op_wire_bytes of an operation of a kind, but for its key and body
        tally = BatchTally(len(items))
        stamp, origin, partitions = self.host.stamp, self.host.node_id, state.partitions
        for index, item in enumerate(items):
            try:
                key = check_item(item)
                partition = partition_of(key, partitions)
                route = routes.get(partition)
                if route is None:
                    route = routes[partition] = _route(state, partition, live, w)
            except LegionError as exc:
                tally.refuse(index, exc)
                continue
            plan, need, targets = route
            op = Operation(engine, partition, key, stamp(), origin, item.kind, item.body)
            tally.track(index, ItemTally(partition, op.hlc, plan.counted, need, plan.replicas, wait_all=refresh))
            base = framing.get(op.kind)
            if base is None:
                base = framing[op.kind] = op_wire_bytes(op) - len(key) - len(op.body)
            size = base + len(key) + len(op.body)
            for node_id in targets:
                by_node[node_id].append((index, op))
                sizes[node_id].append(size)
        shares = []
        for node_id, entries in by_node.items():
            chunks = chunk_ranges(sizes[node_id], ops_max=PEER_BATCH_OPS_MAX, bytes_max=PEER_BATCH_BYTES_MAX)
            shares.append(_Share(node_id, entries, chunks))
        return tally, shares

    async def _send_share(
        self, share: _Share, tally: BatchTally, decided: asyncio.Event, refresh: bool, deadline: float
    ) -> None:
        """Send one node's chunks, a few at a time; every entry ends acknowledged or failed."""
        pending = iter(share.chunks)  # shared by the workers: each chunk is taken once
        unreachable: list[LegionError] = []

        async def worker() -> None:
            for chunk in pending:
                entries = share.entries[chunk.start : chunk.stop]
                refused: dict[int, LegionError] = {}
                error = unreachable[0] if unreachable else None
                remaining_ms = int((deadline - time.monotonic()) * 1000)
                if error is None and remaining_ms <= 0:
                    error = DeadlineExceeded(f"the batch deadline passed before sending to {share.node_id}")
                if error is None:
                    try:
                        refused = await self.host.apply_chunk(
                            share.node_id, [op for _, op in entries], refresh=refresh,
                            timeout_ms=min(REQUEST_DEADLINE_MS, remaining_ms),
                        )  # fmt: skip
                    except (Unavailable, DeadlineExceeded) as exc:
                        unreachable.append(exc)  # the node is gone: fail its other chunks without waiting
                        error = exc
                    except LegionError as exc:
                        error = exc
                _settle(tally, share.node_id, entries, refused, error)
                if tally.undecided == 0:
                    decided.set()

        finished = False
        try:
            await asyncio.gather(*(worker() for _ in range(min(PEER_CHUNKS_IN_FLIGHT_MAX, len(share.chunks)))))
            finished = True
        finally:
            if not finished:  # cancelled, or a bug: never leave the caller waiting on this node
                stopped = LegionError(f"the batch writer stopped before {share.node_id} answered")
                _settle(tally, share.node_id, share.entries, {}, stopped)
                if tally.undecided == 0:
                    decided.set()


def _route(state: ClusterState, partition: int, live: set[str], w: int | None) -> tuple[WritePlan, int, tuple[str, ...]]:
    """A partition's write plan, the acknowledgements its items need, and every node they go to.

    Raises Unavailable (raised again for each of its items) when too few replicas are live."""
    plan = write_plan(state, partition, live)
    need = write_quorum(w, plan.replicas)
    if len(plan.counted) < need:
        raise Unavailable(
            f"partition {partition}: {len(plan.counted)} of {plan.replicas} replicas are live; the write needs {need}",
            partition=partition,
        )
    return plan, need, plan.counted + plan.extra


def _settle(
    tally: BatchTally,
    node_id: str,
    entries: Sequence[tuple[int, Operation]],
    refused: dict[int, LegionError],
    error: LegionError | None,
) -> None:
    """Record one chunk's outcome on ``node_id``: all failed with ``error``, or per operation."""
    if error is None and not refused:
        tally.ack_all([index for index, _ in entries], node_id)
        return
    for position, (index, _) in enumerate(entries):
        failure = error or refused.get(position)
        if failure is None:
            tally.ack(index, node_id)
        else:
            tally.fail(index, node_id, failure)


def _expire(tally: BatchTally, shares: Sequence[_Share]) -> None:
    expired = DeadlineExceeded("the batch deadline passed before the replicas answered")
    for share in shares:
        _settle(tally, share.node_id, share.entries, {}, expired)
