"""The pure checkpoint bookkeeping: events in, decisions out, time passed in by hand."""

from __future__ import annotations

from legion.checkpoints import Checkpoints
from legion.limits import COMPACT_BATCH_OPS_MAX, COMPACT_INTERVAL_MS, FLUSH_INTERVAL_MS, FLUSH_OPS_MAX, REAPPLY_BACKOFF_MS_MAX, REAPPLY_BACKOFF_MS_MIN

KEY = ("journal", 3)
OTHER = ("journal", 4)


def opened(*keys: tuple[str, int], checkpoint: int = 0) -> Checkpoints:
    state = Checkpoints()
    for key in keys:
        state.opened(key, checkpoint)
    return state


def compact_all(state: Checkpoints, now_ms: int) -> None:
    """As if a compaction pass had deleted every compactable row."""
    state.compacted([key for key, _ in state.compaction_targets()], 0, now_ms)


def durable(state: Checkpoints, key: tuple[str, int], seq: int) -> None:
    state.applied(key, seq, 1, deferred=False, now_ms=0)


def test_a_durable_apply_moves_the_checkpoint_and_marks_it_unpersisted() -> None:
    state = opened(KEY, checkpoint=5)
    durable(state, KEY, 9)
    assert state.checkpoint(KEY) == 9
    assert state.unpersisted() == {KEY: 9}


def test_after_a_failure_later_applies_do_not_move_the_checkpoint_until_a_reapply_succeeds() -> None:
    state = opened(KEY, OTHER, checkpoint=5)
    state.failed(KEY, now_ms=0)
    durable(state, KEY, 12)
    durable(state, OTHER, 13)
    assert (state.checkpoint(KEY), state.checkpoint(OTHER)) == (5, 13)
    assert state.is_broken(KEY) and not state.is_broken(OTHER)
    state.reapplied(KEY, 12, 1)
    assert state.checkpoint(KEY) == 12 and not state.is_broken(KEY)


def test_reapplies_are_due_after_a_doubling_backoff_that_is_capped() -> None:
    state = opened(KEY)
    now, waits = 0, []
    for _ in range(12):
        state.failed(KEY, now)
        due = state.next_wake_ms()
        assert due is not None and state.reapply_due(due - 1) == [] and state.reapply_due(due) == [KEY]
        waits.append(due - now)
        now = due
    assert waits[0] == REAPPLY_BACKOFF_MS_MIN
    assert all(b == min(2 * a, REAPPLY_BACKOFF_MS_MAX) for a, b in zip(waits, waits[1:]))
    assert waits[-1] == REAPPLY_BACKOFF_MS_MAX


def test_the_oldest_failure_is_reapplied_first_and_nothing_waits_once_all_succeeded() -> None:
    state = opened(KEY, OTHER)
    state.failed(OTHER, now_ms=0)
    state.failed(KEY, now_ms=1)
    assert state.reapply_due(10**9) == [OTHER, KEY]
    state.reapplied(OTHER, 0, 1)
    state.reapplied(KEY, 0, 1)
    assert state.next_wake_ms() is None


def test_persisted_forgets_only_checkpoints_that_did_not_move_meanwhile() -> None:
    state = opened(KEY, OTHER)
    durable(state, KEY, 1)
    durable(state, OTHER, 2)
    written = state.unpersisted()
    durable(state, OTHER, 3)  # moved after the snapshot was taken: still to be written
    state.persisted(written)
    assert state.unpersisted() == {OTHER: 3}


def test_a_forgotten_partition_leaves_nothing_behind() -> None:
    state = opened(KEY)
    durable(state, KEY, 4)
    state.failed(KEY, now_ms=0)
    state.forget(KEY)
    assert state.unpersisted() == {} and state.next_wake_ms() is None
    state.opened(KEY, 0)  # it may come back
    assert state.checkpoint(KEY) == 0


def test_a_deferred_apply_moves_the_checkpoint_only_when_its_flush_returns() -> None:
    state = opened(KEY, OTHER)
    state.applied(KEY, 7, 2, deferred=True, now_ms=100)
    state.applied(KEY, 9, 1, deferred=True, now_ms=150)
    state.applied(OTHER, 8, 1, deferred=True, now_ms=150)
    assert state.checkpoint(KEY) == 0 and state.unflushed("journal") == [3, 4]
    state.flushed("journal", [3])
    assert state.checkpoint(KEY) == 9 and state.checkpoint(OTHER) == 0
    assert state.unflushed("journal") == [4] and state.unpersisted() == {KEY: 9}


