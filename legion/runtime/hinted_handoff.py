"""Hinted handoff: keeps writes for owners that could not take them, replays them, and catches this node up.

I/O; the decisions are ``legion.hints``. Three jobs, one loop (``Rounds``):

- **Keep.** ``keep`` stores (owner, operation) pairs in the ``HintStore``
  and returns once they are durable. Callers on the write path run at once
  under load, so pairs queued while a commit is running go together in the
  next one (one fsync for all of them), from a worker thread.
- **Replay.** Every ``HINT_REPLAY_INTERVAL_MS`` (and at once after a state
  change), hints for each owner believed live are sent, oldest first, in
  chunks bounded by ``PEER_BATCH_OPS_MAX`` operations and
  ``PEER_BATCH_BYTES_MAX`` bytes, through the owner's ``/internal/apply``; a
  hint is deleted only after the owner acknowledged it. At most
  ``HINT_REPLAY_OPS_PER_ROUND_MAX`` hints go per round; a round that used its
  budget starts the next at once.
- **Catch up.** A restarted node — or one the cluster marked down while it
  ran — does not serve reads of the partitions it holds (``catching_up``)
  until every live peer reports no hint pending for it there
  (``/internal/hints``, ``hints.catch_up``). Partitions a peer lost hints of
  (its store was full) are handed to the re-sync of the handoff receiver.

This node's hints pending per owner, and the partitions it is catching up,
are published as member attributes (``hints.pending``, ``hints.catching-up``),
so ``legion cluster status`` shows them for every node.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from legion import cluster_state as cs
from legion.cluster_state import ClusterState
from legion.errors import LegionError, Overloaded
from legion.hints import (
    CATCHING_UP_ATTRIBUTE,
    PENDING_ATTRIBUTE,
    HintReport,
    catch_up,
    pending_summary,
    readdress,
    replay_chunks,
    replay_owners,
    settle_replay,
)
from legion.limits import (
    HINT_QUEUE_OPS_MAX,
    HINT_REPLAY_INTERVAL_MS,
    HINT_REPLAY_OPS_PER_ROUND_MAX,
    PEER_BATCH_BYTES_MAX,
    PEER_BATCH_OPS_MAX,
    REQUEST_DEADLINE_MS,
)
from legion.replication import Operation
from legion.runtime.handoff_receiver import partitions_summary
from legion.runtime.hint_store import HintStore, StoredHint
from legion.runtime.rounds import Rounds
from legion.write_batch import op_wire_bytes

log = logging.getLogger(__name__)


class HintHost(Protocol):
    """What hinted handoff needs of its node: the cluster view, liveness, and calls to peers."""

    node_id: str

    def current_state(self) -> ClusterState: ...

    def live(self) -> set[str]: ...

    def suspect(self, node_id: str) -> None: ...

    async def apply_chunk(
        self, node_id: str, ops: Sequence[Operation], *, refresh: bool, timeout_ms: int
    ) -> dict[int, LegionError]:
        """Log ``ops`` on ``node_id``; the refused ones by index. Raises if the whole chunk failed."""
        ...

    async def peer_json(self, node_id: str, method: str, path: str, body: Any = None) -> Any:
        """A JSON call to a peer; its decoded answer."""
        ...


class HintMetrics(Protocol):
    """The counters hinted handoff records into (``NodeMetrics``)."""

    def observe_hints(self, *, kept: int = 0, lost: int = 0, replayed: int = 0) -> None: ...


class HintedHandoff(Rounds):
    """Runs hinted handoff for one node; see the module docstring."""

    name = "hinted-handoff"
    interval_ms = HINT_REPLAY_INTERVAL_MS

    def __init__(
        self,
        host: HintHost,
        store: HintStore,
        metrics: HintMetrics,
        publish: Callable[[Mapping[str, str]], None],
        resync: Callable[[set[int]], None],
    ) -> None:
        super().__init__()
        self.host = host
        self.store = store
        self.metrics = metrics
        self._publish_values = publish
        self._resync = resync
        self.catching_up: set[int] = set()
        self._queue: list[tuple[list[tuple[str, Operation]], asyncio.Future[None]]] = []
        self._queued_ops = 0
        self._committer: asyncio.Task[None] | None = None
        self._published: dict[str, str] = {}

    # --- keep ------------------------------------------------------------------

    async def keep(self, entries: Sequence[tuple[str, Operation]]) -> None:
        """Durably keep each (owner, operation) as a hint; Overloaded if too many wait for the store."""
        if not entries:
            return
        if self._queued_ops + len(entries) > HINT_QUEUE_OPS_MAX:
            raise Overloaded(f"too many hints waiting to be stored on {self.host.node_id}")
        future = asyncio.get_running_loop().create_future()
        self._queue.append((list(entries), future))
        self._queued_ops += len(entries)
        if self._committer is None or self._committer.done():
            self._committer = asyncio.create_task(self._commit(), name="hint-commit")
        await future

    async def _commit(self) -> None:
        while self._queue:
            batch, self._queue, self._queued_ops = self._queue, [], 0
            entries = [entry for entries, _ in batch for entry in entries]
            try:
                kept = await asyncio.to_thread(self.store.add, entries)
            except Exception as exc:  # the store failed (a full disk): every waiting caller learns it
                error = LegionError(f"could not store hints on {self.host.node_id}: {exc}")
                for _, future in batch:
                    if not future.done():
                        future.set_exception(error)
                continue
            self.metrics.observe_hints(kept=kept, lost=len(entries) - kept)
            if kept < len(entries):
                log.warning("hint store full: %d hints recorded as lost (their owners will re-sync)", len(entries) - kept)
            for _, future in batch:
                if not future.done():
                    future.set_result(None)

    # --- rounds ----------------------------------------------------------------

    async def run_round(self) -> None:
        budget_left = await self.replay()
        await self.catch_up_round()
        self._publish()
        if budget_left <= 0:
            self.wake()  # more to send: do not wait for the tick

    async def stop(self) -> None:
        await super().stop()
        if self._committer is not None:
            await asyncio.gather(self._committer, return_exceptions=True)

    # --- replay ----------------------------------------------------------------

    async def replay(self) -> int:
        """Send hints to the owners believed live; the round's budget left."""
        state = self.host.current_state()
        members = {m.id: m.status for m in state.members}
        owners, orphaned = replay_owners(self.store.pending(), self.host.live(), members, self.host.node_id)
        for owner in orphaned:
            # A coordinator that had not heard of the removal may have counted this hint towards w:
            # dropping it could leave the write on one node. It follows its partition instead.
            moved = await self._readdress_all(owner)
            log.info("%d hints for %s, which is no longer a member, follow their partitions to the current owners", moved, owner)
        budget = HINT_REPLAY_OPS_PER_ROUND_MAX
        for owner in owners:
            budget = await self._replay_owner(owner, budget)
            if budget <= 0:
                break
        return budget

    async def _replay_owner(self, owner: str, budget: int) -> int:
        after_id = 0
        while budget > 0:
            hints = await asyncio.to_thread(self.store.oldest, owner, after_id, min(budget, PEER_BATCH_OPS_MAX * 4))
            if not hints:
                return budget
            after_id = hints[-1].id
            budget -= len(hints)
            hints = await self._readdress(owner, hints)
            sizes = [op_wire_bytes(h.op) for h in hints]
            for chunk in replay_chunks(sizes, ops_max=PEER_BATCH_OPS_MAX, bytes_max=PEER_BATCH_BYTES_MAX):
                if not await self._replay_chunk(owner, hints[chunk.start : chunk.stop]):
                    return budget  # the owner stopped answering: try again next round
        return budget

    async def _readdress_all(self, owner: str) -> int:
        """Hand every hint kept for ``owner``, a removed member, to its partition's current owners; how many."""
        moved = 0
        while hints := await asyncio.to_thread(self.store.oldest, owner, 0, PEER_BATCH_OPS_MAX * 4):
            staying = await self._readdress(owner, hints)
            moved += len(hints) - len(staying)
            if staying:  # cannot happen for a removed owner (it owns nothing); never loop on them
                break
        return moved

    async def _readdress(self, owner: str, hints: list[StoredHint]) -> list[StoredHint]:
        """Hand the hints whose partition ``owner`` no longer owns to the current owners; the rest."""
        state = self.host.current_state()
        staying: list[StoredHint] = []
        moved: list[tuple[str, Operation]] = []
        moved_hints: list[StoredHint] = []
        for h in hints:
            targets = readdress(owner, cs.owners(state, h.op.partition))
            if targets == (owner,):
                staying.append(h)
            else:
                moved.extend((target, h.op) for target in targets)
                moved_hints.append(h)
        if moved_hints:
            # Kept for the new owners first, then dropped: never in neither place.
            await self.keep(moved)
            await asyncio.to_thread(self.store.drop, owner, moved_hints)
            log.info("%d hints for %s follow their partitions to the current owners", len(moved_hints), owner)
        return staying

    async def _replay_chunk(self, owner: str, hints: list[StoredHint]) -> bool:
        """Send one chunk; drop what the owner acknowledged. False if it did not answer."""
        refused: dict[int, LegionError] = {}
        failed = False
        try:
            refused = await self.host.apply_chunk(
                owner, [h.op for h in hints], refresh=False, timeout_ms=REQUEST_DEADLINE_MS
            )
        except LegionError as exc:
            failed = True
            log.info("replaying %d hints to %s failed, will retry: %s", len(hints), owner, exc)
        drop, _keep = settle_replay([h.id for h in hints], set(refused), failed)
        by_id = {h.id: h for h in hints}
        if drop:
            await asyncio.to_thread(self.store.drop, owner, [by_id[i] for i in drop])
            self.metrics.observe_hints(replayed=len(drop))
        if refused:
            log.warning("%s refused %d replayed hints (kept): %s", owner, len(refused), next(iter(refused.values())))
        return not failed

    # --- catch-up of this node -------------------------------------------------

    def start_catch_up(self) -> None:
        """Serve no read of the partitions this node holds until the hints peers hold for it arrived."""
        state = self.host.current_state()
        self.catching_up = set(cs.partitions_held(state, self.host.node_id))
        self.wake()

    async def catch_up_round(self) -> None:
        if not self.catching_up:
            return
        state = self.host.current_state()
        me = self.host.node_id
        held = self.catching_up & set(cs.partitions_held(state, me))
        live = self.host.live()
        peers = sorted(m.id for m in state.members if m.id != me and m.status != cs.REMOVED and m.id in live)
        answers = await asyncio.gather(*(self._report_of(peer) for peer in peers))
        result = catch_up(held, dict(zip(peers, answers)))
        if result.resync:
            log.warning("peers lost hints for partitions %s; re-copying them whole", sorted(result.resync))
            self._resync(set(result.resync))
            await asyncio.gather(*(self._clear_lost(peer, sorted(result.resync)) for peer in peers))
        if held != self.catching_up or result.serving or result.resync:
            log.info("caught up on %d partitions; %d still wait for hints", len(result.serving), len(result.waiting))
        self.catching_up = set(result.waiting)

    async def _report_of(self, peer: str) -> HintReport | None:
        try:
            raw = await self.host.peer_json(peer, "GET", f"/internal/hints?owner={self.host.node_id}")
            return HintReport(
                pending={int(p): int(n) for p, n in raw["pending"].items()},
                lost=frozenset(int(p) for p in raw["lost"]),
            )
        except (LegionError, KeyError, TypeError, ValueError, AttributeError) as exc:
            log.info("could not learn the hints %s holds for this node: %s", peer, exc)
            self.host.suspect(peer)
            return None

    async def _clear_lost(self, peer: str, partitions: list[int]) -> None:
        try:
            await self.host.peer_json(
                peer, "POST", "/internal/hints/lost", {"owner": self.host.node_id, "partitions": partitions}
            )
        except LegionError as exc:
            log.info("could not clear lost-hint marks on %s: %s", peer, exc)

    # --- what others ask ---------------------------------------------------------

    async def report_for(self, owner: str) -> dict[str, Any]:
        """The JSON answer of ``GET /internal/hints?owner=``."""
        report = await asyncio.to_thread(self.store.report, owner)
        return {"pending": {str(p): n for p, n in report.pending.items()}, "lost": sorted(report.lost)}

    def pending(self) -> dict[str, int]:
        return self.store.pending()

    def _publish(self) -> None:
        values = {PENDING_ATTRIBUTE: pending_summary(self.store.pending()), CATCHING_UP_ATTRIBUTE: partitions_summary(self.catching_up)}
        values = {k: v for k, v in values.items() if v}
        if values != self._published:
            self._publish_values(values)
            self._published = values

