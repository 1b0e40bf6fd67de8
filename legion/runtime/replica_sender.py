"""Replica senders: operations bound for one peer travel together.

I/O. Under load many writes are in flight at once; sending each to each
replica as its own HTTP request would make the per-request cost of HTTP the
bottleneck. A ``ReplicaSender`` per peer queues operations and ships whatever
has accumulated as one ``/internal/apply`` request (up to
``WRITE_BATCH_OPS_MAX`` operations, a few requests in flight at a time), so the
batch size grows with the load and stays at one operation when idle. The peer
answers per operation, so one refused operation fails alone.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from legion.errors import DeadlineExceeded, LegionError, Overloaded
from legion.limits import WRITE_BATCH_OPS_MAX, WRITE_QUEUE_OPS_MAX
from legion.replication import Operation, decode_apply_errors, encode_ops

if TYPE_CHECKING:
    from legion.runtime.transport import PeerClient

IN_FLIGHT_MAX = 1


@dataclass
class _Pending:
    op: Operation
    deadline: float
    future: asyncio.Future[None]


class ReplicaSender:
    """Batches operations to one peer; ``send`` resolves when the peer made the operation durable."""

    def __init__(self, peers: PeerClient, url: str) -> None:
        self._peers = peers
        self.url = url
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue(maxsize=WRITE_QUEUE_OPS_MAX)
        self._slots = asyncio.Semaphore(IN_FLIGHT_MAX)
        self._task: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[None]] = set()

    async def send(self, op: Operation, deadline: float) -> None:
        if self._task is None:
            # An empty context: the sender outlives the request that started it and
            # ships many requests' operations together, so it carries no one's request id.
            self._task = asyncio.create_task(
                self._run(), name=f"replica-sender {self.url}", context=contextvars.Context()
            )
        future = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait(_Pending(op, deadline, future))
        except asyncio.QueueFull:
            raise Overloaded(f"too many writes queued for {self.url}") from None
        await future

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        for task in self._inflight:
            task.cancel()

    async def _run(self) -> None:
        while True:
            first = await self._queue.get()
            await self._slots.acquire()
            batch = [first]
            while len(batch) < WRITE_BATCH_OPS_MAX and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            task = asyncio.create_task(self._ship(batch))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)

    async def _ship(self, batch: list[_Pending]) -> None:
        try:
            now = time.monotonic()
            live = [p for p in batch if p.deadline > now and not p.future.done()]
            for p in batch:
                if p not in live and not p.future.done():
                    p.future.set_exception(DeadlineExceeded(f"deadline passed before sending to {self.url}"))
            if not live:
                return
            timeout_ms = int((min(p.deadline for p in live) - now) * 1000)
            try:
                raw = await self._peers.call(
                    "POST", self.url + "/internal/apply", data=encode_ops(p.op for p in live), timeout_ms=max(1, timeout_ms)
                )
                errors = decode_apply_errors(raw)
            except LegionError as exc:
                errors = {i: exc for i in range(len(live))}
            for i, p in enumerate(live):
                if p.future.done():
                    continue
                if i in errors:
                    p.future.set_exception(errors[i])
                else:
                    p.future.set_result(None)
        finally:
            self._slots.release()

