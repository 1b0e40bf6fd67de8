"""The pure checkpoint bookkeeping: events in, decisions out, time passed in by hand."""

from __future__ import annotations

from legion.checkpoints import Checkpoints
from legion.limits import FLUSH_INTERVAL_MS, FLUSH_OPS_MAX, REAPPLY_BACKOFF_MS_MAX, REAPPLY_BACKOFF_MS_MIN

KEY = ("journal", 3)
OTHER = ("journal", 4)


def opened(*keys: tuple[str, int], checkpoint: int = 0) -> Checkpoints:
    state = Checkpoints()
    for key in keys:
        state.opened(key, checkpoint)
    return state


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
    state.reapplied(KEY, 12)
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
    state.reapplied(OTHER, 0)
    state.reapplied(KEY, 0)
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
    state.applied(KEY, 6, 2, deferred=True, now_ms=0)
    state.failed(KEY, now_ms=10)
    state.flushed("journal", [KEY[1]])  # a flush that returns later does not cover what failed
    assert state.checkpoint(KEY) == 4 and state.unflushed("journal") == []
    assert state.next_wake_ms() == 10 + REAPPLY_BACKOFF_MS_MIN
    state.reapplied(KEY, 6)
    assert state.checkpoint(KEY) == 6
