"""The convergence kit passes a convergent engine and catches the two classic mistakes.

The engines here are small counters kept in a JSON file per partition: the
correct one keeps one increment per operation id (insert-once); one broken
twin adds every operation it is given (apply is not idempotent), the other
folds a partition into one compacted total under a fresh id (a handoff's
log tail then counts again what the total already holds).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from legion.engine import Engine
from legion.replication import Operation
from legion.testing.convergence import ConvergenceError, assert_converges, check_convergence, deliver


class Counters(Engine):
    """Correct: per partition, {operation id: [key, amount]}, written through on apply."""

    name = "counters"

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.files: dict[int, Path] = {}
        self.increments: dict[int, dict[str, list[Any]]] = {}

    def open(self, partition: int, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.files[partition] = directory / "increments.json"
        path = self.files[partition]
        self.increments[partition] = json.loads(path.read_text()) if path.exists() else {}

    def close(self, partition: int) -> None:
        del self.files[partition], self.increments[partition]

    def apply(self, partition: int, ops: Sequence[Operation]) -> None:
        for op in ops:
            self.record(partition, op)
        self.files[partition].write_text(json.dumps(self.increments[partition]))

    def record(self, partition: int, op: Operation) -> None:
        self.increments[partition][op.id] = [op.key.hex(), int(op.body), op.hlc, op.origin]

    def read(self, partition: int, query: Any) -> Any:
        return sum(amount for key, amount, _, _ in self.increments[partition].values() if key == query.hex())

    def fold(self, partition: int) -> Iterator[Operation]:
        for key, amount, hlc, origin in self.increments[partition].values():
            yield Operation(self.name, partition, bytes.fromhex(key), hlc, origin, "add", str(amount).encode())


class NotIdempotent(Counters):
    """Broken: every operation counts, even one seen before (a replay, a duplicate delivery)."""

    def record(self, partition: int, op: Operation) -> None:
        self.increments[partition][f"{len(self.increments[partition])}"] = [op.key.hex(), int(op.body), op.hlc, op.origin]


class CompactingFold(Counters):
    """Broken: the fold sends one total per key under a new id, so ops already in it count again."""

    def fold(self, partition: int) -> Iterator[Operation]:
        totals: dict[str, int] = {}
        for key, amount, _, _ in self.increments[partition].values():
            totals[key] = totals.get(key, 0) + amount
        for key, total in sorted(totals.items()):
            yield Operation(self.name, partition, bytes.fromhex(key), 1, "compacted", "add", str(total).encode())


def increments(rng: random.Random) -> list[Operation]:
    """Up to 30 distinct increments of three keys in two partitions (distinct (hlc, origin) each)."""
    stamps = rng.sample([(hlc, origin) for hlc in range(1, 40) for origin in ("n1", "n2")], rng.randint(1, 30))
    return [
        Operation("counters", rng.randrange(2), rng.choice([b"a", b"b", b"c"]), hlc, origin, "add", str(rng.randint(1, 9)).encode())
        for hlc, origin in stamps
    ]


def totals(ops: list[Operation]) -> dict[str, int]:
    out: dict[str, int] = {}
    for op in ops:
        out[op.key.decode()] = out.get(op.key.decode(), 0) + int(op.body)
    return out


def read_totals(engine: Engine, partition: int) -> dict[str, int]:
    return {key.decode(): engine.read(partition, key) for key in (b"a", b"b", b"c") if engine.read(partition, key)}


def test_a_convergent_engine_passes_with_the_default_fold_comparison_and_with_reads_against_a_model():
    check_convergence(Counters, increments, seeds=range(30))
    check_convergence(Counters, increments, seeds=range(30), state=read_totals, expected=totals)


def test_an_apply_that_is_not_idempotent_is_caught_and_the_seed_is_named():
    with pytest.raises(ConvergenceError, match=r"seed \d+"):
        check_convergence(NotIdempotent, increments, seeds=range(30), state=read_totals)


def test_a_fold_that_sends_a_compacted_total_is_caught_at_the_handoff():
    with pytest.raises(ConvergenceError, match="handed-off replica"):
        check_convergence(CompactingFold, increments, seeds=range(30), state=read_totals)


def test_two_broken_replicas_that_agree_are_still_caught_by_the_model():
    # Every replica of this engine doubles the same way only when it sees everything twice; the model does not.
    class DoublesEverything(Counters):
        def read(self, partition: int, query: Any) -> Any:
            return 2 * super().read(partition, query)

    check_convergence(DoublesEverything, increments, seeds=range(5), state=read_totals)
    with pytest.raises(ConvergenceError, match="the model expects"):
        check_convergence(DoublesEverything, increments, seeds=range(5), state=read_totals, expected=totals)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32), st.randoms(use_true_random=False))
def test_the_kit_runs_under_hypothesis(seed, rng):
    assert_converges(Counters, increments(random.Random(seed)), rng, expected=None, state=read_totals)


@given(st.lists(st.integers(0, 99), max_size=30, unique=True), st.randoms(use_true_random=False))
def test_a_delivery_holds_every_operation_at_least_once_and_nothing_else(values, rng):
    ops = [Operation("counters", 0, b"k", v, "n1", "add", b"1") for v in values]
    batches = deliver(ops, rng)
    delivered = [op for batch in batches for op in batch]
    assert set(delivered) == set(ops) and len(batches) <= 5


def test_anti_entropy_methods_that_miss_keys_are_caught():
    # The defaults (derived from fold) pass above; each of these breaks one of the three methods.
    class ForgetfulDigestKeys(Counters):
        def digest_keys(self, op: Operation) -> tuple[bytes, ...]:
            return ()  # the hash tree is never told what apply changed

    class EmptyFoldKeys(Counters):
        def fold_keys(self, partition: int, keys) -> Iterator[Operation]:
            return iter(())  # the exchange finds the differing keys and ships nothing

    class BlindVersions(Counters):
        def versions(self, partition: int, keys=None) -> Iterator[tuple[bytes, bytes]]:
            for key, version in super().versions(partition, keys):
                yield key, b"same"  # every replica looks alike: nothing is repaired

    with pytest.raises(ConvergenceError, match="kept current through digest_keys"):
        check_convergence(ForgetfulDigestKeys, increments, seeds=range(10))
    with pytest.raises(ConvergenceError, match="after shipping fold_keys"):
        check_convergence(EmptyFoldKeys, increments, seeds=range(10))
    with pytest.raises(ConvergenceError, match="anti-entropy exchange"):
        check_convergence(BlindVersions, increments, seeds=range(10), state=read_totals)
