"""The discrete-event kernel under the Legion simulator: a fake clock, processes and a lossy network.

Pure and deterministic: no threads, no asyncio, no wall clock, no sockets. Time
is an integer count of milliseconds that jumps from one event to the next; every
random choice (message delay, loss) comes from the one ``random.Random`` the
kernel is given, and events due at the same millisecond run in the order they
were scheduled. The same seed therefore replays the same run, event for event.

A *process* is a generator that yields commands and is resumed with their
outcome, the way an asyncio task awaits:

- ``reply = yield Call(dst, kind, body, timeout_ms)`` sends a request and
  resumes with the reply, or raises the ``LegionError`` the call failed with
  (``DeadlineExceeded`` when no reply came in time, ``Unavailable`` when the
  destination refused the connection because it is down);
- ``yield Sleep(ms, wake="gossip")`` waits, cut short by ``Kernel.wake`` on that
  channel (an ``asyncio.Event`` the process clears itself);
- ``results = yield Gather((generator, ...))`` runs child processes
  concurrently and resumes when all have returned.

Every process belongs to one incarnation of an ``Endpoint``: ``Kernel.kill``
ends all of them at once (``kill -9``), and replies reaching a later
incarnation are dropped. A request is served by the handler its destination
returns for the request's kind: the handler returns the reply, or a generator
(a process whose return value is the reply), or raises ``LegionError`` for an
error reply. Requests and replies each travel with a random delay, may be lost,
and are lost when a network split separates the two ends.
"""

from __future__ import annotations

import heapq
import inspect
import random
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

from legion.errors import DeadlineExceeded, LegionError, NotFound, Unavailable

Process = Generator[Any, Any, Any]
Settle = Callable[[Any, "LegionError | None"], None]


@dataclass(frozen=True, slots=True)
class Call:
    """A request to endpoint ``dst``, failing with ``DeadlineExceeded`` after ``timeout_ms``."""

    dst: str
    kind: str
    body: Any
    timeout_ms: int


@dataclass(frozen=True, slots=True)
class Sleep:
    """Wait ``ms``, or less if ``wake`` names a channel that is (or gets) set."""

    ms: int
    wake: str | None = None


@dataclass(frozen=True, slots=True)
class Gather:
    """Run ``processes`` concurrently on the same endpoint; resume with their results in order."""

    processes: tuple[Process, ...]


class Endpoint:
    """Something that sends and serves requests: a simulated node, or the operator."""

    def __init__(self, endpoint_id: str) -> None:
        self.id = endpoint_id
        self.running = True
        self.incarnation = 0
        self.flags: set[str] = set()
        self.sleepers: dict[str, Callable[[], None]] = {}

    def handler(self, kind: str) -> Callable[[str, Any], Any]:
        """The handler for requests of ``kind``: ``handler(src_id, body)``."""
        raise NotFound(f"{self.id} serves no {kind!r} requests")


class _Task:
    """One running process, bound to its endpoint's incarnation at spawn time."""

    __slots__ = ("endpoint", "incarnation", "gen", "token", "on_done")

    def __init__(self, endpoint: Endpoint, gen: Process, on_done: Settle | None) -> None:
        self.endpoint = endpoint
        self.incarnation = endpoint.incarnation
        self.gen = gen
        # Bumped on every resume, so that of a timer and a reply racing to
        # resume the same wait, only the first one counts.
        self.token = 0
        self.on_done = on_done

    def alive(self) -> bool:
        return self.endpoint.running and self.endpoint.incarnation == self.incarnation


