"""The convergence kit: does an engine reach one state whatever way the core delivers its operations?

Does file I/O only in temporary directories (each replica is a real engine
instance on its own root); no sockets, no threads, no clock. It is the test
every engine author should write first, packaged: the core delivers
operations **at least once and in any order** — directly, again from a
replay after a crash, again in a handoff's log tail — so an engine is
correct only if every such delivery of one set of operations reaches the
same state.

``assert_converges(engine_class, ops, rng)`` takes one set of operations and
a seeded ``random.Random`` and:

1. applies the operations to ``replicas`` fresh replicas, each in its own
   shuffled order, with random duplicates, cut into random batches (through
   ``apply_batch``, as the writer thread calls it), with a restart in the
   middle (``flush``, ``close``, ``open``, then the last batch again — a
   replay of what was above the checkpoint);
2. hands replica 0 off to an empty replica the way the core does: its
   ``fold`` shuffled and applied in batches, then a *log tail* — a random
   sample of the operations the fold already covers, because a handoff's
   tail overlaps its snapshot;
3. repairs two replicas by anti-entropy the way the core does
   (``legion.runtime.anti_entropy``): each is fed its own share of the
   operations (together, all of them), keeping a ``legion.hash_tree`` current
   through ``digest_keys`` and ``versions(partition, keys)`` after every
   batch — which must equal a tree rebuilt from ``versions(partition)``;
   the trees' ``diff`` names the keys to ship, ``fold_keys`` ships them both
   ways, and then both replicas must list the same versions;
4. compares every replica's ``state(engine, partition)`` (default: the
   sorted ``fold``; pass your own, e.g. reads of every key) and, when given,
   ``expected(ops_of_the_partition)``, a model computed from the operations
   alone — two replicas that are wrong the same way still agree.

A difference raises ``ConvergenceError`` (an ``AssertionError``) saying
which replica, how its operations were delivered, and both states.
``check_convergence(engine_class, generate, seeds=range(N))`` runs it over
seeds, ``generate(rng)`` drawing the operations; the error names the seed.
With hypothesis, call ``assert_converges`` from a ``@given`` test with
``st.randoms(use_true_random=False)``.

Quickstart::

    from legion.testing.convergence import check_convergence

    check_convergence(MyEngine, lambda rng: [make_op(rng) for _ in range(20)], seeds=range(50))
"""

from __future__ import annotations

import random
import tempfile
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from legion.engine import Engine
from legion.hash_tree import HashTree, diff
from legion.replication import Operation

State = Callable[[Engine, int], Any]
Expected = Callable[[list[Operation]], Any]
REPLICAS_DEFAULT = 3
BATCHES_MAX = 5
STATE_SHOWN_CHARS_MAX = 600


class ConvergenceError(AssertionError):
    """Two deliveries of one set of operations left different states (or a state differs from the model)."""


def folded_state(engine: Engine, partition: int) -> list[Operation]:
    """The default comparison: the partition's fold, in the canonical operation order."""
    return sorted(engine.fold(partition))


@dataclass
class _Replica:
    """One engine instance on its own directory, with the partitions it opened and how it was fed."""

    engine: Engine
    directory: Path
    partitions: tuple[int, ...]
    story: list[str]

    @classmethod
    def open(cls, engine_class: type[Engine], directory: Path, partitions: Iterable[int]) -> _Replica:
        replica = cls(engine_class(directory / "engine"), directory, tuple(sorted(set(partitions))), [])
        (directory / "engine").mkdir(parents=True, exist_ok=True)
        for partition in replica.partitions:
            replica.engine.open(partition, directory / "partitions" / str(partition))
        return replica

    def apply(self, batch: Sequence[Operation]) -> None:
        grouped: dict[int, list[Operation]] = defaultdict(list)
        for op in batch:
            grouped[op.partition].append(op)
        self.engine.apply_batch(dict(grouped))

    def flush(self) -> None:
        if not self.engine.durable_on_apply:
            self.engine.flush(self.partitions)

    def restart(self) -> None:
        """What a node restart does to the engine: flushed, closed, a new instance opened on the same files."""
        self.flush()
        self.close()
        self.engine = type(self.engine)(self.directory / "engine")
        for partition in self.partitions:
            self.engine.open(partition, self.directory / "partitions" / str(partition))

    def close(self) -> None:
        for partition in self.partitions:
            self.engine.close(partition)


