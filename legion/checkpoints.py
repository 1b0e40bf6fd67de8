"""Checkpoints: how much of each partition's operation log its engine holds durably.

Pure: no I/O and no clock (callers pass ``now_ms``). The log writer
(``legion.runtime.log_writer``) tells a ``Checkpoints`` what happened — a
partition opened, a batch applied, an apply failed, a re-apply succeeded — and
asks it what to do next: which partitions to re-apply from the log, and when to
wake up for that.

The model is the translog of the engine contract (``legion.engine``, point 4).
The node logs every operation with a ``seq`` before any engine sees it. Per
(engine, partition):

- the **checkpoint** ``c``: every logged operation of the partition with
  ``seq <= c`` is durable in the engine. It is a *contiguous prefix* — never
  "the highest seq applied" — and it only moves forward. A restart replays
  the log above it.
- a partition is **broken** when an apply failed. Its checkpoint freezes below
  the failed operations, even when later batches of the partition apply
  fine; the writer re-applies the whole log above the checkpoint (engines
  are idempotent, so operations it applied already do no harm) first
  ``REAPPLY_BACKOFF_MS_MIN`` after the failure, then with a doubling backoff
  capped at ``REAPPLY_BACKOFF_MS_MAX``, until that succeeds; only then does
  the checkpoint move, to the last operation re-applied.

The invariant that lets a successful batch move the checkpoint to its last
seq: for a partition that is not broken, every operation logged before the
batch was applied already (the writer applies batches in log order, on one
thread, and nothing is logged for a partition that failed to open).
"""

from __future__ import annotations

from dataclasses import dataclass

from legion.limits import REAPPLY_BACKOFF_MS_MAX, REAPPLY_BACKOFF_MS_MIN

Key = tuple[str, int]
"""(engine name, partition)."""


@dataclass(slots=True)
class _Retry:
    due_ms: int
    backoff_ms: int


class Checkpoints:
    """The checkpoints of the open partitions of one node, and what must happen to move them."""

    def __init__(self) -> None:
        self._checkpoint: dict[Key, int] = {}
        self._unpersisted: dict[Key, int] = {}
        self._broken: dict[Key, _Retry] = {}

    # --- what happened ---------------------------------------------------------

    def opened(self, key: Key, checkpoint: int) -> None:
        """``key`` was opened with ``checkpoint`` read from the node database."""
        assert key not in self._checkpoint, f"{key} opened twice"
        assert checkpoint >= 0
        self._checkpoint[key] = checkpoint

    def applied(self, key: Key, last_seq: int) -> None:
        """A batch of ``key``'s operations, the newest logged at ``last_seq``, was applied durably."""
        if key in self._broken:
            return  # the re-apply from the checkpoint covers these operations too
        self._advance(key, last_seq)

    def failed(self, key: Key, now_ms: int) -> None:
        """Applying ``key``'s operations raised: freeze its checkpoint and schedule a re-apply."""
        assert key in self._checkpoint, f"{key} is not open"
        retry = self._broken.get(key)
        backoff_ms = REAPPLY_BACKOFF_MS_MIN if retry is None else min(2 * retry.backoff_ms, REAPPLY_BACKOFF_MS_MAX)
        self._broken[key] = _Retry(now_ms + backoff_ms, backoff_ms)

    def reapplied(self, key: Key, last_seq: int) -> None:
        """Every logged operation of ``key`` above its checkpoint, through ``last_seq``, is durable again."""
        self._broken.pop(key, None)
        self._advance(key, last_seq)

    def forget(self, key: Key) -> None:
        """``key`` was dropped, its log with it."""
        self._checkpoint.pop(key, None)
        self._unpersisted.pop(key, None)
        self._broken.pop(key, None)

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

    def next_wake_ms(self) -> int | None:
        """When something is next due; None if nothing is waiting."""
        return min((retry.due_ms for retry in self._broken.values()), default=None)

    def _due_ms(self, key: Key) -> int:
        return self._broken[key].due_ms

    def _advance(self, key: Key, seq: int) -> None:
        current = self._checkpoint[key]
        if seq > current:
            self._checkpoint[key] = seq
            self._unpersisted[key] = seq
