"""The pure checkpoint bookkeeping: events in, decisions out, time passed in by hand."""

from __future__ import annotations

from legion.checkpoints import Checkpoints
from legion.limits import REAPPLY_BACKOFF_MS_MAX, REAPPLY_BACKOFF_MS_MIN

KEY = ("journal", 3)
OTHER = ("journal", 4)


def opened(*keys: tuple[str, int], checkpoint: int = 0) -> Checkpoints:
    state = Checkpoints()
    for key in keys:
        state.opened(key, checkpoint)
    return state


def test_a_durable_apply_moves_the_checkpoint_and_marks_it_unpersisted() -> None:
    state = opened(KEY, checkpoint=5)
    state.applied(KEY, 9)
    assert state.checkpoint(KEY) == 9
    assert state.unpersisted() == {KEY: 9}


def test_after_a_failure_later_applies_do_not_move_the_checkpoint_until_a_reapply_succeeds() -> None:
    state = opened(KEY, OTHER, checkpoint=5)
    state.failed(KEY, now_ms=0)
    state.applied(KEY, 12)
    state.applied(OTHER, 13)
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
    state.applied(KEY, 1)
    state.applied(OTHER, 2)
    written = state.unpersisted()
    state.applied(OTHER, 3)  # moved after the snapshot was taken: still to be written
    state.persisted(written)
    assert state.unpersisted() == {OTHER: 3}


def test_a_forgotten_partition_leaves_nothing_behind() -> None:
    state = opened(KEY)
    state.applied(KEY, 4)
    state.failed(KEY, now_ms=0)
    state.forget(KEY)
    assert state.unpersisted() == {} and state.next_wake_ms() is None
    state.opened(KEY, 0)  # it may come back
    assert state.checkpoint(KEY) == 0