def deliver(ops: Sequence[Operation], rng: random.Random) -> list[list[Operation]]:
    """Every operation at least once, some again, shuffled, cut into one to ``BATCHES_MAX`` batches."""
    stream = list(ops) + [op for op in ops if rng.random() < 0.3]
    rng.shuffle(stream)
    if len(stream) < 2:
        return [stream]
    cuts = sorted(rng.sample(range(1, len(stream)), min(len(stream) - 1, rng.randint(0, BATCHES_MAX - 1))))
    bounds = [0, *cuts, len(stream)]
    return [stream[start:end] for start, end in zip(bounds, bounds[1:])]


def assert_converges(
    engine_class: type[Engine],
    ops: Sequence[Operation],
    rng: random.Random,
    *,
    replicas: int = REPLICAS_DEFAULT,
    state: State = folded_state,
    expected: Expected | None = None,
) -> None:
    """Apply ``ops`` to ``replicas`` fresh replicas and a handed-off one; raise ``ConvergenceError`` unless all agree."""
    assert replicas >= 2, "convergence needs at least two replicas to compare"
    partitions = sorted({op.partition for op in ops} | {0})
    with tempfile.TemporaryDirectory(prefix="legion-convergence-") as root:
        group = [_Replica.open(engine_class, Path(root, f"replica-{i}"), partitions) for i in range(replicas)]
        try:
            for replica in group:
                _feed(replica, ops, rng)
            group.append(_handed_off(group[0], ops, Path(root, "handed-off"), rng))
            for replica in group:
                replica.flush()
            _compare(group, partitions, ops, state, expected)
            repaired = _repaired(engine_class, ops, Path(root, "repaired"), partitions, rng)
            group.extend(repaired)
            _compare([group[0], *repaired], partitions, ops, state, None)
        finally:
            for replica in group:
                replica.close()


def check_convergence(
    engine_class: type[Engine],
    generate: Callable[[random.Random], Sequence[Operation]],
    *,
    seeds: Iterable[int] = range(25),
    replicas: int = REPLICAS_DEFAULT,
    state: State = folded_state,
    expected: Expected | None = None,
) -> None:
    """``assert_converges`` once per seed, with the operations ``generate(Random(seed))`` draws."""
    for seed in seeds:
        rng = random.Random(seed)
        ops = list(generate(rng))
        try:
            assert_converges(engine_class, ops, rng, replicas=replicas, state=state, expected=expected)
        except ConvergenceError as exc:
            raise ConvergenceError(f"seed {seed} ({len(ops)} operations): {exc}") from None


def _feed(replica: _Replica, ops: Sequence[Operation], rng: random.Random) -> None:
    batches = deliver(ops, rng)
    restart_after = rng.randrange(len(batches))
    for index, batch in enumerate(batches):
        replica.apply(batch)
        replica.story.append(f"batch of {len(batch)}")
        if index == restart_after:
            replica.restart()
            replica.apply(batch)  # the replay of what was logged above the checkpoint
            replica.story.append("restart, replay of that batch")


def _handed_off(source: _Replica, ops: Sequence[Operation], directory: Path, rng: random.Random) -> _Replica:
    target = _Replica.open(type(source.engine), directory, source.partitions)
    source.flush()
    folded = [op for partition in source.partitions for op in source.engine.fold(partition)]
    rng.shuffle(folded)
    for batch in deliver(folded, rng):
        target.apply(batch)
    tail = [op for op in ops if rng.random() < 0.5]
    target.apply(tail)
    target.story = [f"fold of replica 0 ({len(folded)} operations), then a log tail of {len(tail)} it already covered"]
    return target


