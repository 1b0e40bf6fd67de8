"""Checkpoints: how much of each partition's operation log its engine holds durably.

Pure: no I/O and no clock (callers pass ``now_ms``). The log writer
(``legion.runtime.log_writer``) tells a ``Checkpoints`` what happened — a
partition opened, a batch applied, an apply or flush failed, a flush returned,
a re-apply succeeded, log rows compacted — and asks it what to do next: which
engines to flush, which partitions to re-apply from the log, which log rows to
compact, and when to wake up for that.

The model is the translog of the engine contract (``legion.engine``, point 4).
The node logs every operation with a ``seq`` before any engine sees it. Per
(engine, partition):

- the **checkpoint** ``c``: every logged operation of the partition with
  ``seq <= c`` is durable in the engine. It is a *contiguous prefix* — never
  "the highest seq applied" — and it only moves forward. A restart replays
  the log above it.
- for an engine with ``durable_on_apply = False``, applied operations are
  only *unflushed* until its ``flush`` returns for the partition: the
  checkpoint then moves to the newest of them. An engine is due a flush
  ``FLUSH_INTERVAL_MS`` after its oldest unflushed apply, or as soon as
  ``FLUSH_OPS_MAX`` operations await one. For engines that are durable on
  apply the checkpoint moves when ``apply`` returns.
- a partition is **broken** when an apply or a flush failed. Its checkpoint
  freezes below the failed operations, even when later batches of the
  partition apply fine; the writer re-applies the whole log above the
  checkpoint (engines are idempotent, so operations it applied already do
  no harm) first
  ``REAPPLY_BACKOFF_MS_MIN`` after the failure, then with a doubling backoff
  capped at ``REAPPLY_BACKOFF_MS_MAX``, until that succeeds; only then does
  the checkpoint move, to the last operation re-applied (and, for a deferred
  engine, flushed: a re-apply ends with a flush).

Log rows at or below a checkpoint are never read again, so they are
**compacted** (deleted) in passes of at most ``COMPACT_BATCH_OPS_MAX`` rows:
every ``COMPACT_INTERVAL_MS`` while some wait, and at once when a full pass
waits — not on every group commit, where it would cost the write path. A pass
records the checkpoints it compacts to in the same transaction, so the
recorded checkpoint is never below a deleted row.

The invariant that lets a successful batch move the checkpoint to its last
seq: for a partition that is not broken, every operation logged before the
batch was applied already (the writer applies batches in log order, on one
thread, and nothing is logged for a partition that failed to open).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from legion.limits import (
    COMPACT_BATCH_OPS_MAX,
    COMPACT_INTERVAL_MS,
    FLUSH_INTERVAL_MS,
    FLUSH_OPS_MAX,
    REAPPLY_BACKOFF_MS_MAX,
    REAPPLY_BACKOFF_MS_MIN,
)

Key = tuple[str, int]
"""(engine name, partition)."""


@dataclass(slots=True)
class _Retry:
    due_ms: int
    backoff_ms: int


@dataclass(slots=True)
class _Unflushed:
    seq: int  # the newest operation applied and awaiting a flush
    ops: int  # how many operations await it


class Checkpoints:
    """The checkpoints of the open partitions of one node, and what must happen to move them."""

    def __init__(self) -> None:
        self._checkpoint: dict[Key, int] = {}
        self._unpersisted: dict[Key, int] = {}
        self._broken: dict[Key, _Retry] = {}
        self._unflushed: dict[str, dict[int, _Unflushed]] = {}
        self._unflushed_ops: dict[str, int] = {}
        self._flush_due_ms: dict[str, int] = {}
        # Partitions whose log may hold rows at or below the checkpoint (an ordered set).
        self._compactable: dict[Key, None] = {}
        self._compactable_ops = 0
        self._compacted_at_ms: int | None = None
        self._compaction_failing = False  # then even a full pass waits an interval, not a busy loop

    # --- what happened ---------------------------------------------------------

    def opened(self, key: Key, checkpoint: int) -> None:
        """``key`` was opened with ``checkpoint`` read from the node database."""
        assert key not in self._checkpoint, f"{key} opened twice"
        assert checkpoint >= 0
        self._checkpoint[key] = checkpoint
        if checkpoint > 0:  # rows an earlier run logged may still be there
            self._compactable[key] = None

    def applied(self, key: Key, last_seq: int, ops: int, *, deferred: bool, now_ms: int) -> None:
        """``ops`` operations of ``key``, the newest logged at ``last_seq``, were applied.

        ``deferred``: the engine makes them durable only in ``flush``."""
        if key in self._broken:
            return  # the re-apply from the checkpoint covers these operations too
        if not deferred:
            self._advance(key, last_seq, ops)
            return
        engine, partition = key
        partitions = self._unflushed.setdefault(engine, {})
        entry = partitions.setdefault(partition, _Unflushed(last_seq, 0))
        entry.seq = last_seq
        entry.ops += ops
        self._unflushed_ops[engine] = self._unflushed_ops.get(engine, 0) + ops
        self._flush_due_ms.setdefault(engine, now_ms + FLUSH_INTERVAL_MS)

    def flushed(self, engine: str, partitions: Iterable[int]) -> None:
        """``engine.flush(partitions)`` returned: what they had applied is durable."""
        for partition in partitions:
            entry = self._take_unflushed((engine, partition))
            if entry is not None:
                self._advance((engine, partition), entry.seq, entry.ops)

    def failed(self, key: Key, now_ms: int) -> None:
        """Applying or flushing ``key``'s operations raised: freeze its checkpoint and schedule a re-apply."""
        assert key in self._checkpoint, f"{key} is not open"
        self._take_unflushed(key)  # the re-apply covers them, and flushes
        retry = self._broken.get(key)
        backoff_ms = REAPPLY_BACKOFF_MS_MIN if retry is None else min(2 * retry.backoff_ms, REAPPLY_BACKOFF_MS_MAX)
        self._broken[key] = _Retry(now_ms + backoff_ms, backoff_ms)

    def reapplied(self, key: Key, last_seq: int, ops: int) -> None:
        """The ``ops`` logged operations of ``key`` above its checkpoint, through ``last_seq``, are durable again."""
        self._broken.pop(key, None)
        self._take_unflushed(key)
        self._advance(key, last_seq, ops)

    def forget(self, key: Key) -> None:
        """``key`` was dropped, its log with it."""
        self._checkpoint.pop(key, None)
        self._unpersisted.pop(key, None)
        self._broken.pop(key, None)
        self._take_unflushed(key)
        self._compactable.pop(key, None)

    def compacted(self, done: Iterable[Key], rows: int, now_ms: int) -> None:
        """A compaction pass deleted ``rows`` rows and every row at or below the checkpoint of ``done``."""
        for key in done:
            self._compactable.pop(key, None)
        self._compactable_ops = max(0, self._compactable_ops - rows)
        self._compacted_at_ms = now_ms
        self._compaction_failing = False

    def compaction_failed(self, now_ms: int) -> None:
        """A compaction pass raised: try again an interval later."""
        self._compacted_at_ms = now_ms
        self._compaction_failing = True

    def persisted(self, written: dict[Key, int]) -> None:
        """``written`` (a value ``unpersisted()`` returned) is now in the node database."""
        for key, seq in written.items():
            if self._unpersisted.get(key) == seq:
                del self._unpersisted[key]

    # --- what to do --------------------------------------------------------------

    def checkpoint(self, key: Key) -> int:
        return self._checkpoint[key]

    def is_broken(self, key: Key) -> bool:
        return key in self._broken

    def unpersisted(self) -> dict[Key, int]:
        """Checkpoints that moved since they were last written to the node database."""
        return dict(self._unpersisted)

    def reapply_due(self, now_ms: int) -> list[Key]:
        """Broken partitions whose next re-apply is due, oldest failure first."""
        return sorted((key for key, retry in self._broken.items() if retry.due_ms <= now_ms), key=self._due_ms)

    def unflushed(self, engine: str) -> list[int]:
        """The partitions of ``engine`` with applied operations awaiting a flush."""
        return sorted(self._unflushed.get(engine, ()))

    def flushes_due(self, now_ms: int) -> list[str]:
        """Engines due a flush: on the interval, or because enough operations await one."""
        return [engine for engine, due_ms in self._flush_due_ms.items() if due_ms <= now_ms or self._flush_full(engine)]

    def compaction_due(self, now_ms: int) -> bool:
        wake_ms = self._compaction_wake_ms()
        return wake_ms is not None and wake_ms <= now_ms

    def compaction_targets(self) -> list[tuple[Key, int]]:
        """Partitions whose log may hold rows at or below their checkpoint, with that checkpoint."""
        return [(key, self._checkpoint[key]) for key in self._compactable]

    def next_wake_ms(self) -> int | None:
        """When something is next due (0: now); None if nothing is waiting."""
        if any(self._flush_full(engine) for engine in self._flush_due_ms):
            return 0
        candidates = [*self._flush_due_ms.values(), *(retry.due_ms for retry in self._broken.values())]
        compaction_ms = self._compaction_wake_ms()
        if compaction_ms is not None:
            candidates.append(compaction_ms)
        return min(candidates, default=None)

    def _compaction_wake_ms(self) -> int | None:
        if not self._compactable:
            return None
        if self._compacted_at_ms is None:
            return 0
        if self._compactable_ops >= COMPACT_BATCH_OPS_MAX and not self._compaction_failing:
            return 0
        return self._compacted_at_ms + COMPACT_INTERVAL_MS

    def _flush_full(self, engine: str) -> bool:
        return self._unflushed_ops[engine] >= FLUSH_OPS_MAX

    def _take_unflushed(self, key: Key) -> _Unflushed | None:
        engine, partition = key
        partitions = self._unflushed.get(engine)
        entry = None if partitions is None else partitions.pop(partition, None)
        if entry is not None:
            self._unflushed_ops[engine] -= entry.ops
            if not partitions:  # nothing left to flush for this engine: no timer either
                del self._unflushed[engine], self._unflushed_ops[engine], self._flush_due_ms[engine]
        return entry

    def _due_ms(self, key: Key) -> int:
        return self._broken[key].due_ms

    def _advance(self, key: Key, seq: int, ops: int) -> None:
        if seq > self._checkpoint[key]:
            self._checkpoint[key] = seq
            self._unpersisted[key] = seq
            self._compactable[key] = None
            self._compactable_ops += ops
