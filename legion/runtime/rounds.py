"""Rounds: a background task that runs one round of work, then waits.

I/O. The gossiper and the handoff receiver both work in rounds: do the
round, then sleep until the interval passes or someone calls ``wake`` (a state
change that should not wait for the next tick). A failing round is logged and
the loop goes on; only cancellation (``stop``) ends it.
"""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger(__name__)


class Rounds:
    """Base class: subclasses implement ``run_round``; ``start``/``stop``/``wake`` drive it."""

    name = "rounds"
    interval_ms = 500

    def __init__(self) -> None:
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    async def run_round(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=self.name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def wake(self) -> None:
        """Run the next round now rather than at the next tick."""
        self._wake.set()

    async def _loop(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self.run_round()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s round failed", self.name)
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.interval_ms / 1000)
            except asyncio.TimeoutError:
                pass