def _repaired(
    engine_class: type[Engine], ops: Sequence[Operation], directory: Path, partitions: list[int], rng: random.Random
) -> list[_Replica]:
    """Two replicas fed complementary shares of ``ops``, then repaired by a hash-tree exchange (step 3)."""
    pair = [_Replica.open(engine_class, directory / side, partitions) for side in ("a", "b")]
    try:
        _exchange(pair, ops, partitions, rng)
    except BaseException:
        for replica in pair:
            replica.close()
        raise
    return pair


def _exchange(pair: list[_Replica], ops: Sequence[Operation], partitions: list[int], rng: random.Random) -> None:
    shares: list[list[Operation]] = [[], []]
    for op in ops:
        for side in {0: (0,), 1: (1,), 2: (0, 1)}[rng.randrange(3)]:
            shares[side].append(op)
    trees = []
    for replica, share in zip(pair, shares):
        trees.append({p: HashTree.build(replica.engine.versions(p)) for p in partitions})
        for batch in deliver(share, rng):
            replica.apply(batch)
            _update_trees(replica.engine, trees[-1], batch)
        replica.flush()
        replica.story.append(f"{len(share)} of the operations, then an anti-entropy exchange")
        for p in partitions:
            rebuilt = HashTree.build(replica.engine.versions(p))
            if trees[-1][p].items() != rebuilt.items():
                raise ConvergenceError(
                    f"partition {p}: the hash tree kept current through digest_keys and versions(partition, keys) "
                    f"holds {_shown(trees[-1][p].items())}, versions(partition) lists {_shown(rebuilt.items())}"
                )
    a, b = pair
    for p in partitions:
        keys = sorted(diff(trees[0][p], trees[1][p]))
        to_b, to_a = list(a.engine.fold_keys(p, keys)), list(b.engine.fold_keys(p, keys))
        b.apply(to_b)
        a.apply(to_a)
    a.flush()
    b.flush()
    for p in partitions:
        versions_a, versions_b = dict(a.engine.versions(p)), dict(b.engine.versions(p))
        if versions_a != versions_b:
            raise ConvergenceError(
                f"partition {p}: after shipping fold_keys of the differing keys both ways, one replica lists "
                f"{_shown(versions_a)}, the other {_shown(versions_b)}"
            )


def _update_trees(engine: Engine, trees: dict[int, HashTree], batch: Sequence[Operation]) -> None:
    touched: dict[int, set[bytes]] = defaultdict(set)
    for op in batch:
        keys = engine.digest_keys(op)
        if keys is None:  # any key of any partition may have changed: list them again
            trees.update({p: HashTree.build(engine.versions(p)) for p in trees})
            return
        touched[op.partition].update(keys)
    for p, keys in touched.items():
        now = dict(engine.versions(p, keys))
        for key in keys:
            trees[p].set(key, now.get(key))


def _compare(
    group: list[_Replica], partitions: list[int], ops: Sequence[Operation], state: State, expected: Expected | None
) -> None:
    for partition in partitions:
        reference = state(group[0].engine, partition)
        if expected is not None:
            model = expected([op for op in ops if op.partition == partition])
            if reference != model:
                raise ConvergenceError(
                    f"partition {partition}: replica 0 ({', '.join(group[0].story)}) holds {_shown(reference)}, "
                    f"the model expects {_shown(model)}"
                )
        for index, replica in enumerate(group[1:], start=1):
            other = state(replica.engine, partition)
            if other != reference:
                name = "the handed-off replica" if "fold of replica 0" in replica.story[0] else f"replica {index}"
                raise ConvergenceError(
                    f"partition {partition}: {name} ({', '.join(replica.story)}) holds {_shown(other)}, "
                    f"replica 0 ({', '.join(group[0].story)}) holds {_shown(reference)}"
                )


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= STATE_SHOWN_CHARS_MAX else text[:STATE_SHOWN_CHARS_MAX] + "…"
