"""The hybrid logical clock orders local and remote events."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from legion.clock import HybridClock, pack, wall_ms_of
from legion.errors import BadRequest


class FakeWall:
    def __init__(self, ms: int) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


def test_now_is_strictly_increasing_when_the_wall_clock_stands_still():
    wall = FakeWall(1_000)
    clock = HybridClock(wall)
    stamps = [clock.now() for _ in range(100)]
    assert stamps == sorted(set(stamps))
    assert all(wall_ms_of(s) == 1_000 for s in stamps)


def test_now_never_goes_back_when_the_wall_clock_does():
    wall = FakeWall(5_000)
    clock = HybridClock(wall)
    first = clock.now()
    wall.ms = 4_000
    assert clock.now() > first


def test_observe_makes_later_local_events_follow_remote_ones():
    clock = HybridClock(FakeWall(1_000))
    remote = pack(1_500, 7)
    clock.observe(remote)
    assert clock.now() > remote


def test_observe_refuses_absurdly_future_timestamps():
    clock = HybridClock(FakeWall(1_000))
    with pytest.raises(BadRequest):
        clock.observe(pack(1_000 + 10 * 60_000, 0))


@given(st.lists(st.one_of(st.tuples(st.just("tick"), st.integers(0, 50)), st.tuples(st.just("recv"), st.integers(0, 3_000))), max_size=60))
def test_every_issued_timestamp_exceeds_everything_seen_before(events):
    wall = FakeWall(10_000)
    clock = HybridClock(wall)
    seen = 0
    for kind, value in events:
        if kind == "tick":
            wall.ms += value
            stamp = clock.now()
            assert stamp > seen
            seen = stamp
        else:
            remote = pack(wall.ms + value, value % 100)
            clock.observe(remote)
            seen = max(seen, remote)


def test_the_horizon_is_the_last_timestamp_observe_accepts_and_advance_to_folds_one_in():
    wall = [1_000_000]
    clock = HybridClock(lambda: wall[0])
    horizon = clock.horizon()
    clock.observe(horizon)  # accepted
    with pytest.raises(BadRequest):
        clock.observe(horizon + 1)
    later = HybridClock(lambda: wall[0])
    later.advance_to(horizon - 5)
    later.advance_to(horizon - 9)  # never back
    assert later.last == horizon - 5 and later.now() > horizon - 5
