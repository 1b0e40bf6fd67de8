"""The cluster state: one versioned document every node agrees on.

Pure. It holds the members (id, address, status), the placement of partitions
on members, a *pending* placement while a rebalance is in flight, and an
epoch. Functions here take a state and return the changed state; they never
bump the epoch themselves — ``commit`` does that, once per decision, and only
the claimant calls it. Gossip keeps the newer of two states (``newer``).

A rebalance, Riak-style:

1. membership changes (a node joins, or is asked to leave) → ``plan`` sets
   ``pending`` to the placement the new member set should have;
2. every node that gains a partition in ``pending`` pulls it from a current
   replica, then reports it ready (``mark_ready``);
3. when every gained slot is ready, ``try_commit`` makes ``pending`` the
   placement; joining members become up and leaving ones removed.

Writes during step 2 go to the current *and* the pending owners, so a
gaining node misses nothing between its snapshot and the commit.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from legion.errors import BadRequest, Conflict, NotFound
from legion.hints import PENDING_ATTRIBUTE, parse_pending_summary, unhealthy_summary
from legion.placement import Placement, place
from legion.primaries import balance_primaries

JOINING = "joining"
UP = "up"
LEAVING = "leaving"
DOWN = "down"
REMOVED = "removed"
STATUSES = (JOINING, UP, LEAVING, DOWN, REMOVED)


@dataclass(frozen=True, slots=True)
class Member:
    """A node of the cluster. ``down`` is the failure detector's verdict, kept apart
    from the lifecycle ``status`` so a member that comes back resumes where it was."""

    id: str
    url: str
    status: str
    down: bool = False

    @property
    def shown_status(self) -> str:
        return DOWN if self.down and self.status != REMOVED else self.status


@dataclass(frozen=True, slots=True)
class ClusterState:
    """One version of the cluster's membership and placement."""

    cluster_id: str
    partitions: int
    replicas: int
    epoch: int
    committed_by: str
    members: tuple[Member, ...]
    placement: Placement
    pending: Placement | None = None
    ready: frozenset[tuple[int, str]] = field(default_factory=frozenset)
    # The consensus fields (``legion.consensus``): the term of the leader that published this
    # state, the members whose majority must accept it (``voters``) and those of the state it
    # was built on (``previous_voters``: a commit needs a majority of both), and that state's term.
    term: int = 0
    voters: tuple[str, ...] = ()
    previous_voters: tuple[str, ...] = ()
    parent_term: int = 0

    def member(self, node_id: str) -> Member:
        for member in self.members:
            if member.id == node_id:
                return member
        raise NotFound(f"no member {node_id!r} in this cluster")

    def has_member(self, node_id: str) -> bool:
        return any(m.id == node_id for m in self.members)

    def url_of(self, node_id: str) -> str:
        return self.member(node_id).url


def new_cluster(cluster_id: str, node_id: str, url: str, partitions: int, replicas: int) -> ClusterState:
    """A one-node cluster whose only member holds every partition."""
    if replicas < 1:
        raise BadRequest(f"replicas must be at least 1, got {replicas}")
    return ClusterState(
        cluster_id=cluster_id,
        partitions=partitions,
        replicas=replicas,
        epoch=1,
        committed_by=node_id,
        members=(Member(node_id, url, UP),),
        placement=balance_primaries(place(None, [node_id], partitions, replicas)),
        voters=(node_id,),
        previous_voters=(node_id,),
    )


def data_holders(state: ClusterState) -> list[str]:
    """Members the target placement spreads data over: joining and up ones, down or not."""
    return sorted(m.id for m in state.members if m.status in (JOINING, UP))


def _with_member(state: ClusterState, member: Member) -> ClusterState:
    others = [m for m in state.members if m.id != member.id]
    return replace(state, members=tuple(sorted([*others, member], key=lambda m: m.id)))


def add_member(state: ClusterState, node_id: str, url: str) -> ClusterState:
    """Admit a node as joining (or refresh the address of one that is already a member)."""
    if state.has_member(node_id):
        member = state.member(node_id)
        if member.status == REMOVED:
            raise Conflict(f"node {node_id!r} was removed from this cluster; start it with a fresh data directory")
        return state if member.url == url else _with_member(state, replace(member, url=url))
    return plan(_with_member(state, Member(node_id, url, JOINING)))


def remove_member(state: ClusterState, node_id: str) -> ClusterState:
    """Start moving a member's partitions away; it becomes removed once they have moved."""
    member = state.member(node_id)
    if member.status in (LEAVING, REMOVED):
        return state
    if data_holders(state) == [node_id]:
        raise Conflict(f"{node_id!r} is the last node holding data; it cannot be removed")
    if member.status == JOINING:
        # A joiner holds nothing in the committed placement: it goes at once, and must
        # not become a leaving voter whose silence could block every later decision.
        return plan(_with_member(state, replace(member, status=REMOVED, down=False)))
    return plan(_with_member(state, replace(member, status=LEAVING)))


