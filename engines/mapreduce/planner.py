"""Planning map tasks: which node's worker reads which partitions, grouped into few tasks.

Pure: functions of a placement view (the shape of ``Cluster.placement()``:
preference lists, live members, member attributes) and the sizes of the
partitions. The job runner carries the plan out; the planner never talks to
anything.

- ``choose_replicas``: for every partition, the first replica in its
  preference list that is live, not avoided, and runs a Dask worker (it
  publishes ``RESOURCE_ATTRIBUTE``) — the primary while it is up. Primaries
  are balanced across nodes by the core, so map work is too.
- ``group_tasks``: each node's partitions in at most ``tasks_per_node``
  tasks, balanced by bytes (largest first onto the lightest task). One task
  per worker thread is the sweet spot: Dask costs ~1.5 ms per task, and a
  task that loops over its partitions reads memory-mapped files with no
  overhead between them.
- ``replan``: the partitions of tasks whose node died, placed again while
  avoiding every node known dead — a task restricted to a dead node's worker
  would wait forever.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

RESOURCE_ATTRIBUTE = "mr.resource"
WORKER_ATTRIBUTE = "mr.worker"
THREADS_ATTRIBUTE = "mr.threads"


class PlacementLike(Protocol):
    """What the planner reads of ``legion``'s placement view."""

    @property
    def partitions(self) -> int: ...

    @property
    def preference(self) -> Sequence[Sequence[str]]: ...

    @property
    def live(self) -> Collection[str]: ...

    @property
    def attributes(self) -> Mapping[str, Mapping[str, str]]: ...


@dataclass(frozen=True, slots=True)
class Placement:
    """A placement view of one's own (tests, the simulator): the fields the planner reads."""

    partitions: int
    preference: tuple[tuple[str, ...], ...]
    live: frozenset[str]
    attributes: Mapping[str, Mapping[str, str]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class MapTaskPlan:
    """One map task: the node whose worker runs it and the partitions it reads there."""

    node: str
    partitions: tuple[int, ...]


def has_worker(view: PlacementLike, node: str) -> bool:
    return bool(view.attributes.get(node, {}).get(RESOURCE_ATTRIBUTE))


def choose_replicas(
    view: PlacementLike, partitions: Sequence[int] | None = None, avoid: Collection[str] = frozenset()
) -> tuple[dict[int, str], list[int]]:
    """Partition → the replica to read it on (see the module docstring), and the partitions with none."""
    chosen: dict[int, str] = {}
    missing: list[int] = []
    for p in range(view.partitions) if partitions is None else partitions:
        node = next(
            (n for n in view.preference[p] if n in view.live and n not in avoid and has_worker(view, n)), None
        )
        if node is None:
            missing.append(p)
        else:
            chosen[p] = node
    return chosen, missing


def group_tasks(
    assignment: Mapping[int, str], tasks_per_node: int | Mapping[str, int], sizes: Mapping[int, int] | None = None
) -> list[MapTaskPlan]:
    """Each node's partitions in at most ``tasks_per_node`` tasks of similar size; empty tasks are left out."""
    by_node: dict[str, list[int]] = {}
    for p, node in assignment.items():
        by_node.setdefault(node, []).append(p)
    plans: list[MapTaskPlan] = []
    for node in sorted(by_node):
        limit = tasks_per_node if isinstance(tasks_per_node, int) else tasks_per_node.get(node, 1)
        if limit < 1:
            raise ValueError(f"a node runs at least one map task, got {limit} for {node}")
        parts = by_node[node]
        bins: list[list[int]] = [[] for _ in range(min(limit, len(parts)))]
        loads = [0] * len(bins)
        # Largest first onto the lightest bin: within 4/3 of the best balance.
        for p in sorted(parts, key=lambda q: (-(sizes or {}).get(q, 1), q)):
            lightest = min(range(len(bins)), key=lambda i: (loads[i], i))
            bins[lightest].append(p)
            loads[lightest] += max(1, (sizes or {}).get(p, 1))
        plans.extend(MapTaskPlan(node, tuple(sorted(b))) for b in bins if b)
    return plans


def replan(
    view: PlacementLike, lost: Sequence[MapTaskPlan], dead: Collection[str]
) -> tuple[dict[int, str], list[int]]:
    """Where the partitions of ``lost`` tasks go now, avoiding every node in ``dead``."""
    partitions = sorted(p for task in lost for p in task.partitions)
    return choose_replicas(view, partitions, avoid=dead)


def tasks_per_node(view: PlacementLike, default: int = 1) -> dict[str, int]:
    """How many map tasks each node's worker runs at once: its published thread count, else ``default``."""
    out: dict[str, int] = {}
    for node, attributes in view.attributes.items():
        raw = attributes.get(THREADS_ATTRIBUTE, "")
        out[node] = int(raw) if raw.isdigit() and int(raw) > 0 else default
    return out
