"""The coordinator: carries out routing decisions for one request.

I/O. Implements the ``legion.engine.Cluster`` protocol engines' handlers use:

- ``write`` stamps one operation with this node's hybrid logical clock (its
  origin is this node, or derived from the request's idempotency key), sends
  it to every live owner of its partition at once (the local replica through
  the log writer, peers over HTTP through a ``ReplicaSender``) and returns as
  soon as ``W`` replicas of the current preference list have made it
  durable. Slower replicas keep going in the background, each bounded by the
  request deadline. A write with ``refresh`` takes the batch path instead.
  An owner that is down gets its copy as a hint (sloppy quorum,
  ``legion.hints``): the plan names a fallback that keeps it — counted
  towards ``W`` when it holds no replica itself — and a send to an owner
  that fails leaves a hint on this node (not counted). Every such hint is
  durable before the write is answered.
- ``write_many`` hands the batch to a ``BatchWriter``: chunks of operations
  per replica node straight to ``/internal/apply``, per-item results.
- ``read`` asks ``R`` replicas (itself first when it holds one), and when one
  fails asks the next in preference order, until ``R`` replied or none are left.
- ``placement`` answers a ``PlacementView`` (``routing.placement_view``) of
  the node's state, its view of liveness and the members' attributes.
- ``coverage`` asks one replica per partition, one call per node, all nodes
  in parallel, and re-plans the partitions of a node that failed onto the
  other replicas, up to ``FORWARD_ATTEMPTS_MAX`` rounds. A request error (the
  query is bad) is raised at once: every replica would refuse it too.

Every peer call carries the request id (``legion.engine.current_request_id()``)
and the time left before the deadline.
A peer that fails to connect is *suspected* locally for a short while, so
later requests skip it without waiting for the failure detector.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import json

import msgpack

from legion import cluster_state as cs
from legion.cluster_state import ClusterState
from legion.engine import CoverageResult, NodeReply, PlacementView, WriteItem, WriteResult
from legion.errors import BadRequest, Conflict, DeadlineExceeded, LegionError, NotOwner, Overloaded, Unavailable
from legion.hints import hint_after_failure
from legion.idempotency import origin_for
from legion.keyspace import key_bytes, partition_of
from legion.limits import FORWARD_ATTEMPTS_MAX, REQUEST_DEADLINE_MS
from legion.replication import Operation, decode_apply_errors, encode_ops, read_quorum, write_quorum
from legion.runtime.batch_writer import BatchWriter
from legion.runtime.replica_sender import ReplicaSender
from legion.write_batch import owner_missed
from legion.routing import coverage_plan, forward_targets, live_nodes, placement_view, read_order, write_plan
from legion.runtime.node_view import LocalReplica, StateView

if TYPE_CHECKING:
    from legion.clock import HybridClock
    from legion.runtime.hinted_handoff import HintedHandoff

log = logging.getLogger(__name__)


class CoordinatorHost(StateView, LocalReplica, Protocol):
    """What the coordinator uses of its node (``legion.runtime.node_view``)."""

    clock: HybridClock
    hinted: HintedHandoff

    def member_attributes(self) -> dict[str, dict[str, str]]: ...

    def recent_state(self, digest: cs.Digest) -> ClusterState | None: ...

    def request_gossip(self) -> None: ...


SUSPECT_MS = 1_000
T = TypeVar("T")


class Coordinator:
    """This node's side of every client request: routing, fan-out, quorum, retries."""

    def __init__(self, node: CoordinatorHost) -> None:
        self.node = node
        self._suspects: dict[str, float] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._senders: dict[str, ReplicaSender] = {}
        self._batches = BatchWriter(self)
        self._plan_cache: tuple[ClusterState, frozenset[str], dict[str, list[int]]] | None = None

    @property
    def node_id(self) -> str:
        return self.node.node_id

    @property
    def partitions(self) -> int:
        return self.node.state.partitions

    def partition_of(self, key: bytes) -> int:
        return partition_of(key, self.partitions)

    def live(self) -> set[str]:
        now = time.monotonic()
        suspects = {n for n, until in self._suspects.items() if until > now}
        return live_nodes(self.node.state, suspects) | {self.node_id}

    def suspect(self, node_id: str) -> None:
        self._suspects[node_id] = time.monotonic() + SUSPECT_MS / 1000

    def current_state(self) -> ClusterState:
        return self.node.state

    def placement(self) -> PlacementView:
        return placement_view(self.node.state, self.live(), self.node.member_attributes())

    def stamp(self) -> int:
        return self.node.clock.now()

    # --- writes --------------------------------------------------------------

    async def write(
        self, engine: str, key: bytes, kind: str, body: bytes, *, w: int | None = None, refresh: bool = False
    ) -> WriteResult:
        if refresh:
            # Waits for every live replica to flush: the batch path, which sends straight
            # to each replica with the refresh flag, rather than the shared replica senders.
            [result] = await self.write_many(engine, [WriteItem(key, kind, body)], w=w, refresh=True)
            if isinstance(result, LegionError):
                raise result
            return result
        key = key_bytes(key)
        partition = self.partition_of(key)
        state = self.node.state
        plan = write_plan(state, partition, self.live(), self.node_id)
        need = write_quorum(w, plan.replicas)
        quorum = plan.quorum
        if len(quorum) < need:
            raise Unavailable(
                f"partition {partition}: {len(plan.counted)} of {plan.replicas} replicas are live "
                f"and {len(quorum) - len(plan.counted)} fallbacks can keep hints; the write needs {need}",
                partition=partition,
            )
        origin = origin_for(engine, key) or self.node_id  # the request's idempotency key names the write
        op = Operation(engine, partition, key, self.node.clock.now(), origin, kind, body)
        deadline = time.monotonic() + REQUEST_DEADLINE_MS / 1000
        counted = {n: asyncio.ensure_future(self._send_or_hint(n, op, deadline)) for n in plan.counted}
        uncounted: list[asyncio.Future[None]] = []
        counted_holders = plan.counted_holders
        for owner, holder in plan.hinted:
            task = asyncio.ensure_future(self._keep_hint(holder, owner, op, deadline))
            if holder in counted_holders and holder not in counted:
                counted[holder] = task
            else:
                uncounted.append(task)
        for n in plan.extra:
            self.keep(asyncio.ensure_future(self._send_or_hint(n, op, deadline)))
        acks, errors = await self._await_quorum(counted, need)
        if uncounted:
            # Not counted, but kept before answering: a restarted owner asks holders what it missed.
            await asyncio.wait(uncounted)
            for task in uncounted:
                if task.exception() is not None:
                    log.warning("keeping a hint for partition %d failed: %s", partition, task.exception())
        if acks < need:
            raise Unavailable(
                f"partition {partition}: only {acks} of {need} required replicas acknowledged the write "
                f"({'; '.join(errors)})",
                partition=partition,
            )
        return WriteResult(partition=partition, hlc=op.hlc, acks=acks, replicas=plan.replicas)

    async def write_many(
        self, engine: str, items: Sequence[WriteItem], *, w: int | None = None, refresh: bool = False
    ) -> list[WriteResult | LegionError]:
        return await self._batches.write_many(engine, items, w=w, refresh=refresh)

    async def apply_chunk(
        self, node_id: str, ops: Sequence[Operation], *, refresh: bool, timeout_ms: int, hint_for: str | None = None
    ) -> dict[int, LegionError]:
        """Log a chunk of a batch on one replica: this node's log writer, or a peer's ``/internal/apply``.

        With ``hint_for``, ``node_id`` keeps the chunk as hints for that owner instead."""
        if hint_for is not None:
            await self.send_hints(node_id, hint_for, ops, time.monotonic() + timeout_ms / 1000)
            return {}
        if node_id == self.node_id:
            try:
                return await asyncio.wait_for(self.node.accept_ops(list(ops), flush=refresh), timeout_ms / 1000)
            except asyncio.TimeoutError:
                raise DeadlineExceeded(f"{node_id} did not log the chunk within {timeout_ms} ms") from None
        url = self.node.state.url_of(node_id) + ("/internal/apply?refresh=1" if refresh else "/internal/apply")
        call = self.node.peers.call("POST", url, data=encode_ops(ops), timeout_ms=max(1, timeout_ms))
        return decode_apply_errors(await self._watch(node_id, call))

    async def _await_quorum(self, tasks: dict[str, asyncio.Future[None]], need: int) -> tuple[int, list[str]]:
        acks, errors = 0, []
        pending = set(tasks.values())
        names = {t: n for n, t in tasks.items()}
        while pending and acks < need:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                exc = task.exception()
                if exc is None:
                    acks += 1
                else:
                    errors.append(f"{names[task]}: {exc}")
        for task in pending:
            self.keep(task)
        return acks, errors

    def forward(self, ops: Sequence[Operation], sender: cs.Digest) -> None:
        """Send ``ops``, written by a coordinator that planned with state ``sender``, to the owners
        it could not know of (``routing.forward_targets``), in the background."""
        state = self.node.state
        if not cs.digest_newer(cs.digest(state), sender):
            return
        theirs, live = self.node.recent_state(sender), self.live()
        deadline = time.monotonic() + REQUEST_DEADLINE_MS / 1000
        targets: dict[int, tuple[str, ...]] = {}
        for op in ops:
            if op.partition not in targets:
                targets[op.partition] = forward_targets(state, theirs, op.partition, live, self.node_id)
            for node_id in targets[op.partition]:
                self.keep(asyncio.ensure_future(self._forward_one(node_id, op, deadline)))

    async def _forward_one(self, node_id: str, op: Operation, deadline: float) -> None:
        try:
            await self._send_or_hint(node_id, op, deadline)
        except LegionError as exc:
            log.info("forwarding a write of partition %d to %s failed: %s", op.partition, node_id, exc)

    async def _send_or_hint(self, node_id: str, op: Operation, deadline: float) -> None:
        """``_send_op``; when the owner could not take it, keep it as a hint here, then raise its failure."""
        try:
            await self._send_op(node_id, op, deadline)
        except LegionError as exc:
            if node_id != self.node_id and owner_missed(exc, self.node.state.epoch):
                await self.keep_hints_after_failure(node_id, [op])
            raise

    async def _keep_hint(self, holder: str, owner: str, op: Operation, deadline: float) -> None:
        """Have ``holder`` keep ``op`` as a hint for ``owner``; if it cannot (a fallback this node still
        believed live), this node keeps it, so the hint is never lost, and the failure is raised."""
        try:
            await self.send_hints(holder, owner, [op], deadline)
        except LegionError:
            if holder != self.node_id:
                await self.keep_hints_after_failure(owner, [op])
            raise

    async def keep_hints_after_failure(self, owner: str, ops: Sequence[Operation]) -> None:
        """Keep ``ops`` for ``owner``, whose send failed, on ``hint_after_failure``'s holder (this node)."""
        holder = hint_after_failure(self.node_id)
        try:
            await self.send_hints(holder, owner, ops, time.monotonic() + REQUEST_DEADLINE_MS / 1000)
        except LegionError as exc:
            log.warning("could not keep %d hints for %s: %s", len(ops), owner, exc)

    async def send_hints(self, holder: str, owner: str, ops: Sequence[Operation], deadline: float) -> None:
        """Have ``holder`` durably keep ``ops`` as hints for ``owner`` (this node's store, or a peer's ``/internal/hints``)."""
        if holder == self.node_id:
            await self.node.hinted.keep([(owner, op) for op in ops])
            return
        await self._peer(holder, "POST", f"/internal/hints?owner={owner}", deadline, data=encode_ops(ops))

    async def peer_json(self, node_id: str, method: str, path: str, body: Any = None) -> Any:
        """A JSON call to a peer within the request deadline; its decoded answer."""
        url = self.node.state.url_of(node_id) + path
        raw = await self._watch(node_id, self.node.peers.call(method, url, json_body=body, timeout_ms=REQUEST_DEADLINE_MS))
        return json.loads(raw)

    async def _send_op(self, node_id: str, op: Operation, deadline: float) -> None:
        if node_id == self.node_id:
            refused = await self.node.accept_ops([op])
            if refused:
                raise refused[0]
            return
        url = self.node.state.url_of(node_id)
        sender = self._senders.get(node_id)
        if sender is None or sender.url != url:
            sender = self._senders[node_id] = ReplicaSender(self.node.peers, url)
        await self._watch(node_id, sender.send(op, deadline))

    # --- reads ---------------------------------------------------------------

    async def read(self, engine: str, key: bytes, query: Any, *, r: int | None = None) -> list[Any]:
        key = key_bytes(key)
        partition = self.partition_of(key)
        state = self.node.state
        order = list(read_order(state, partition, self.live(), self.node_id))
        need = read_quorum(r, len(state.placement[partition]))
        deadline = time.monotonic() + REQUEST_DEADLINE_MS / 1000
        request: dict[str, Any] = {"engine": engine, "partition": partition, "query": query}
        if need > 1:
            request["version_of"] = key  # each replica also names its version of the key: read repair

        async def ask(node_id: str) -> tuple[str, Any]:
            return node_id, await self._read_one(node_id, request, deadline)

        replies, errors = await self._gather_first(order, need, ask)
        if len(replies) < need:
            raise Unavailable(
                f"partition {partition}: {len(replies)} of {need} required replicas answered "
                f"({'; '.join(errors) or 'no live replica'})",
                partition=partition,
            )
        if need == 1:
            return [reply for _, reply in replies]
        versions = {node_id: version for node_id, (_, version) in replies}
        if len(set(versions.values())) > 1:
            self.keep(asyncio.ensure_future(self._read_repair(engine, partition, key, sorted(versions))))
        return [value for _, (value, _) in replies]

    async def _read_repair(self, engine: str, partition: int, key: bytes, replicas: list[str]) -> None:
        """Replicas answered a read with different versions of ``key``: give each the operations every one
        of them holds for it (engines merge them as any write: the newest wins, increments are kept once)."""
        deadline = time.monotonic() + REQUEST_DEADLINE_MS / 1000
        held = await asyncio.gather(*(self._fold_key(n, engine, partition, key, deadline) for n in replicas))
        ops = sorted({op for found in held for op in found})
        if not ops:
            return
        body = encode_ops(ops)

        async def give(node_id: str) -> None:
            if node_id == self.node_id:
                refused = await self.node.accept_ops(ops)
            else:
                refused = decode_apply_errors(await self._peer(node_id, "POST", "/internal/apply", deadline, data=body))
            if refused:
                raise next(iter(refused.values()))

        await asyncio.gather(*(give(n) for n in replicas))
        self.node.metrics.read_repairs.labels(engine).inc()
        log.info("read repair of %s/%d key %r on %s", engine, partition, key[:64], ", ".join(replicas))

    async def _fold_key(self, node_id: str, engine: str, partition: int, key: bytes, deadline: float) -> list[Operation]:
        """The operations ``node_id``'s replica holds for ``key`` (``Engine.fold_keys``)."""
        if node_id == self.node_id:
            impl = self.node.check_holds(engine, partition)
            return await asyncio.to_thread(lambda: list(impl.fold_keys(partition, [key])))
        body = msgpack.packb({"engine": engine, "partition": partition, "keys": [key]}, use_bin_type=True)
        url = self.node.state.url_of(node_id) + "/internal/fold-keys"
        read_timeout_ms = max(1, int((deadline - time.monotonic()) * 1000))
        return [op async for ops in self.node.peers.stream_ops(url, data=body, read_timeout_ms=read_timeout_ms) for op in ops]

    async def _gather_first(
        self, order: list[str], need: int, ask: Callable[[str], Awaitable[Any]]
    ) -> tuple[list[Any], list[str]]:
        """Ask ``need`` candidates at once; replace each failure with the next candidate."""
        replies: list[Any] = []
        errors: list[str] = []
        queue = list(order)
        running: dict[asyncio.Future[Any], str] = {}
        while len(replies) < need and (queue or running):
            while queue and len(running) < need - len(replies):
                node_id = queue.pop(0)
                running[asyncio.ensure_future(ask(node_id))] = node_id
            done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                node_id = running.pop(task)
                exc = task.exception()
                if exc is None:
                    replies.append(task.result())
                else:
                    errors.append(f"{node_id}: {exc}")
        for task in running:
            task.cancel()
        return replies, errors

    async def _read_one(self, node_id: str, request: dict[str, Any], deadline: float) -> Any:
        if node_id == self.node_id:
            return await self.node.local_read(
                request["engine"], request["partition"], request["query"], version_of=request.get("version_of")
            )
        body = msgpack.packb(request, use_bin_type=True)
        raw = await self._peer(node_id, "POST", "/internal/read", deadline, data=body)
        return msgpack.unpackb(raw, raw=False)

    # --- coverage ------------------------------------------------------------

    async def coverage(
        self,
        engine: str,
        query: Any,
        *,
        partitions: Sequence[int] | None = None,
        prefer: Mapping[int, str] | None = None,
        deadline_ms: int | None = None,
        allow_partial: bool = False,
    ) -> CoverageResult:
        state = self.node.state
        todo = _check_partitions(partitions, state.partitions)
        deadline = time.monotonic() + _check_deadline_ms(deadline_ms) / 1000
        replies: list[NodeReply] = []
        served_by: dict[int, str] = {}
        failed: set[str] = set()
        unplaced: list[int] = []
        for _round in range(FORWARD_ATTEMPTS_MAX):
            if _round and time.monotonic() >= deadline:
                break  # no time left for another round: the rest is missing
            if partitions is None and prefer is None and not failed:
                plan = self._whole_keyspace_plan(state)
            else:
                plan = coverage_plan(state, self.live(), self.node_id, todo, avoid=frozenset(failed), prefer=prefer)
            unplaced.extend(plan.pop("", []))
            if not plan:
                todo = []
                break
            calls = {n: asyncio.ensure_future(self._coverage_one(n, engine, parts, query, deadline)) for n, parts in plan.items()}
            await asyncio.wait(calls.values())
            todo, refusals = [], []
            for node_id, task in calls.items():
                error = task.exception()
                if error is None:
                    replies.append(NodeReply(node_id, tuple(plan[node_id]), task.result()))
                    served_by.update(dict.fromkeys(plan[node_id], node_id))
                elif _is_node_failure(error):
                    failed.add(node_id)
                    todo.extend(plan[node_id])
                else:
                    refusals.append(error)
            if refusals:
                raise refusals[0]  # the request itself is bad: every replica would refuse it
            if not todo:
                break
        missing = tuple(sorted(unplaced + todo))
        if missing and not allow_partial:
            shown = ", ".join(map(str, missing[:20])) + (", …" if len(missing) > 20 else "")
            raise Unavailable(
                f"no live replica answered for {len(missing)} partitions ({shown}); failed: {sorted(failed) or 'none'}",
                partitions=list(missing),
            )
        return CoverageResult(replies=tuple(replies), served_by=served_by, missing=missing)

    def _whole_keyspace_plan(self, state: ClusterState) -> dict[str, list[int]]:
        """``coverage_plan`` of every partition, remembered while the state and the live nodes stay the same.

        Planning 64 partitions costs a good part of a small search; most searches ask the same plan."""
        live = frozenset(self.live())
        cached = self._plan_cache
        if cached is None or cached[0] is not state or cached[1] != live:
            cached = self._plan_cache = (state, live, coverage_plan(state, set(live), self.node_id))
        return {node: list(partitions) for node, partitions in cached[2].items()}  # the caller consumes it

    async def _coverage_one(self, node_id: str, engine: str, partitions: list[int], query: Any, deadline: float) -> Any:
        if node_id == self.node_id:
            # Bounded like a peer call: the deadline holds for the local share too.
            try:
                return await asyncio.wait_for(
                    self.node.local_coverage(engine, partitions, query), max(0.0, deadline - time.monotonic())
                )
            except asyncio.TimeoutError:
                raise DeadlineExceeded(f"{node_id} did not answer its coverage share before the deadline") from None
        body = msgpack.packb({"engine": engine, "partitions": partitions, "query": query}, use_bin_type=True)
        raw = await self._peer(node_id, "POST", "/internal/coverage", deadline, data=body)
        return msgpack.unpackb(raw, raw=False)

    # --- peers ---------------------------------------------------------------

    async def _peer(self, node_id: str, method: str, path: str, deadline: float, data: bytes) -> bytes:
        remaining_ms = int((deadline - time.monotonic()) * 1000)
        if remaining_ms <= 0:
            raise DeadlineExceeded(f"deadline passed before contacting {node_id}")
        url = self.node.state.url_of(node_id) + path
        return await self._watch(node_id, self.node.peers.call(method, url, data=data, timeout_ms=remaining_ms))

    async def _watch(self, node_id: str, call: Awaitable[T]) -> T:
        """Await a call to a peer, learning from its failure: suspect it if unreachable;
        refresh our cluster state if it says it does not own what we think it owns."""
        try:
            return await call
        except (Unavailable, DeadlineExceeded):
            self.suspect(node_id)
            raise
        except NotOwner:
            self.node.request_gossip()
            raise

    def close(self) -> None:
        for sender in self._senders.values():
            sender.close()

    def keep(self, task: asyncio.Future[Any]) -> None:
        """Let a task finish in the background, logging rather than losing its failure."""
        self._background.add(task)

        def done(t: asyncio.Future[Any]) -> None:
            self._background.discard(t)
            if not t.cancelled() and t.exception() is not None and not isinstance(t.exception(), LegionError):
                log.warning("background replica write failed: %r", t.exception())

        task.add_done_callback(done)