def set_down(state: ClusterState, node_id: str, down: bool) -> ClusterState:
    """Record the failure detector's verdict on one member."""
    member = state.member(node_id)
    return state if member.down == down else _with_member(state, replace(member, down=down))


def gained_slots(placement: Placement, pending: Placement | None) -> frozenset[tuple[int, str]]:
    """(partition, node) pairs that ``pending`` adds to ``placement``: what must be copied."""
    if pending is None:
        return frozenset()
    return frozenset(
        (p, node) for p, nodes in enumerate(pending) for node in nodes if node not in placement[p]
    )


def plan(state: ClusterState) -> ClusterState:
    """Set ``pending`` to the placement the current member set calls for."""
    target = balance_primaries(place(state.placement, data_holders(state), state.partitions, state.replicas))
    gained = gained_slots(state.placement, target)
    if not gained:
        # Nothing to copy (lists only shrank or were reordered): take effect at once.
        return _finish(replace(state, placement=target, pending=None, ready=frozenset()))
    return replace(state, pending=target, ready=frozenset(s for s in state.ready if s in gained))


def mark_ready(state: ClusterState, node_id: str, partitions: Iterable[int]) -> ClusterState:
    """Record that ``node_id`` holds a full copy of ``partitions`` it gains in ``pending``."""
    gained = gained_slots(state.placement, state.pending)
    slots = {(p, node_id) for p in partitions} & gained
    if not slots - state.ready:
        return state
    return replace(state, ready=state.ready | slots)


def try_commit(state: ClusterState) -> ClusterState:
    """Make ``pending`` the placement once every gained slot is ready."""
    if state.pending is None:
        return _finish(state)
    if gained_slots(state.placement, state.pending) - state.ready:
        return state
    return _finish(replace(state, placement=state.pending, pending=None, ready=frozenset()))


def _finish(state: ClusterState) -> ClusterState:
    """With no rebalance in flight, joining members are up and leaving ones removed."""
    if state.pending is not None:
        return state
    members = []
    for m in state.members:
        if m.status == JOINING:
            m = replace(m, status=UP)
        elif m.status == LEAVING:
            m = replace(m, status=REMOVED, down=False)
        members.append(m)
    return replace(state, members=tuple(members))


def voting_members(state: ClusterState) -> tuple[str, ...]:
    """The members that should vote: up or leaving ones (down or not), sorted.

    Joining members do not vote: a joiner has no state of its own until it is
    admitted, so it must not be asked to decide. ``legion.consensus`` moves the
    state's ``voters`` towards this set one member per commit."""
    return tuple(sorted(m.id for m in state.members if m.status in (UP, LEAVING)))


def commit(old: ClusterState, new: ClusterState, by: str) -> ClusterState:
    """``new`` as the next epoch, if it differs from ``old``; else ``old`` unchanged."""
    if new == old:
        return old
    return replace(new, epoch=old.epoch + 1, committed_by=by, voters=voting_members(new), previous_voters=old.voters)


Digest = tuple[int, str]


def digest(state: ClusterState | None) -> Digest:
    """What gossip exchanges first: (epoch, committer). No state at all is (0, '')."""
    return (0, "") if state is None else (state.epoch, state.committed_by)


def digest_newer(a: Digest, b: Digest) -> bool:
    """True if the state behind digest ``a`` wins over ``b``: higher epoch, then the lower committer id."""
    return (a[0], b[1]) > (b[0], a[1])


def newer(a: ClusterState, b: ClusterState | None) -> bool:
    """True if gossip should keep ``a`` over ``b``."""
    if b is None:
        return True
    if a.cluster_id != b.cluster_id:
        raise Conflict(f"cluster id mismatch: {a.cluster_id} vs {b.cluster_id}")
    return digest_newer(digest(a), digest(b))


def owners(state: ClusterState, partition: int) -> tuple[str, ...]:
    """Nodes that hold or are receiving ``partition``: current preference list, then pending gainers."""
    current = state.placement[partition]
    if state.pending is None:
        return current
    return current + tuple(n for n in state.pending[partition] if n not in current)


def partitions_held(state: ClusterState, node_id: str) -> list[int]:
    """Partitions ``node_id`` must keep open: in the placement or gaining them in ``pending``."""
    return [p for p in range(state.partitions) if node_id in owners(state, p)]