class Kernel:
    """The event loop: a heap of (time, sequence, callback), a network, and the processes."""

    def __init__(self, rng: random.Random, loss: float, delay_ms_min: int = 1, delay_ms_max: int = 50) -> None:
        assert 0.0 <= loss < 1.0 and 0 < delay_ms_min <= delay_ms_max
        self.rng = rng
        self.loss = loss
        self.delay_ms_min = delay_ms_min
        self.delay_ms_max = delay_ms_max
        self.now_ms = 0
        self.endpoints: dict[str, Endpoint] = {}
        self.events_run = 0
        self._heap: list[tuple[int, int, Callable[..., None], tuple[Any, ...]]] = []
        self._sequence = 0
        # Endpoints on one side of a network split; None when the network is whole.
        self._side: frozenset[str] | None = None

    # --- time ----------------------------------------------------------------

    def at(self, when_ms: int, callback: Callable[..., None], *args: Any) -> None:
        assert when_ms >= self.now_ms, "events never run in the past"
        self._sequence += 1
        heapq.heappush(self._heap, (when_ms, self._sequence, callback, args))

    def run_until(self, until_ms: int, events_max: int) -> None:
        """Run every event due up to ``until_ms``; the clock then reads ``until_ms``."""
        while self._heap and self._heap[0][0] <= until_ms:
            when_ms, _, callback, args = heapq.heappop(self._heap)
            self.now_ms = when_ms
            self.events_run += 1
            if self.events_run > events_max:
                raise AssertionError(f"livelock: more than {events_max} events by t={when_ms} ms")
            callback(*args)
        self.now_ms = until_ms

    # --- processes -----------------------------------------------------------

    def spawn(self, endpoint: Endpoint, gen: Process, on_done: Settle | None = None) -> None:
        """Start ``gen`` on ``endpoint`` now; ``on_done(value, error)`` when it ends."""
        self._resume(_Task(endpoint, gen, on_done), None, None)

    def kill(self, endpoint: Endpoint) -> None:
        """End every process of ``endpoint`` and stop it serving (its next start is a new incarnation)."""
        endpoint.running = False
        endpoint.incarnation += 1
        endpoint.flags.clear()
        endpoint.sleepers.clear()

    def wake(self, endpoint: Endpoint, channel: str) -> None:
        endpoint.flags.add(channel)
        sleeper = endpoint.sleepers.pop(channel, None)
        if sleeper is not None:
            self.at(self.now_ms, sleeper)

    def _resume(self, task: _Task, value: Any, error: LegionError | None) -> None:
        if not task.alive():
            return
        task.token += 1
        try:
            command = task.gen.send(value) if error is None else task.gen.throw(error)
        except StopIteration as stop:
            self._finish(task, stop.value, None)
            return
        except LegionError as exc:
            self._finish(task, None, exc)
            return
        self._dispatch(task, command)

    def _finish(self, task: _Task, value: Any, error: LegionError | None) -> None:
        if not task.alive():  # its endpoint was killed while this step ran: a dead process reports nothing
            return
        if task.on_done is not None:
            task.on_done(value, error)
        elif error is not None:
            raise AssertionError(f"unhandled {error!r} in a process of {task.endpoint.id}")

    def _settler(self, task: _Task) -> Callable[[Any, LegionError | None], None]:
        token = task.token

        def settle(value: Any, error: LegionError | None) -> None:
            if task.token == token:
                self._resume(task, value, error)

        return settle

    def _dispatch(self, task: _Task, command: Any) -> None:
        settle = self._settler(task)
        if isinstance(command, Call):
            self.at(self.now_ms + command.timeout_ms, self._time_out, task, task.token, settle, command)
            self._transmit(task.endpoint.id, command.dst, self._serve, task.endpoint.id, command, settle)
        elif isinstance(command, Sleep):
            endpoint = task.endpoint
            if command.wake is not None and command.wake in endpoint.flags:
                self.at(self.now_ms, settle, None, None)
                return
            self.at(self.now_ms + command.ms, settle, None, None)
            if command.wake is not None:
                endpoint.sleepers[command.wake] = lambda: settle(None, None)
        elif isinstance(command, Gather):
            self._gather(task, command, settle)
        else:
            raise AssertionError(f"a process yielded {command!r}, not a Call, Sleep or Gather")

    @staticmethod
    def _time_out(task: _Task, token: int, settle: Settle, command: Call) -> None:
        if task.token == token:  # no reply came first (building the error is the costly part)
            settle(None, DeadlineExceeded(f"{command.dst} did not answer {command.kind} within {command.timeout_ms} ms"))

    def _gather(self, task: _Task, command: Gather, settle: Settle) -> None:
        results: list[Any] = [None] * len(command.processes)
        remaining = [len(command.processes)]
        if not command.processes:
            self.at(self.now_ms, settle, results, None)
            return

        def child_done(index: int, value: Any, error: LegionError | None) -> None:
            if error is not None:  # like asyncio.gather: the first error is the parent's
                settle(None, error)
                return
            results[index] = value
            remaining[0] -= 1
            if remaining[0] == 0:
                settle(results, None)

        for index, child in enumerate(command.processes):
            self.spawn(task.endpoint, child, lambda v, e, i=index: child_done(i, v, e))

    # --- the network ---------------------------------------------------------

    def split(self, side: frozenset[str]) -> None:
        """Cut ``side`` off from every other node (the operator still reaches everyone)."""
        self._side = side

    def heal(self) -> None:
        self._side = None

    def can_talk(self, a: str, b: str) -> bool:
        side = self._side
        if side is None or "operator" in (a, b):
            return True
        return (a in side) == (b in side)

    def _transmit(self, src: str, dst: str, callback: Callable[..., None], *args: Any) -> None:
        # Decided at send time: a split or a loss drops the message, and the
        # sender learns of it only through its own timeout.
        if not self.can_talk(src, dst) or self.rng.random() < self.loss:
            return
        # random() rather than randint(): the same distribution at a fraction of the cost.
        spread = self.delay_ms_max - self.delay_ms_min + 1
        self.at(self.now_ms + self.delay_ms_min + int(self.rng.random() * spread), callback, *args)

    def _serve(self, src: str, command: Call, settle: Settle) -> None:
        dst = self.endpoints.get(command.dst)

        incarnation = None if dst is None else dst.incarnation

        def reply(value: Any, error: LegionError | None) -> None:
            if dst is not None and dst.incarnation != incarnation:
                return  # the server died before it answered
            self._transmit(command.dst, src, settle, value, error)

        if dst is None or not dst.running:
            reply(None, Unavailable(f"{command.dst} refused the connection"))
            return
        try:
            result = dst.handler(command.kind)(src, command.body)
        except LegionError as exc:
            reply(None, exc)
            return
        if inspect.isgenerator(result):
            self.spawn(dst, result, reply)
        else:
            reply(result, None)
