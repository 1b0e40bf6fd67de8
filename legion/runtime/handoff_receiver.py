"""The handoff receiver: pulls the partitions this node is gaining.

I/O. Whenever the cluster state changes, the receiver compares the pending
placement with the current one: for every partition this node gains, it
copies each engine's share from a live current replica — up to
``HANDOFF_PULLS_MAX`` partitions at once — as a snapshot of the engine's
files when the engine offers one (``snapshot_fetcher``), else as a stream of
its fold (``/internal/fold``) applied through the log writer like any other
write; it flushes it
(an engine that defers durability makes the copy visible), and reports the
partition ready to the claimant. Writes that arrive during the pull are
applied too; operations are idempotent and commutative, so the order does not
matter. The claimant commits the new placement once every gaining node has
reported. A node that no longer holds a partition then ships its owners
whatever they lack of its copy (an anti-entropy exchange one way: a
coordinator that had not heard of the move may have counted this copy towards
W) and only then drops it (``Node.reconcile``).

The same pull re-syncs a replica that may have missed writes: after a
restart, or after the cluster marked this node down while it was running.
Until a partition has re-synced, this node refuses to serve reads of it
(``Unavailable``), so the coordinator asks the next replica instead. A
restarted node re-syncs only the partitions whose hints a peer lost
(``legion.runtime.hinted_handoff``); the rest it catches up on from hints,
and anti-entropy (``legion.runtime.anti_entropy``) repairs replicas key by
key in the background.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import msgpack

from legion import cluster_state as cs
from legion.errors import LegionError, Unavailable
from legion.hints import RESYNCING_ATTRIBUTE
from legion.limits import HANDOFF_PULLS_MAX, HANDOFF_RETRY_INTERVAL_MS, PEER_BODY_BYTES_MAX
from legion.replication import Operation
from legion.routing import read_order
from legion.runtime.rounds import Rounds
from legion.runtime.snapshot_fetcher import SnapshotFetcher
from legion.runtime.node_view import Liveness, StateView

if TYPE_CHECKING:
    from legion.engine import Engine
    from legion.runtime.log_writer import LogWriter

log = logging.getLogger(__name__)


class HandoffHost(StateView, Protocol):
    """What the handoff receiver uses of its node (``legion.runtime.node_view``)."""

    coordinator: Liveness
    engines: dict[str, Engine]
    writer: LogWriter

    def adopt(self, state: cs.ClusterState) -> bool: ...

    async def change_state(self, change: Callable[[cs.ClusterState], cs.ClusterState]) -> cs.ClusterState: ...

    def claimant(self) -> str | None: ...

    async def reconcile(self) -> None: ...


# Member attributes the core publishes about this node, next to the engines' own.
STATUS_PREFIX = "legion"


def partitions_summary(partitions: set[int], limit_chars: int = 200) -> str:
    """``"3: 0-2"``-style text for a set of partitions, cut to ``limit_chars`` ("" for none)."""
    runs: list[str] = []
    for p in sorted(partitions):
        if runs and runs[-1].split("-")[-1] == str(p - 1):
            runs[-1] = f"{runs[-1].split('-')[0]}-{p}"
        else:
            runs.append(str(p))
    text = f"{len(partitions)}: {','.join(runs)}" if partitions else ""
    return text if len(text) <= limit_chars else text[: limit_chars - 1] + "…"


class HandoffReceiver(Rounds):
    """Runs the handoff loop of one node."""

    name = "handoff"
    interval_ms = HANDOFF_RETRY_INTERVAL_MS

    def __init__(self, node: HandoffHost) -> None:
        super().__init__()
        self.node = node
        # Partitions already copied for the pending placement in force, so a failed report is retried without pulling again.
        self._pulled: set[int] = set()
        self._pulled_for: object = None
        self.resyncing: set[int] = set()
        self._published = ""
        # Partitions being copied in right now (for the metrics and the dashboard).
        self.in_flight: set[int] = set()
        self.snapshots = SnapshotFetcher(node)

    def resync_partitions(self, partitions: set[int]) -> None:
        """Re-copy ``partitions`` before serving reads of them again."""
        self.resyncing |= partitions
        self.wake()

    async def resync(self) -> None:
        for p in sorted(self.resyncing):
            try:
                await self.pull(p, missing_source_ok=True)
                self.resyncing.discard(p)
            except LegionError as exc:
                log.warning("re-syncing partition %d failed, will retry: %s", p, exc)

    def take_missed(self) -> None:
        """Re-sync the partitions whose writes this node could not log (they are not served meanwhile)."""
        state = self.node.state
        missed = {p for p in self.node.writer.take_missed() if self.node.node_id in state.placement[p]}
        if missed - self.resyncing:
            log.warning("could not log writes of partitions %s; re-syncing them from peers", sorted(missed))
            self.resyncing |= missed
            self.wake()

    async def run_round(self) -> None:
        self.take_missed()
        self._publish()
        await self.node.reconcile()
        await self.pull_gained()
        await self.resync()
        self._publish()

    def _publish(self) -> None:
        """Show the partitions this node does not serve reads of in ``cluster status`` (a member attribute)."""
        summary = partitions_summary(self.resyncing)
        if summary != self._published:
            self.node.attributes.publish(STATUS_PREFIX, {RESYNCING_ATTRIBUTE: summary} if summary else {})
            self._published = summary

    def wanted(self) -> list[int]:
        state = self.node.state
        me = self.node.node_id
        return sorted(p for p, n in cs.gained_slots(state.placement, state.pending) - state.ready if n == me)

    async def pull_gained(self) -> None:
        wanted = self.wanted()
        if self._pulled_for != self.node.state.pending:
            self._pulled, self._pulled_for = set(), self.node.state.pending
        if not wanted:
            return
        slots = asyncio.Semaphore(HANDOFF_PULLS_MAX)

        async def pull_one(p: int) -> None:
            async with slots:
                # The plan may change while we copy (a node joined or left): copy only what is still wanted.
                if p in self._pulled or p not in self.wanted():
                    return
                try:
                    await self.pull(p)
                    self._pulled.add(p)
                except LegionError as exc:
                    log.warning("pulling partition %d failed, will retry: %s", p, exc)

        await asyncio.gather(*(pull_one(p) for p in wanted))
        done = [p for p in self.wanted() if p in self._pulled]
        if done:
            await self.report(done)

    async def pull(self, partition: int, *, missing_source_ok: bool = False) -> None:
        """Copy every engine's share of ``partition`` from a live current replica.

        With ``missing_source_ok``, having no other live replica is success: this copy is the best there is."""
        node = self.node
        sources = [n for n in read_order(node.state, partition, node.coordinator.live(), node.node_id) if n != node.node_id]
        if not sources:
            if missing_source_ok:
                return
            raise Unavailable(f"no live replica to pull partition {partition} from")
        self.in_flight.add(partition)
        try:
            for engine in node.engines:
                await node.writer.ensure_open(engine, partition)
                await self._pull_engine(sources[0], engine, partition)
        finally:
            self.in_flight.discard(partition)
        node.metrics.handoff_partitions.inc()
        log.info("pulled partition %d from %s", partition, sources[0])

    async def _pull_engine(self, source: str, engine: str, partition: int) -> None:
        """Copy as a snapshot of the engine's files if it offers one, else as its fold."""
        if await self.snapshots.pull(source, engine, partition):
            return
        node = self.node
        url = f"{node.state.url_of(source)}/internal/fold?engine={engine}&partition={partition}"
        unpacker = msgpack.Unpacker(raw=False, max_buffer_size=PEER_BODY_BYTES_MAX)
        async for chunk in node.peers.stream(url):
            node.metrics.handoff_bytes.inc(len(chunk))
            unpacker.feed(chunk)
            for batch in unpacker:
                await node.writer.submit([Operation.from_wire(raw) for raw in batch])
                node.metrics.handoff_ops.inc(len(batch))
        # Served from here once reported ready: what was copied must be visible, not just logged.
        await node.writer.flush(engine, [partition])

    async def report(self, partitions: list[int]) -> None:
        node = self.node
        body = {"node_id": node.node_id, "partitions": partitions}
        target = node.claimant()
        if target == node.node_id:
            await node.change_state(lambda s: cs.try_commit(cs.mark_ready(s, node.node_id, partitions)))
            return
        if target is None:
            raise Unavailable("no claimant to report handoff to")
        raw = await node.peers.call("POST", node.state.url_of(target) + "/internal/handoff-done", json_body=body)
        node.adopt(cs.from_dict(json.loads(raw)["state"]))
