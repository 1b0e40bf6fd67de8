"""The log writer on a real NodeStore in a temporary directory, with a small in-test engine.

Each scenario runs a real ``LogWriter`` thread and event loop; a "restart"
stops the writer (or abandons it, for a crash), opens the same directory
with a fresh store, writer and engine, and looks at what the engine holds.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Collection, Iterator, Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from legion import checkpoints
from legion.engine import Engine
from legion.replication import Operation
from legion.runtime import log_writer
from legion.runtime.log_writer import LogWriter
from legion.runtime.storage import NodeStore

ENGINE = "journal"


class JournalEngine(Engine):
    """Remembers which operation keys each partition has seen; a JSON file per partition is its disk.

    ``fail_keys`` names keys whose batch raises, once per listed occurrence;
    ``fail_flushes`` is how many ``flush`` calls raise. ``events`` records every
    call the writer made, in order, with the time it was made."""

    name = ENGINE

    def __init__(self, root: Path, *, fail_keys: Sequence[bytes] = (), fail_flushes: int = 0) -> None:
        super().__init__(root)
        self.fail_keys = list(fail_keys)
        self.fail_flushes = fail_flushes
        self.memory: dict[int, set[str]] = {}
        self.files: dict[int, Path] = {}
        self.events: list[tuple[str, Any, float]] = []

    def open(self, partition: int, directory: Path) -> None:
        self.files[partition] = directory / "journal.json"
        self.memory[partition] = set(read_journal(self.files[partition]))

    def close(self, partition: int) -> None:
        self._record("close", partition)
        del self.files[partition]

    def drop(self, partition: int) -> None:
        self._record("drop", partition)

    def apply(self, partition: int, ops: Sequence[Operation]) -> None:
        self._record("apply", (partition, sorted(op.key.decode() for op in ops)))
        for op in ops:
            if op.key in self.fail_keys:
                self.fail_keys.remove(op.key)
                raise OSError(f"injected failure applying {op.key!r}")
        self.memory[partition] |= {op.key.decode() for op in ops}
        if self.durable_on_apply:
            self._write(partition)

    def flush(self, partitions: Collection[int]) -> None:
        self._record("flush", sorted(partitions))
        if self.fail_flushes:
            self.fail_flushes -= 1
            raise OSError("injected failure flushing")
        for partition in partitions:
            self._write(partition)

    def _write(self, partition: int) -> None:
        tmp = self.files[partition].with_suffix(".tmp")
        tmp.write_text(json.dumps(sorted(self.memory[partition])))
        os.replace(tmp, self.files[partition])

    def _record(self, name: str, detail: Any) -> None:
        self.events.append((name, detail, time.monotonic()))

    def calls(self, name: str) -> list[Any]:
        return [detail for event, detail, _ in self.events if event == name]

    def read(self, partition: int, query: Any) -> Any:
        return sorted(self.memory[partition])

    def fold(self, partition: int) -> Iterator[Operation]:
        return iter(())


class DeferredJournal(JournalEngine):
    """The same engine, durable only once ``flush`` wrote its file."""

    durable_on_apply = False


def read_journal(path: Path) -> list[str]:
    return json.loads(path.read_text()) if path.exists() else []


def on_disk(data_dir: Path, partition: int = 0) -> list[str]:
    """What the journal engine made durable for ``partition`` under the node data directory ``data_dir``."""
    return read_journal(data_dir / "engines" / ENGINE / f"{partition:04d}" / "journal.json")


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


async def reopened(data_dir: Path, partition: int = 0, engine: type[JournalEngine] = JournalEngine) -> list[str]:
    """What a fresh writer and engine over ``data_dir`` hold in ``partition`` once it is open."""
    again = Writer(data_dir, engine(data_dir / "engines" / ENGINE))
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


def test_a_partition_whose_apply_failed_is_behind_until_the_reapply_succeeds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The node refuses reads of a partition that is behind (``Node.check_serves``)."""
    monkeypatch.setattr(checkpoints, "REAPPLY_BACKOFF_MS_MIN", 50)

    async def scenario() -> None:
        writer = Writer(tmp_path, JournalEngine(tmp_path / "engines" / ENGINE, fail_keys=[b"a"]))
        await writer.submit(op("other", partition=1))
        with pytest.raises(OSError, match="injected"):
            await writer.submit(op("a"))
        assert writer.writer.is_behind(ENGINE, 0) and not writer.writer.is_behind(ENGINE, 1)
        await eventually(lambda: not writer.writer.is_behind(ENGINE, 0))
        assert writer.engine.read(0, None) == ["a"]
        await writer.stop()

    asyncio.run(scenario())


