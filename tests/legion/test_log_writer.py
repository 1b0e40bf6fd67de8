"""The log writer on a real NodeStore in a temporary directory, with a small in-test engine.

Each scenario runs a real ``LogWriter`` thread and event loop; a "restart"
stops the writer (or abandons it, for a crash), opens the same directory
with a fresh store, writer and engine, and looks at what the engine holds.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from legion import checkpoints
from legion.engine import Engine
from legion.replication import Operation
from legion.runtime.log_writer import LogWriter
from legion.runtime.storage import NodeStore

ENGINE = "journal"


class JournalEngine(Engine):
    """Remembers which operation keys each partition has seen; a JSON file per partition is its disk.

    ``fail_keys`` names keys whose batch raises, once per listed occurrence."""

    name = ENGINE

    def __init__(self, root: Path, *, fail_keys: Sequence[bytes] = ()) -> None:
        super().__init__(root)
        self.fail_keys = list(fail_keys)
        self.memory: dict[int, set[str]] = {}
        self.files: dict[int, Path] = {}

    def open(self, partition: int, directory: Path) -> None:
        self.files[partition] = directory / "journal.json"
        on_disk = self.files[partition].read_text() if self.files[partition].exists() else "[]"
        self.memory[partition] = set(json.loads(on_disk))

    def close(self, partition: int) -> None:
        del self.files[partition]

    def apply(self, partition: int, ops: Sequence[Operation]) -> None:
        for op in ops:
            if op.key in self.fail_keys:
                self.fail_keys.remove(op.key)
                raise OSError(f"injected failure applying {op.key!r}")
        self.memory[partition] |= {op.key.decode() for op in ops}
        if self.durable_on_apply:
            self._write(partition)

    def flush(self, partitions: Collection[int]) -> None:
        for partition in partitions:
            self._write(partition)

    def _write(self, partition: int) -> None:
        tmp = self.files[partition].with_suffix(".tmp")
        tmp.write_text(json.dumps(sorted(self.memory[partition])))
        os.replace(tmp, self.files[partition])

    def read(self, partition: int, query: Any) -> Any:
        return sorted(self.memory[partition])

    def fold(self, partition: int) -> Iterator[Operation]:
        return iter(())


def op(key: str, partition: int = 0, hlc: int = 1) -> Operation:
    return Operation(ENGINE, partition, key.encode(), hlc, "n1", "put", b"")


class Writer:
    """A LogWriter with its own NodeStore over ``data_dir``, run on the current event loop."""

    def __init__(self, data_dir: Path, engine: JournalEngine) -> None:
        self.store = NodeStore(data_dir)
        self.engine = engine
        self.writer = LogWriter(self.store, {ENGINE: engine}, data_dir)
        self.writer.start(asyncio.get_running_loop())

    async def submit(self, *ops: Operation, flush: bool = False) -> None:
        await self.writer.submit(list(ops), flush=flush)

    async def stop(self) -> None:
        await asyncio.to_thread(self.writer.stop)
        self.store.close()


async def eventually(check: Any, timeout_s: float = 5.0) -> None:
    """Wait until ``check()`` is true; fail the test if it is not within ``timeout_s``."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "timed out waiting for the writer"
        await asyncio.sleep(0.01)


async def reopened(data_dir: Path, partition: int = 0) -> list[str]:
    """What a fresh writer and engine over ``data_dir`` hold in ``partition`` once it is open."""
    again = Writer(data_dir, JournalEngine(data_dir / "engines" / ENGINE))
    await again.writer.ensure_open(ENGINE, partition)
    held = again.engine.read(partition, None)
    await again.stop()
    return held


def test_a_failed_batch_is_not_skipped_when_a_later_batch_of_its_partition_succeeds(tmp_path: Path) -> None:
    async def scenario() -> list[str]:
        first = Writer(tmp_path, JournalEngine(tmp_path / "engines" / ENGINE, fail_keys=[b"a"]))
        with pytest.raises(OSError, match="injected"):
            await first.submit(op("a"))
        await first.submit(op("b"))  # the same partition: the watermark must not jump past "a"
        await first.stop()
        return await reopened(tmp_path)

    assert asyncio.run(scenario()) == ["a", "b"]


def test_the_writer_reapplies_a_failed_batch_later_and_only_then_moves_the_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(checkpoints, "REAPPLY_BACKOFF_MS_MIN", 50)

    async def scenario() -> None:
        writer = Writer(tmp_path, JournalEngine(tmp_path / "engines" / ENGINE, fail_keys=[b"a"]))
        with pytest.raises(OSError, match="injected"):
            await writer.submit(op("a"))  # seq 1
        await writer.submit(op("b"))  # seq 2
        assert writer.engine.read(0, None) == ["b"]
        await eventually(lambda: writer.engine.read(0, None) == ["a", "b"])
        await writer.stop()
        assert NodeStore(tmp_path).checkpoint(ENGINE, 0) == 2

    asyncio.run(scenario())


def test_while_a_partition_keeps_failing_its_checkpoint_stays_below_the_failed_operation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(checkpoints, "REAPPLY_BACKOFF_MS_MIN", 20)
    monkeypatch.setattr(checkpoints, "REAPPLY_BACKOFF_MS_MAX", 40)

    async def scenario() -> list[str]:
        engine = JournalEngine(tmp_path / "engines" / ENGINE, fail_keys=[b"b"] * 1_000)
        writer = Writer(tmp_path, engine)
        await writer.submit(op("a"))  # seq 1
        await writer.submit(op("other", partition=1))  # seq 2, another partition: not held back
        with pytest.raises(OSError):
            await writer.submit(op("b"))  # seq 3
        await writer.submit(op("c"))  # seq 4
        await eventually(lambda: len(engine.fail_keys) < 1_000 - 3)  # it was retried, and failed again
        await writer.stop()
        store = NodeStore(tmp_path)
        assert (store.checkpoint(ENGINE, 0), store.checkpoint(ENGINE, 1)) == (1, 2)
        store.close()
        return await reopened(tmp_path)

    assert asyncio.run(scenario()) == ["a", "b", "c"]


class OtherEngine(JournalEngine):
    name = "other"


def test_every_write_a_failed_engine_batch_carries_gets_the_error_and_other_engines_are_acknowledged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(checkpoints, "REAPPLY_BACKOFF_MS_MIN", 20)

    async def scenario() -> list[BaseException | None]:
        failing = JournalEngine(tmp_path / "engines" / ENGINE, fail_keys=[b"a"])
        other = OtherEngine(tmp_path / "engines" / "other")
        store = NodeStore(tmp_path)
        writer = LogWriter(store, {ENGINE: failing, "other": other}, tmp_path)
        writer.start(asyncio.get_running_loop())
        for key in [(ENGINE, 0), (ENGINE, 1), ("other", 0)]:
            await writer.ensure_open(*key)
        # One event-loop turn: the three writes reach the writer thread together, as one group commit.
        results = await asyncio.gather(
            writer.submit([op("a")]),
            writer.submit([op("b", partition=1)]),
            writer.submit([Operation("other", 0, b"c", 1, "n1", "put")]),
            return_exceptions=True,
        )
        await eventually(lambda: (failing.read(0, None), failing.read(1, None)) == (["a"], ["b"]))
        assert other.read(0, None) == ["c"]
        await asyncio.to_thread(writer.stop)
        store.close()
        return results

    first, second, third = asyncio.run(scenario())
    assert isinstance(first, OSError) and isinstance(second, OSError) and third is None
