"""The log writer: one thread that logs operations durably and applies them.

I/O. Every operation a node accepts goes through here: the writer drains its
bounded queue, appends everything queued to the operation log in a single
SQLite transaction (group commit — one commit per batch, not per request),
then hands each partition's share to its engine's ``apply``. Only then are
the waiting requests acknowledged. Opening, replaying and dropping partitions
run on the same thread, so they never race an ``apply`` (the engine contract
promises engines that ``apply`` is never called concurrently).

Each partition has a checkpoint (``legion.checkpoints``): the contiguous
prefix of its log that its engine holds durably, recorded in the node
database. For an engine that is durable on apply (KV) the checkpoint moves
when ``apply_batch`` returns. An engine with ``durable_on_apply = False``
makes applied operations durable in ``flush``, which the writer calls — for
those engines only — ``FLUSH_INTERVAL_MS`` after the oldest unflushed apply
(the queue wait times out for it), as soon as ``FLUSH_OPS_MAX`` operations
await a flush, before acknowledging a write submitted with ``flush``, after
a replay, and before ``drop`` and ``close``; the checkpoint moves only once
``flush`` returns. Acknowledged writes are durable either way: in the log.

When an engine's ``apply_batch`` (or ``flush``) raises, the requests waiting on
it get the error, but their operations stay logged: the checkpoint stays below
them and the writer re-applies the partition's log from the checkpoint (and
flushes) on a later round, with a capped backoff, until that succeeds. Opening
a partition replays its log above the checkpoint the same way.

Log rows at or below their partition's checkpoint are compacted in bounded
passes (``COMPACT_BATCH_OPS_MAX`` rows, every ``COMPACT_INTERVAL_MS`` while some
wait), which also record moved checkpoints; group commits record them too.
The writer wakes for flushes, re-applies and compaction with a timeout on its
queue wait, computed from ``legion.checkpoints``.

The event loop never blocks on SQLite or on engine code: ``submit`` parks a
future that the writer thread resolves with ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import shutil
import sqlite3
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from legion.checkpoints import Checkpoints, Key
from legion.engine import Engine, PartitionSnapshot
from legion.errors import BadRequest, LegionError, Overloaded, Unavailable
from legion.limits import COMPACT_BATCH_OPS_MAX, WRITE_BATCH_OPS_MAX, WRITE_QUEUE_OPS_MAX
from legion.replication import Operation
from legion.runtime.node_metrics import NodeMetrics
from legion.runtime.storage import NodeStore

log = logging.getLogger(__name__)

REPLAY_BATCH_OPS = 1_000


@dataclass
class _Write:
    ops: Sequence[Operation]
    future: asyncio.Future[None]
    flush: bool = False


@dataclass
class _Writes:
    """The writes gathered in one event-loop turn."""

    writes: list[_Write]


@dataclass
class _Control:
    action: Callable[[], Any]
    future: asyncio.Future[Any]


@dataclass
class _Stop:
    done: threading.Event = field(default_factory=threading.Event)


class LogWriter:
    """Owns the open partitions of every engine on this node and the path writes take into them."""

    def __init__(
        self, store: NodeStore, engines: dict[str, Engine], data_dir: Path, metrics: NodeMetrics | None = None
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.engines = engines
        self.data_dir = data_dir
        self._queue: queue.Queue[_Writes | _Control | _Stop] = queue.Queue(maxsize=WRITE_QUEUE_OPS_MAX)
        self._gathering: list[_Write] = []
        self._open: set[tuple[str, int]] = set()
        self._checkpoints = Checkpoints()
        self._thread = threading.Thread(target=self._run, name="legion-log-writer", daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        # Partitions with writes this node could not log (a full or failing disk): it must
        # re-sync them from a peer. Filled by the writer thread, taken on the event loop.
        self._missed: set[int] = set()
        self._missed_lock = threading.Lock()
        self.on_missed: Callable[[], None] | None = None
        # Anti-entropy's hash trees (``legion.runtime.anti_entropy.ReplicaTrees``): told, on this
        # thread, what each apply touched and which partitions were opened or dropped.
        self.on_applied: Callable[[str, dict[int, list[Operation]]], None] | None = None
        self.on_reset: Callable[[str, int], None] | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread.start()

    def stop(self) -> None:
        stop = _Stop()
        self._queue.put(stop)
        stop.done.wait(timeout=30)

    def is_open(self, engine: str, partition: int) -> bool:
        return (engine, partition) in self._open

    def open_partitions(self) -> set[tuple[str, int]]:
        return set(self._open)

    def take_missed(self) -> set[int]:
        """The partitions with writes that could not be logged since the last call."""
        with self._missed_lock:
            missed, self._missed = self._missed, set()
        return missed

    def is_behind(self, engine: str, partition: int) -> bool:
        """Whether an apply (or flush) of the partition failed and awaits its retry: its state lags its log."""
        return self._checkpoints.is_broken((engine, partition))

    def partition_dir(self, engine: str, partition: int) -> Path:
        return self.data_dir / "engines" / engine / f"{partition:04d}"

    async def submit(self, ops: Sequence[Operation], *, flush: bool = False) -> None:
        """Log and apply ``ops``; return once they are durable. Overloaded if the queue is full.

        With ``flush``, engines that defer durability also flush the partitions
        ``ops`` touched before this returns (a write that must be visible when acknowledged).
        Submissions made in the same event-loop turn travel to the writer thread
        together: one queue hand-off (and one thread wake-up) for all of them."""
        for op in ops:
            if op.engine not in self.engines:
                raise BadRequest(f"unknown engine {op.engine!r}")
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if not self._gathering:
            if self._queue.full():
                raise Overloaded("this node's write queue is full; retry with backoff")
            loop.call_soon(self._hand_over)
        self._gathering.append(_Write(ops, future, flush))
        await future

    def _hand_over(self) -> None:
        writes, self._gathering = self._gathering, []
        try:
            self._queue.put_nowait(_Writes(writes))
        except queue.Full:
            error = Overloaded("this node's write queue is full; retry with backoff")
            for w in writes:
                if not w.future.done():
                    w.future.set_exception(error)

    async def barrier(self) -> None:
        """Return once every write submitted before this call was logged and applied (or failed)."""
        await self._control(lambda: None)

    async def ensure_open(self, engine: str, partition: int) -> None:
        if (engine, partition) not in self._open:
            await self._control(lambda: self._open_partition(engine, partition))

    async def flush(self, engine: str, partitions: list[int]) -> None:
        """Make what ``engine`` applied to ``partitions`` durable and visible now (a no-op for a durable engine).

        A handoff receiver calls it after copying a partition, so that the copy is
        searchable before the partition is reported ready and served from here."""
        if self.engines[engine].durable_on_apply:
            return

        def flush_now() -> None:
            error = self._flush(engine, partitions, _now_ms())
            if error is not None:
                raise error

        await self._control(flush_now)

    async def snapshot(self, engine: str, partition: int, into: Path) -> PartitionSnapshot | None:
        """Flush ``partition``, then have ``engine`` hard-link its files under ``into`` (``Engine.snapshot``).

        On the writer thread, so no apply runs between the flush and the links:
        the snapshot holds every operation applied before it."""

        def take() -> PartitionSnapshot | None:
            self._open_partition(engine, partition)
            if self.is_behind(engine, partition):
                raise Unavailable(f"partition {partition} of {engine} lags its log here (an apply failed); retry shortly")
            impl = self.engines[engine]
            if not impl.durable_on_apply and (error := self._flush(engine, [partition], _now_ms())) is not None:
                raise error
            into.mkdir(parents=True)
            return impl.snapshot(partition, into)

        return await self._control(take)

    async def install(self, engine: str, partition: int, directory: Path, snapshot: PartitionSnapshot) -> None:
        """Have ``engine`` merge a received snapshot's files into ``partition`` (``Engine.install``), then flush it."""

        def put_in() -> None:
            self._open_partition(engine, partition)
            impl = self.engines[engine]
            impl.install(partition, directory, snapshot)
            if self.on_reset is not None:
                self.on_reset(engine, partition)  # the files came in without apply: list the partition again
            if not impl.durable_on_apply and (error := self._flush(engine, [partition], _now_ms())) is not None:
                raise error

        await self._control(put_in)

    async def drop(self, engine: str, partition: int) -> None:
        """Close a partition and delete its state and log (it now lives on other nodes)."""
        await self._control(lambda: self._drop_partition(engine, partition))

    async def _control(self, action: Callable[[], Any]) -> Any:
        future = asyncio.get_running_loop().create_future()
        self._put(_Control(action, future))
        return await future

    def _put(self, item: _Control) -> None:
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            raise Overloaded("this node's write queue is full; retry with backoff") from None

    # --- the writer thread -------------------------------------------------

    def _run(self) -> None:
        while True:
            item = self._next_item()
            if isinstance(item, _Stop):
                self._close_all()
                item.done.set()
                return
            if isinstance(item, _Control):
                self._run_control(item)
            elif isinstance(item, _Writes):
                self._run_writes(item)
            self._run_due(_now_ms())

    def _next_item(self) -> _Writes | _Control | _Stop | None:
        """The next queued item, or None once something the checkpoints wait for is due."""
        wake_ms = self._checkpoints.next_wake_ms()
        timeout_s = None if wake_ms is None else max(0, wake_ms - _now_ms()) / 1000
        try:
            return self._queue.get(timeout=timeout_s)
        except queue.Empty:
            return None

    def _run_writes(self, item: _Writes) -> None:
        """Group-commit ``item`` with whatever else is queued (up to a batch); run a control met on the way."""
        writes, deferred = list(item.writes), None
        count = sum(len(w.ops) for w in writes)
        while count < WRITE_BATCH_OPS_MAX:
            try:
                nxt = self._queue.get_nowait()
            except queue.Empty:
                break
            if not isinstance(nxt, _Writes):
                deferred = nxt
                break
            writes.extend(nxt.writes)
            count += sum(len(w.ops) for w in nxt.writes)
        self._write_batch(writes)
        if isinstance(deferred, _Stop):
            self._queue.put(deferred)
        elif deferred is not None:
            self._run_control(deferred)

    def _run_due(self, now_ms: int) -> None:
        """Re-apply the partitions whose retry is due; flush the engines whose flush is due."""
        wake_ms = self._checkpoints.next_wake_ms()
        if wake_ms is None or wake_ms > now_ms:
            return
        for key in self._checkpoints.reapply_due(now_ms):
            self._reapply(key, now_ms)
        for engine in self._checkpoints.flushes_due(now_ms):
            self._flush(engine, self._checkpoints.unflushed(engine), now_ms)
        if self._checkpoints.compaction_due(now_ms):
            self._compact(now_ms)

    def _compact(self, now_ms: int) -> None:
        """One bounded pass deleting log rows at or below their partition's checkpoint."""
        # The moved checkpoints are recorded in the same transaction, so none is below a deleted row.
        checkpoints = self._checkpoints.unpersisted()
        try:
            done, rows = self.store.compact(checkpoints, self._checkpoints.compaction_targets(), COMPACT_BATCH_OPS_MAX)
        except sqlite3.Error:
            log.exception("compacting the operation log failed; will retry")
            self._checkpoints.compaction_failed(now_ms)
            return
        self._checkpoints.persisted(checkpoints)
        self._checkpoints.compacted(done, rows, now_ms)

    def _run_control(self, item: _Control) -> None:
        try:
            self._resolve(item.future, item.action(), None)
        except LegionError as exc:
            self._resolve(item.future, None, exc)
        except Exception as exc:  # an engine bug must fail the request, not kill the writer
            log.exception("partition control action failed")
            self._resolve(item.future, None, exc)

    def _write_batch(self, writes: list[_Write]) -> None:
        started = time.perf_counter()
        failures = self._open_for(writes)
        ops = [op for w in writes for op in w.ops]
        if failures:
            ops = [op for op in ops if (op.engine, op.partition) not in failures]
        checkpoints = self._checkpoints.unpersisted()
        try:
            seqs = self.store.append(ops, checkpoints)
        except Exception as exc:
            log.exception("appending to the operation log failed")
            self._note_missed({op.partition for w in writes for op in w.ops})
            for w in writes:
                self._resolve(w.future, None, exc)
            return
        self._checkpoints.persisted(checkpoints)
        by_engine: dict[str, dict[int, list[Operation]]] = defaultdict(dict)
        last_seq: dict[Key, int] = {}
        for op, seq in zip(ops, seqs):
            by_engine[op.engine].setdefault(op.partition, []).append(op)
            last_seq[(op.engine, op.partition)] = seq
        now_ms = _now_ms()
        for engine, batch in by_engine.items():
            self._apply(engine, batch, last_seq, now_ms, failures)
        flush_failures = self._flush_for(writes, failures, now_ms)
        if self.metrics is not None:
            logged = {engine: sum(map(len, batch.values())) for engine, batch in by_engine.items()}
            self.metrics.observe_group_commit(logged, time.perf_counter() - started)
        for w in writes:
            error = None
            if failures or flush_failures:
                keys = [(o.engine, o.partition) for o in w.ops]
                error = next((failures[k] for k in keys if k in failures), None)
                if error is None and w.flush:
                    error = next((flush_failures[k] for k in keys if k in flush_failures), None)
            self._resolve(w.future, None, error)

    def _note_missed(self, partitions: set[int]) -> None:
        with self._missed_lock:
            self._missed |= partitions
        if self.on_missed is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self.on_missed)

    def _apply(
        self,
        engine: str,
        batch: dict[int, list[Operation]],
        last_seq: dict[Key, int],
        now_ms: int,
        failures: dict[Key, BaseException],
    ) -> None:
        """One engine's share of a group commit; a failure is recorded in ``failures``, per partition."""
        impl = self.engines[engine]
        try:
            impl.apply_batch(batch)
        except Exception as exc:
            # Logged but not applied: the checkpoint stays below it and the writer re-applies
            # the log from there later (or a restart replays it); the requests get the error.
            log.exception("engine %s failed to apply a batch; its partitions will be re-applied", engine)
            for p in batch:
                failures[(engine, p)] = exc
                self._checkpoints.failed((engine, p), now_ms)
            return
        if self.on_applied is not None:
            self.on_applied(engine, batch)
        if self.metrics is not None:
            self.metrics.observe_applied(engine, sum(map(len, batch.values())))
        deferred = not impl.durable_on_apply
        for p, ops in batch.items():
            self._checkpoints.applied((engine, p), last_seq[(engine, p)], len(ops), deferred=deferred, now_ms=now_ms)

    def _flush_for(
        self, writes: list[_Write], failures: dict[Key, BaseException], now_ms: int
    ) -> dict[Key, BaseException]:
        """Flush what writes submitted with ``flush`` touched, before they are acknowledged; what failed.

        A broken partition is re-applied (which ends with a flush) instead: flushing
        alone would leave the operations it failed to apply invisible."""
        wanted: dict[str, set[int]] = defaultdict(set)
        for w in writes:
            if w.flush:
                for op in w.ops:
                    if (op.engine, op.partition) not in failures and not self.engines[op.engine].durable_on_apply:
                        wanted[op.engine].add(op.partition)
        errors: dict[Key, BaseException] = {}
        for engine, partitions in wanted.items():
            ready = []
            for p in sorted(partitions):
                if not self._checkpoints.is_broken((engine, p)):
                    ready.append(p)
                elif (error := self._reapply((engine, p), now_ms)) is not None:
                    errors[(engine, p)] = error
            if ready and (error := self._flush(engine, ready, now_ms)) is not None:
                errors.update({(engine, p): error for p in ready})
        return errors

    def _flush(self, engine: str, partitions: list[int], now_ms: int) -> BaseException | None:
        """``engine.flush(partitions)``; their checkpoints move if it returns. The engine's error if it raised."""
        try:
            self.engines[engine].flush(partitions)
        except Exception as exc:
            log.exception("engine %s failed to flush partitions %s; they will be re-applied", engine, partitions)
            for p in partitions:
                self._checkpoints.failed((engine, p), now_ms)
            return exc
        self._checkpoints.flushed(engine, partitions)
        return None

    def _open_for(self, writes: list[_Write]) -> dict[Key, BaseException]:
        """Open every partition ``writes`` name; the ones that failed to open, with why."""
        failures: dict[Key, BaseException] = {}
        wanted = {(op.engine, op.partition) for w in writes for op in w.ops}
        for key in sorted(wanted - self._open):
            try:
                self._open_partition(*key)
            except Exception as exc:
                log.exception("opening partition %s failed", key)
                failures[key] = exc
        return failures

    def _open_partition(self, engine: str, partition: int) -> None:
        if (engine, partition) in self._open:
            return
        checkpoint = self.store.checkpoint(engine, partition)
        directory = self.partition_dir(engine, partition)
        directory.mkdir(parents=True, exist_ok=True)
        self.engines[engine].open(partition, directory)
        self._open.add((engine, partition))
        if self.on_reset is not None:
            self.on_reset(engine, partition)
        self._checkpoints.opened((engine, partition), checkpoint)
        # The replay: re-apply what the engine may not hold durably. If it fails, the
        # partition is open but broken, and the writer retries later (see _reapply).
        self._reapply((engine, partition), _now_ms())

    def _reapply(self, key: Key, now_ms: int) -> BaseException | None:
        """Apply ``key``'s whole log above its checkpoint again (then flush it, for a deferred engine).

        On success the checkpoint moves to the end of the log.

        Returns the engine's error if it raised (the partition then stays broken and is retried)."""
        engine, partition = key
        impl = self.engines[engine]
        last = start = self._checkpoints.checkpoint(key)
        count = 0
        try:
            while page := self.store.ops_after(engine, partition, last, REPLAY_BATCH_OPS):
                ops = [op for _, op in page]
                impl.apply(partition, ops)
                if self.on_applied is not None:
                    self.on_applied(engine, {partition: ops})
                last, count = page[-1][0], count + len(page)
            if last > start and not impl.durable_on_apply:
                impl.flush([partition])
        except Exception as exc:
            log.exception("re-applying %s/%d from seq %d failed; will retry", engine, partition, start)
            self._checkpoints.failed(key, now_ms)
            return exc
        self._checkpoints.reapplied(key, last, count)
        if self.metrics is not None and count:
            self.metrics.observe_applied(engine, count)
        return None

    def _drop_partition(self, engine: str, partition: int) -> None:
        if (engine, partition) in self._open:
            if not self.engines[engine].durable_on_apply:
                self.engines[engine].flush([partition])  # the contract promises it before drop
            self.engines[engine].drop(partition)
            self.engines[engine].close(partition)
            self._open.discard((engine, partition))
        self._checkpoints.forget((engine, partition))
        if self.on_reset is not None:
            self.on_reset(engine, partition)
        self.store.drop_partition(engine, partition)
        shutil.rmtree(self.partition_dir(engine, partition), ignore_errors=True)

    def _close_all(self) -> None:
        now_ms = _now_ms()
        for engine, impl in self.engines.items():
            partitions = sorted(p for e, p in self._open if e == engine)
            if partitions and not impl.durable_on_apply:
                self._flush(engine, partitions, now_ms)  # a failure is logged; a restart replays the log
        checkpoints = self._checkpoints.unpersisted()
        if checkpoints:
            self.store.append([], checkpoints)
            self._checkpoints.persisted(checkpoints)
        for engine, partition in sorted(self._open):
            try:
                self.engines[engine].close(partition)
            except Exception:
                log.exception("closing %s/%d failed", engine, partition)
        self._open.clear()

    def _resolve(self, future: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
        assert self._loop is not None

        def settle() -> None:
            if future.done():
                return
            if error is None:
                future.set_result(value)
            else:
                future.set_exception(error)

        self._loop.call_soon_threadsafe(settle)


def _now_ms() -> int:
    return int(time.monotonic() * 1000)