def test_writes_that_could_not_be_logged_name_their_partitions_once(tmp_path: Path) -> None:
    async def scenario() -> None:
        writer = Writer(tmp_path, JournalEngine(tmp_path / "engines" / ENGINE))
        await writer.submit(op("a", partition=0))
        woken = asyncio.Event()
        writer.writer.on_missed = woken.set
        failing = writer.store.append

        def full_disk(*args: Any, **kwargs: Any) -> Any:
            raise sqlite3.OperationalError("database or disk is full")

        writer.store.append = full_disk  # type: ignore[method-assign]
        with pytest.raises(sqlite3.OperationalError):
            await writer.submit(op("b", partition=2), op("c", partition=5))
        await asyncio.wait_for(woken.wait(), 5)
        assert writer.writer.take_missed() == {2, 5}
        assert writer.writer.take_missed() == set()
        writer.store.append = failing  # type: ignore[method-assign]
        await writer.submit(op("d", partition=2))
        assert writer.writer.take_missed() == set()
        await writer.stop()

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


# --- engines that defer durability to flush ---------------------------------------

REPO = Path(__file__).resolve().parents[2]
CRASH_SCRIPT = """
import asyncio, os, signal, sys
from pathlib import Path
from tests.legion.test_log_writer import DeferredJournal, Writer, op

async def main() -> None:
    data_dir = Path(sys.argv[1])
    writer = Writer(data_dir, DeferredJournal(data_dir / "engines" / "journal"))
    for key in sys.argv[2:]:
        await writer.submit(op(key))  # acknowledged: logged and applied, not flushed
    print("acknowledged", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)

asyncio.run(main())
"""


def crash_after_writes(data_dir: Path, *keys: str) -> None:
    """Write ``keys`` through a deferred journal in another process, which then dies by SIGKILL."""
    result = subprocess.run(
        [sys.executable, "-c", CRASH_SCRIPT, str(data_dir), *keys], cwd=REPO, capture_output=True, timeout=60
    )
    assert result.returncode == -signal.SIGKILL, result.stderr.decode()
    assert result.stdout.decode().strip() == "acknowledged"


def test_acknowledged_but_unflushed_operations_are_replayed_after_kill_9_and_flushed(tmp_path: Path) -> None:
    crash_after_writes(tmp_path, "a", "b")
    assert on_disk(tmp_path) == []  # they were only in the dead process's memory

    async def scenario() -> DeferredJournal:
        writer = Writer(tmp_path, DeferredJournal(tmp_path / "engines" / ENGINE))
        await writer.writer.ensure_open(ENGINE, 0)
        assert writer.engine.read(0, None) == ["a", "b"]  # replayed from the log
        assert on_disk(tmp_path) == ["a", "b"]  # and flushed right after the replay
        await writer.stop()
        return writer.engine

    engine = asyncio.run(scenario())
    assert engine.calls("flush")[0] == [0]
    assert NodeStore(tmp_path).checkpoint(ENGINE, 0) == 2


