"""The log writer: one thread that logs operations durably and applies them.

I/O. Every operation a node accepts goes through here: the writer drains its
bounded queue, appends everything queued to the operation log in a single
SQLite transaction (group commit — one commit per batch, not per request),
then hands each partition's share to its engine's ``apply``. Only then are
the waiting requests acknowledged. Opening, replaying and dropping partitions
run on the same thread, so they never race an ``apply`` (the engine contract
promises engines that ``apply`` is never called concurrently).

The event loop never blocks on SQLite or on engine code: ``submit`` parks a
future that the writer thread resolves with ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import shutil
import threading
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from legion.engine import Engine
from legion.errors import BadRequest, LegionError, Overloaded
from legion.limits import WRITE_BATCH_OPS_MAX, WRITE_QUEUE_OPS_MAX
from legion.replication import Operation
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

    def __init__(self, store: NodeStore, engines: dict[str, Engine], data_dir: Path) -> None:
        self.store = store
        self.engines = engines
        self.data_dir = data_dir
        self._queue: queue.Queue[_Writes | _Control | _Stop] = queue.Queue(maxsize=WRITE_QUEUE_OPS_MAX)
        self._gathering: list[_Write] = []
        self._open: set[tuple[str, int]] = set()
        self._applied: dict[tuple[str, int], int] = {}
        self._thread = threading.Thread(target=self._run, name="legion-log-writer", daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None

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

    async def ensure_open(self, engine: str, partition: int) -> None:
        if (engine, partition) not in self._open:
            await self._control(lambda: self._open_partition(engine, partition))

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
            item = self._queue.get()
            if isinstance(item, _Stop):
                self._close_all()
                item.done.set()
                return
            if isinstance(item, _Control):
                self._run_control(item)
                continue
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

    def _run_control(self, item: _Control) -> None:
        try:
            self._resolve(item.future, item.action(), None)
        except LegionError as exc:
            self._resolve(item.future, None, exc)
        except Exception as exc:  # an engine bug must fail the request, not kill the writer
            log.exception("partition control action failed")
            self._resolve(item.future, None, exc)

    def _write_batch(self, writes: list[_Write]) -> None:
        failures: dict[tuple[str, int], BaseException] = {}
        for w in writes:
            for op in w.ops:
                key = (op.engine, op.partition)
                if key not in self._open and key not in failures:
                    try:
                        self._open_partition(*key)
                    except Exception as exc:
                        log.exception("opening partition %s failed", key)
                        failures[key] = exc
        ops = [op for w in writes for op in w.ops if (op.engine, op.partition) not in failures]
        try:
            seqs = self.store.append(ops, self._applied)
        except Exception as exc:
            log.exception("appending to the operation log failed")
            for w in writes:
                self._resolve(w.future, None, exc)
            return
        self._applied.clear()
        by_partition: dict[tuple[str, int], list[Operation]] = defaultdict(list)
        last_seq: dict[tuple[str, int], int] = {}
        for op, seq in zip(ops, seqs):
            by_partition[(op.engine, op.partition)].append(op)
            last_seq[(op.engine, op.partition)] = seq
        by_engine: dict[str, dict[int, list[Operation]]] = defaultdict(dict)
        for (engine, partition), part_ops in by_partition.items():
            by_engine[engine][partition] = part_ops
        flush_wanted = {(op.engine, op.partition) for w in writes if w.flush for op in w.ops}
        for engine, batch in by_engine.items():
            try:
                self.engines[engine].apply_batch(batch)
                wanted = [p for p in batch if (engine, p) in flush_wanted]
                if wanted and not self.engines[engine].durable_on_apply:
                    self.engines[engine].flush(wanted)
                self._applied.update({(engine, p): last_seq[(engine, p)] for p in batch})
            except Exception as exc:
                # Logged but not applied: a restart replays it; the writer answers with the error.
                log.exception("engine %s failed to apply a batch", engine)
                failures.update({(engine, p): exc for p in batch})
        for w in writes:
            error = next((failures[(o.engine, o.partition)] for o in w.ops if (o.engine, o.partition) in failures), None)
            self._resolve(w.future, None, error)

    def _open_partition(self, engine: str, partition: int) -> None:
        if (engine, partition) in self._open:
            return
        directory = self.partition_dir(engine, partition)
        directory.mkdir(parents=True, exist_ok=True)
        self.engines[engine].open(partition, directory)
        self._open.add((engine, partition))
        self._replay(engine, partition)

    def _replay(self, engine: str, partition: int) -> None:
        """Re-apply logged operations the engine may not have applied before a crash."""
        batch: list[Operation] = []
        last = 0
        for seq, op in self.store.ops_after(engine, partition, self.store.applied_seq(engine, partition)):
            batch.append(op)
            last = seq
            if len(batch) >= REPLAY_BATCH_OPS:
                self.engines[engine].apply(partition, batch)
                batch = []
        if batch:
            self.engines[engine].apply(partition, batch)
        if last:
            self._applied[(engine, partition)] = max(last, self._applied.get((engine, partition), 0))

    def _drop_partition(self, engine: str, partition: int) -> None:
        if (engine, partition) in self._open:
            self.engines[engine].drop(partition)
            self.engines[engine].close(partition)
            self._open.discard((engine, partition))
        self._applied.pop((engine, partition), None)
        self.store.drop_partition(engine, partition)
        shutil.rmtree(self.partition_dir(engine, partition), ignore_errors=True)

    def _close_all(self) -> None:
        if self._applied:
            self.store.append([], self._applied)
            self._applied.clear()
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