def to_dict(state: ClusterState) -> dict[str, Any]:
    return {
        "cluster_id": state.cluster_id,
        "partitions": state.partitions,
        "replicas": state.replicas,
        "epoch": state.epoch,
        "committed_by": state.committed_by,
        "members": [
            {"id": m.id, "url": m.url, "status": m.status, "down": m.down} for m in state.members
        ],
        "placement": [list(nodes) for nodes in state.placement],
        "pending": None if state.pending is None else [list(n) for n in state.pending],
        "ready": sorted([p, n] for p, n in state.ready),
        "term": state.term,
        "voters": list(state.voters),
        "previous_voters": list(state.previous_voters),
        "parent_term": state.parent_term,
    }


def from_dict(raw: Any) -> ClusterState:
    """Parse a state another node sent; BadRequest on anything malformed."""
    try:
        members = tuple(
            Member(str(m["id"]), str(m["url"]), str(m["status"]), bool(m.get("down", False)))
            for m in raw["members"]
        )
        state = ClusterState(
            cluster_id=str(raw["cluster_id"]),
            partitions=int(raw["partitions"]),
            replicas=int(raw["replicas"]),
            epoch=int(raw["epoch"]),
            committed_by=str(raw["committed_by"]),
            members=members,
            placement=tuple(tuple(str(n) for n in nodes) for nodes in raw["placement"]),
            pending=None
            if raw.get("pending") is None
            else tuple(tuple(str(n) for n in nodes) for nodes in raw["pending"]),
            ready=frozenset((int(p), str(n)) for p, n in raw.get("ready", [])),
            term=int(raw.get("term", 0)),
            voters=tuple(str(n) for n in raw.get("voters", ())),
            previous_voters=tuple(str(n) for n in raw.get("previous_voters", ())),
            parent_term=int(raw.get("parent_term", 0)),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise BadRequest(f"malformed cluster state: {exc!r}") from None
    if any(m.status not in STATUSES for m in members) or len(state.placement) != state.partitions:
        raise BadRequest("malformed cluster state: unknown status or wrong placement length")
    return state


def _hints_by_owner(attributes: Mapping[str, Mapping[str, str]]) -> dict[str, int]:
    """Hints pending for each owner, summed over the members that keep them."""
    total: dict[str, int] = {}
    for values in attributes.values():
        for owner, count in parse_pending_summary(values.get(PENDING_ATTRIBUTE, "")).items():
            total[owner] = total.get(owner, 0) + count
    return dict(sorted(total.items()))


def status_document(
    state: ClusterState, claimant: str | None, attributes: Mapping[str, Mapping[str, str]] | None = None
) -> dict[str, Any]:
    """What ``GET /v1/cluster`` answers: members with their partition counts and attributes, placement, epoch.

    ``attributes`` are the members' gossiped attributes as the answering node
    knows them (``legion.attributes``): not part of the state, shown beside it.
    From them come each member's ``hints_pending`` (hints it keeps, per owner
    they are for) and ``unhealthy`` (the partitions it does not serve reads
    of, and why), and the cluster's ``hints_pending`` per owner."""
    attributes = attributes or {}
    primary: dict[str, int] = {}
    replica: dict[str, int] = {}
    for nodes in state.placement:
        for i, node in enumerate(nodes):
            bucket = primary if i == 0 else replica
            bucket[node] = bucket.get(node, 0) + 1
    return {
        "cluster_id": state.cluster_id,
        "epoch": state.epoch,
        "term": state.term,
        "partitions": state.partitions,
        "replicas": state.replicas,
        "claimant": claimant,
        # Whose majority a membership change needs (``legion.consensus``); up members join it one per commit.
        "voters": list(state.voters),
        "members": [
            {
                "id": m.id,
                "url": m.url,
                "status": m.shown_status,
                "primary": primary.get(m.id, 0),
                "replica": replica.get(m.id, 0),
                "attributes": dict(attributes.get(m.id, {})),
                "hints_pending": parse_pending_summary(attributes.get(m.id, {}).get(PENDING_ATTRIBUTE, "")),
                "unhealthy": unhealthy_summary(attributes.get(m.id, {})),
            }
            for m in state.members
        ],
        "hints_pending": _hints_by_owner(attributes),
        "placement": [list(nodes) for nodes in state.placement],
        "pending": None if state.pending is None else [list(n) for n in state.pending],
        "rebalancing": state.pending is not None,
        # The copies the pending placement waits for: which node gains which partition, and whether it reported ready.
        "transfers": [
            {"partition": p, "to": n, "ready": (p, n) in state.ready}
            for p, n in sorted(gained_slots(state.placement, state.pending))
        ]
        if state.pending is not None
        else [],
    }