def test_a_deferred_engine_is_flushed_an_interval_after_its_first_unflushed_apply(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(checkpoints, "FLUSH_INTERVAL_MS", 200)

    async def scenario() -> DeferredJournal:
        writer = Writer(tmp_path, DeferredJournal(tmp_path / "engines" / ENGINE))
        await writer.submit(op("a"), op("b", partition=1))
        assert on_disk(tmp_path) == [] and writer.engine.read(0, None) == ["a"]  # visible, not yet durable
        await eventually(lambda: on_disk(tmp_path) == ["a"])
        await writer.stop()
        return writer.engine

    engine = asyncio.run(scenario())
    applied_at = min(t for event, _, t in engine.events if event == "apply")
    flushes = [(partitions, t) for event, partitions, t in engine.events if event == "flush"]
    assert flushes[0][0] == [0, 1]  # every partition with unflushed operations, in one call
    assert flushes[0][1] - applied_at >= 0.2 - 0.01  # not before the interval (ms rounding)


def test_a_deferred_engine_is_flushed_as_soon_as_enough_operations_await_a_flush(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(checkpoints, "FLUSH_INTERVAL_MS", 60_000)
    monkeypatch.setattr(checkpoints, "FLUSH_OPS_MAX", 3)

    async def scenario() -> None:
        writer = Writer(tmp_path, DeferredJournal(tmp_path / "engines" / ENGINE))
        await writer.submit(op("a"), op("b"))
        await asyncio.sleep(0.2)
        assert writer.engine.calls("flush") == []
        await writer.submit(op("c"))
        await eventually(lambda: on_disk(tmp_path) == ["a", "b", "c"])
        await writer.stop()

    asyncio.run(scenario())


def test_a_write_submitted_with_flush_is_acknowledged_only_after_its_partition_is_flushed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(checkpoints, "FLUSH_INTERVAL_MS", 60_000)

    async def scenario() -> None:
        writer = Writer(tmp_path, DeferredJournal(tmp_path / "engines" / ENGINE))
        await writer.submit(op("other", partition=1))
        await writer.submit(op("a"), flush=True)
        assert on_disk(tmp_path) == ["a"]  # durable by the time the write returned
        assert writer.engine.calls("flush") == [[0]]  # only the partition the write touched
        await writer.stop()

    asyncio.run(scenario())


def test_a_deferred_engine_is_flushed_before_drop_and_before_close(tmp_path: Path) -> None:
    async def scenario() -> DeferredJournal:
        writer = Writer(tmp_path, DeferredJournal(tmp_path / "engines" / ENGINE))
        await writer.submit(op("a"), op("b", partition=1), op("c", partition=2))
        await writer.writer.drop(ENGINE, 2)
        await writer.stop()
        return writer.engine

    engine = asyncio.run(scenario())
    sequence = [(event, detail) for event, detail, _ in engine.events if event != "apply"]
    assert sequence == [("flush", [2]), ("drop", 2), ("close", 2), ("flush", [0, 1]), ("close", 0), ("close", 1)]
    assert (on_disk(tmp_path, 0), on_disk(tmp_path, 1)) == (["a"], ["b"])


def test_when_flush_raises_the_checkpoint_stays_and_the_write_that_asked_for_it_gets_the_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(checkpoints, "FLUSH_INTERVAL_MS", 60_000)
    monkeypatch.setattr(checkpoints, "REAPPLY_BACKOFF_MS_MIN", 60_000)

    async def scenario() -> None:
        writer = Writer(tmp_path, DeferredJournal(tmp_path / "engines" / ENGINE, fail_flushes=2))
        with pytest.raises(OSError, match="flushing"):
            await writer.submit(op("a"), flush=True)
        await writer.stop()  # the flush before close fails too

    asyncio.run(scenario())
    assert NodeStore(tmp_path).checkpoint(ENGINE, 0) == 0
    assert on_disk(tmp_path) == []
    assert asyncio.run(reopened(tmp_path, engine=DeferredJournal)) == ["a"]


def test_a_failed_flush_is_healed_by_reapplying_the_log_and_flushing_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(checkpoints, "FLUSH_INTERVAL_MS", 50)
    monkeypatch.setattr(checkpoints, "REAPPLY_BACKOFF_MS_MIN", 50)

    async def scenario() -> DeferredJournal:
        writer = Writer(tmp_path, DeferredJournal(tmp_path / "engines" / ENGINE, fail_flushes=1))
        await writer.submit(op("a"))
        await eventually(lambda: on_disk(tmp_path) == ["a"])
        await writer.stop()
        return writer.engine

    engine = asyncio.run(scenario())
    assert engine.calls("apply") == [(0, ["a"]), (0, ["a"])]  # applied, flush failed, re-applied from the log
    assert NodeStore(tmp_path).checkpoint(ENGINE, 0) == 1


def test_a_replay_that_fails_leaves_the_partition_open_and_is_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(checkpoints, "REAPPLY_BACKOFF_MS_MIN", 50)
    crash_after_writes(tmp_path, "a")

    async def scenario() -> None:
        writer = Writer(tmp_path, DeferredJournal(tmp_path / "engines" / ENGINE, fail_keys=[b"a"]))
        await writer.writer.ensure_open(ENGINE, 0)
        assert writer.writer.is_open(ENGINE, 0) and writer.engine.read(0, None) == []
        await eventually(lambda: on_disk(tmp_path) == ["a"])
        await writer.stop()

    asyncio.run(scenario())


# --- compaction -----------------------------------------------------------------------


def logged(data_dir: Path, partition: int = 0) -> list[int]:
    """The seqs the node's operation log holds for ``partition`` of the journal engine."""
    with closing(sqlite3.connect(f"file:{data_dir / 'node.sqlite'}?mode=ro", uri=True)) as conn:
        rows = conn.execute("SELECT seq FROM oplog WHERE engine = ? AND partition = ? ORDER BY seq", (ENGINE, partition))
        return [seq for (seq,) in rows]


def test_the_log_keeps_no_rows_at_or_below_a_flushed_checkpoint_and_a_restart_still_sees_everything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(checkpoints, "FLUSH_INTERVAL_MS", 60_000)
    monkeypatch.setattr(checkpoints, "COMPACT_INTERVAL_MS", 20)

    async def scenario() -> None:
        writer = Writer(tmp_path, DeferredJournal(tmp_path / "engines" / ENGINE))
        await writer.submit(op("a"), op("b"), op("x", partition=1), flush=True)  # seqs 1-3, flushed
        await writer.submit(op("c"))  # seq 4: applied, not flushed, so not compactable
        await eventually(lambda: logged(tmp_path) == [4] and logged(tmp_path, 1) == [])
        assert writer.store.checkpoint(ENGINE, 0) == 2  # recorded with the rows' deletion
        await writer.stop()

    asyncio.run(scenario())
    assert asyncio.run(reopened(tmp_path, engine=DeferredJournal)) == ["a", "b", "c"]
    assert asyncio.run(reopened(tmp_path, partition=1, engine=DeferredJournal)) == ["x"]


def test_a_durable_engine_log_is_compacted_in_bounded_passes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checkpoints, "COMPACT_INTERVAL_MS", 300)
    monkeypatch.setattr(log_writer, "COMPACT_BATCH_OPS_MAX", 3)

    async def scenario() -> None:
        writer = Writer(tmp_path, JournalEngine(tmp_path / "engines" / ENGINE))
        await writer.submit(*[op(f"k{i}") for i in range(7)])
        # The first pass comes at once and deletes 3 rows; the rest wait an interval per pass.
        await eventually(lambda: len(logged(tmp_path)) < 7)
        assert len(logged(tmp_path)) == 4
        await eventually(lambda: logged(tmp_path) == [])
        await writer.stop()

    asyncio.run(scenario())
    assert asyncio.run(reopened(tmp_path)) == [f"k{i}" for i in range(7)]