def _is_node_failure(error: BaseException) -> bool:
    """A failure of the node asked, not of the request: another replica may answer.

    Unreachable, slow, overloaded, re-syncing (Unavailable), no longer an owner
    (a Conflict), or failing with an internal error; not a refusal of the query."""
    if not isinstance(error, LegionError):
        return False
    return isinstance(error, (Unavailable, DeadlineExceeded, Conflict, Overloaded)) or error.http_status >= 500


def _check_partitions(partitions: Sequence[int] | None, count: int) -> list[int]:
    if partitions is None:
        return list(range(count))
    chosen = list(partitions)
    if not all(isinstance(p, int) and not isinstance(p, bool) and 0 <= p < count for p in chosen):
        raise BadRequest(f"coverage partitions must be integers in 0..{count - 1}")
    if len(set(chosen)) != len(chosen):
        raise BadRequest("coverage partitions must not repeat")
    return chosen


def _check_deadline_ms(deadline_ms: int | None) -> int:
    if deadline_ms is None:
        return REQUEST_DEADLINE_MS
    if not isinstance(deadline_ms, int) or isinstance(deadline_ms, bool) or deadline_ms <= 0:
        raise BadRequest(f"deadline_ms must be a positive integer, got {deadline_ms!r}")
    return deadline_ms