def test_a_flush_is_due_an_interval_after_the_oldest_unflushed_apply_and_not_again_once_done() -> None:
    state = opened(KEY, OTHER)
    state.applied(KEY, 1, 1, deferred=True, now_ms=100)
    state.applied(OTHER, 2, 1, deferred=True, now_ms=900)
    due = 100 + FLUSH_INTERVAL_MS
    assert state.next_wake_ms() == due
    assert state.flushes_due(due - 1) == [] and state.flushes_due(due) == ["journal"]
    state.flushed("journal", state.unflushed("journal"))
    compact_all(state, now_ms=due)
    assert state.next_wake_ms() is None and state.flushes_due(10**9) == []
    state.applied(KEY, 3, 1, deferred=True, now_ms=5_000)  # a new interval starts with the next apply
    assert state.next_wake_ms() == 5_000 + FLUSH_INTERVAL_MS


def test_a_flush_is_due_at_once_when_enough_operations_await_it() -> None:
    state = opened(KEY, OTHER)
    state.applied(KEY, 1, FLUSH_OPS_MAX - 1, deferred=True, now_ms=0)
    assert state.flushes_due(1) == []
    state.applied(OTHER, 2, 1, deferred=True, now_ms=1)
    assert state.next_wake_ms() == 0 and state.flushes_due(1) == ["journal"]


def test_a_failed_flush_drops_the_unflushed_operations_into_a_reapply() -> None:
    state = opened(KEY, checkpoint=4)
    compact_all(state, now_ms=0)
    state.applied(KEY, 6, 2, deferred=True, now_ms=0)
    state.failed(KEY, now_ms=10)
    state.flushed("journal", [KEY[1]])  # a flush that returns later does not cover what failed
    assert state.checkpoint(KEY) == 4 and state.unflushed("journal") == []
    assert state.next_wake_ms() == 10 + REAPPLY_BACKOFF_MS_MIN
    state.reapplied(KEY, 6, 1)
    assert state.checkpoint(KEY) == 6


def test_compaction_targets_partitions_whose_checkpoint_moved_or_was_left_from_an_earlier_run() -> None:
    state = opened(KEY, checkpoint=0)
    state.opened(OTHER, 12)  # a restart: rows at or below 12 may still be logged
    assert state.compaction_targets() == [(OTHER, 12)]
    durable(state, KEY, 3)
    assert state.compaction_targets() == [(OTHER, 12), (KEY, 3)]
    state.compacted([OTHER], 5, now_ms=0)
    assert state.compaction_targets() == [(KEY, 3)]  # not done: the pass ran out of budget


def test_compaction_runs_on_its_interval_or_at_once_when_a_full_pass_waits() -> None:
    state = opened(KEY)
    assert not state.compaction_due(0)  # nothing to compact
    durable(state, KEY, 1)
    assert state.compaction_due(0)  # never compacted yet
    state.compacted([KEY], 1, now_ms=100)
    durable(state, KEY, 2)
    assert not state.compaction_due(100 + COMPACT_INTERVAL_MS - 1) and state.compaction_due(100 + COMPACT_INTERVAL_MS)
    assert state.next_wake_ms() == 100 + COMPACT_INTERVAL_MS
    state.applied(KEY, 3, COMPACT_BATCH_OPS_MAX, deferred=False, now_ms=101)
    assert state.compaction_due(101) and state.next_wake_ms() == 0


def test_a_checkpoint_that_does_not_move_makes_nothing_compactable() -> None:
    state = opened(KEY, checkpoint=0)
    state.failed(KEY, now_ms=0)
    durable(state, KEY, 5)  # broken: ignored
    state.reapplied(KEY, 0, 0)  # nothing was logged above the checkpoint
    assert state.compaction_targets() == []


def test_a_failed_compaction_pass_is_retried_an_interval_later_even_when_a_full_pass_waits() -> None:
    state = opened(KEY)
    state.applied(KEY, 1, COMPACT_BATCH_OPS_MAX, deferred=False, now_ms=0)
    assert state.next_wake_ms() == 0
    state.compaction_failed(now_ms=50)
    assert state.next_wake_ms() == 50 + COMPACT_INTERVAL_MS and not state.compaction_due(49 + COMPACT_INTERVAL_MS)
    state.compacted([KEY], COMPACT_BATCH_OPS_MAX, now_ms=50 + COMPACT_INTERVAL_MS)  # a pass that works again
    state.applied(KEY, 2, COMPACT_BATCH_OPS_MAX, deferred=False, now_ms=60 + COMPACT_INTERVAL_MS)
    assert state.next_wake_ms() == 0  # a full pass waits again: at once
