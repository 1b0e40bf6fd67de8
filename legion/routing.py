"""Routing decisions: which replicas a request goes to, in what order.

Pure: functions of the cluster state, the set of nodes believed live, and the
deciding node's id. The coordinator (``legion.runtime.coordinator``) carries
them out — forwarding with a deadline and retrying the next candidate.

- A write goes to every live owner of the key's partition: the current
  preference list plus, during a rebalance, the nodes gaining the partition.
  Only acknowledgements from the current preference list count towards ``W``
  — and, for an owner that is down, its fallback's: the write goes to the
  next live member outside the preference list, which keeps it as a hint
  (sloppy quorum, ``legion.hints``; ``WritePlan.hinted``).
- A read asks live replicas of the current preference list; the deciding node
  puts itself first when it holds one (it saves a network hop), the rest keep
  preference order.
- A coverage request picks one live replica per partition (itself when it
  can) and groups the partitions by node, so each node gets one call. A
  second round of a request may *prefer* the replicas that served the first
  (e.g. a search's scoring round after its statistics round): a preferred
  node is used when it is live, holds the partition in the current placement
  and is not avoided; otherwise the usual order decides.
- A replica that knows a newer cluster state than the coordinator of a write
  planned with *forwards* the write to the owners the coordinator could not
  know of (``forward_targets``): during a rebalance a coordinator that has not
  yet heard of the move writes to the old owners only, and the node gaining
  the partition must not miss what it is sent.
- Engines that plan work of their own (a map/reduce job's data-local tasks)
  get the same inputs as one ``PlacementView`` (``placement_view``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from legion.cluster_state import REMOVED, ClusterState, owners
from legion.engine import PlacementView
from legion.hints import counts_towards_quorum, fallback_order, hint_holders


@dataclass(frozen=True, slots=True)
class WritePlan:
    """Who receives a write and who counts towards its quorum.

    ``hinted`` pairs each owner that is down with the node keeping its hint;
    ``quorum`` is who counts towards ``W``: the live owners, then the hint
    holders that hold no replica themselves."""

    partition: int
    counted: tuple[str, ...]
    extra: tuple[str, ...]
    replicas: int
    hinted: tuple[tuple[str, str], ...] = ()

    @property
    def counted_holders(self) -> tuple[str, ...]:
        """The hint holders whose acknowledgement counts towards ``W`` (they hold no replica themselves)."""
        owners_now = self.counted + self.extra
        # A holder keeping hints for two owners is still one node: it counts once.
        return tuple(dict.fromkeys(h for _owner, h in self.hinted if counts_towards_quorum(h, owners_now)))

    @property
    def quorum(self) -> tuple[str, ...]:
        return self.counted + self.counted_holders


def live_nodes(state: ClusterState, suspects: frozenset[str] | set[str] = frozenset()) -> set[str]:
    """Members not marked down in the state and not locally suspected."""
    return {m.id for m in state.members if not m.down and m.status != REMOVED} - set(suspects)


def write_plan(state: ClusterState, partition: int, live: set[str], coordinator: str | None = None) -> WritePlan:
    """The write's targets; with a ``coordinator`` id, hints for the owners that are down (sloppy quorum)."""
    current = state.placement[partition]
    everyone = owners(state, partition)
    gaining = tuple(n for n in everyone if n not in current)
    hinted: tuple[tuple[str, str], ...] = ()
    if coordinator is not None:
        members = [m.id for m in state.members if m.status != REMOVED]
        holders = hint_holders(current, fallback_order(members, everyone, partition), live, coordinator)
        hinted = tuple(holders.items())
    return WritePlan(
        partition=partition,
        counted=tuple(n for n in current if n in live),
        extra=tuple(n for n in gaining if n in live),
        replicas=len(current),
        hinted=hinted,
    )


def forward_targets(
    mine: ClusterState, theirs: ClusterState | None, partition: int, live: set[str], self_id: str
) -> tuple[str, ...]:
    """Live owners of ``partition`` under ``mine`` that a coordinator planning with ``theirs`` did not write to.

    ``theirs`` None (a state this node no longer remembers): every other live owner."""
    known = set(owners(theirs, partition)) if theirs is not None else set()
    return tuple(n for n in owners(mine, partition) if n in live and n != self_id and n not in known)


def read_order(state: ClusterState, partition: int, live: set[str], self_id: str) -> tuple[str, ...]:
    """Live replicas of ``partition`` in the order a read should try them."""
    current = [n for n in state.placement[partition] if n in live]
    if self_id in current:
        current.remove(self_id)
        current.insert(0, self_id)
    return tuple(current)


def coverage_plan(
    state: ClusterState,
    live: set[str],
    self_id: str,
    partitions: Sequence[int] | None = None,
    avoid: frozenset[str] = frozenset(),
    prefer: Mapping[int, str] | None = None,
) -> dict[str, list[int]]:
    """One live replica per partition, grouped by node; partitions with no live replica map to ''.

    ``avoid`` names nodes that already failed this request; ``prefer`` maps a
    partition to the node wanted for it (honoured only when that node is
    eligible: live, in the partition's current preference list, not avoided)."""
    plan: dict[str, list[int]] = {}
    for p in range(state.partitions) if partitions is None else partitions:
        order = [n for n in read_order(state, p, live, self_id) if n not in avoid]
        wanted = prefer.get(p) if prefer else None
        chosen = wanted if wanted in order else (order[0] if order else "")
        plan.setdefault(chosen, []).append(p)
    return plan


def placement_view(
    state: ClusterState, live: set[str] | frozenset[str], attributes: Mapping[str, Mapping[str, str]]
) -> PlacementView:
    """What ``Cluster.placement()`` answers: the current placement, liveness, and members' attributes and URLs.

    Removed members are left out; a member not heard of yet has empty attributes."""
    members = [m for m in state.members if m.status != REMOVED]
    ids = {m.id for m in members}
    return PlacementView(
        partitions=state.partitions,
        preference=tuple(tuple(nodes) for nodes in state.placement),
        live=frozenset(live) & ids,
        attributes={m.id: dict(attributes.get(m.id, {})) for m in members},
        urls={m.id: m.url for m in members},
        epoch=state.epoch,
    )
