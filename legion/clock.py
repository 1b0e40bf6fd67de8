"""Hybrid logical clocks: timestamps that order events across nodes.

Pure. A timestamp is one integer, ``wall_ms << 16 | logical``, so it sorts,
compares and stores as a plain int. ``HybridClock`` takes its wall clock as a
function, so tests and the simulator drive it with a fake one. The runtime
gives it ``time.time``.

Why an HLC and not wall time alone: two writes to one key within the same
millisecond, or from nodes whose clocks disagree slightly, still get distinct,
causally ordered timestamps (Kulkarni et al., 2014).
"""

from __future__ import annotations

from collections.abc import Callable

from legion.errors import BadRequest
from legion.limits import CLOCK_DRIFT_MS_MAX

LOGICAL_BITS = 16
LOGICAL_MAX = (1 << LOGICAL_BITS) - 1


def pack(wall_ms: int, logical: int) -> int:
    """One sortable integer from a wall-clock millisecond and a logical counter."""
    assert 0 <= logical <= LOGICAL_MAX
    return (wall_ms << LOGICAL_BITS) | logical


def wall_ms_of(hlc: int) -> int:
    """The wall-clock part of a timestamp, in milliseconds since the epoch."""
    return hlc >> LOGICAL_BITS


class HybridClock:
    """A node's clock: ``now()`` for local events, ``observe()`` for remote ones."""

    def __init__(self, wall_ms: Callable[[], int]) -> None:
        self._wall_ms = wall_ms
        self._last = 0

    @property
    def last(self) -> int:
        return self._last

    def now(self) -> int:
        """A timestamp greater than every one this clock has issued or observed."""
        wall = self._wall_ms()
        last_wall, last_logical = self._last >> LOGICAL_BITS, self._last & LOGICAL_MAX
        if wall > last_wall:
            self._last = pack(wall, 0)
        elif last_logical < LOGICAL_MAX:
            self._last = pack(last_wall, last_logical + 1)
        else:
            # Logical overflow within one millisecond: borrow the next millisecond.
            self._last = pack(last_wall + 1, 0)
        return self._last

    def horizon(self) -> int:
        """The greatest timestamp ``observe`` accepts right now (drift beyond it is refused)."""
        return pack(self._wall_ms() + CLOCK_DRIFT_MS_MAX + 1, 0) - 1

    def advance_to(self, remote: int) -> None:
        """``observe`` for a timestamp already found at or below ``horizon()``: a batch checks each of its
        timestamps against one horizon, then folds in only the greatest."""
        if remote > self._last:
            self._last = remote

    def observe(self, remote: int) -> None:
        """Fold in a timestamp seen from another node so later ``now()``s exceed it."""
        if remote >> LOGICAL_BITS > self._wall_ms() + CLOCK_DRIFT_MS_MAX:
            raise BadRequest(
                f"timestamp {remote} is more than {CLOCK_DRIFT_MS_MAX} ms ahead of this node's clock"
            )
        if remote > self._last:
            self._last = remote
