"""Verifying replicas: does every replica of every partition hold the same state?

Pure. A replica's state of one engine's partition is summarised as the count
and a digest of its fold, sorted (``Operation`` is totally ordered, so two
replicas that converged give the same digest whatever order their
operations arrived in). ``compare`` lines up what each node answered against
the placement and names every partition whose live replicas disagree, every
node that did not answer, and every partition fewer than two replicas could
vouch for. ``legion cluster verify`` prints the report; the runtime gathers
the digests (``/internal/digest``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import msgpack

from legion.replication import Operation


@dataclass(frozen=True, slots=True)
class Summary:
    """One replica's view of one engine's partition: how many operations its fold has, and their digest."""

    count: int
    digest: str


@dataclass(frozen=True, slots=True)
class Divergence:
    """An engine's partition whose replicas disagree: each replica's summary, by node."""

    engine: str
    partition: int
    replicas: Mapping[str, Summary]


@dataclass(frozen=True, slots=True)
class Report:
    """What ``compare`` found. Clean when nothing differs and every partition was checked on two replicas or more."""

    checked: int
    differing: list[Divergence] = field(default_factory=list)
    unverified: list[tuple[str, int]] = field(default_factory=list)
    unreachable: dict[str, str] = field(default_factory=dict)

    @property
    def clean(self) -> bool:
        return not self.differing and not self.unverified and not self.unreachable

    def to_json(self) -> dict[str, object]:
        return {
            "clean": self.clean,
            "checked": self.checked,
            "differing": [
                {
                    "engine": d.engine,
                    "partition": d.partition,
                    "replicas": {n: {"count": s.count, "digest": s.digest} for n, s in sorted(d.replicas.items())},
                }
                for d in self.differing
            ],
            "unverified": [{"engine": e, "partition": p} for e, p in self.unverified],
            "unreachable": dict(sorted(self.unreachable.items())),
        }


def summarise(ops: Iterable[Operation]) -> Summary:
    """The count and digest of a fold, independent of the order it yields its operations in."""
    hasher = hashlib.blake2b(digest_size=16)
    count = 0
    for op in sorted(ops):
        hasher.update(msgpack.packb(op.to_wire(), use_bin_type=True))
        count += 1
    return Summary(count, hasher.hexdigest())


def compare(
    placement: Sequence[Sequence[str]],
    engines: Sequence[str],
    answers: Mapping[str, Mapping[tuple[str, int], Summary]],
    unreachable: Mapping[str, str],
) -> Report:
    """Line up each node's ``answers`` against ``placement`` (the replicas of each partition)."""
    differing: list[Divergence] = []
    unverified: list[tuple[str, int]] = []
    checked = 0
    for partition, replicas in enumerate(placement):
        for engine in engines:
            seen = {n: answers[n][(engine, partition)] for n in replicas if (engine, partition) in answers.get(n, {})}
            if len(seen) < min(2, len(replicas)):
                unverified.append((engine, partition))
                continue
            checked += 1
            if len(set(seen.values())) > 1:
                differing.append(Divergence(engine, partition, seen))
    return Report(checked, differing, unverified, dict(unreachable))
