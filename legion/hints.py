"""Hinted handoff decisions: who keeps a write for a replica that is down, when it is replayed, what is dropped.

Pure: plain functions over plain data (node ids, partition numbers, counts),
no sockets, no clock. ``legion.routing`` plans writes with them,
``legion.runtime.hinted_handoff`` carries them out, and the data-path
simulator (``legion.testing``) calls the same functions.

**Sloppy quorum (Dynamo).** When an owner in a partition's preference list
is down (not live, or suspected), the coordinator sends its copy of the write
to a *fallback*: the next live member along the ring (``fallback_order``)
that is not already a replica of the partition. The fallback keeps the
operation durably as a *hint* for the owner — fsynced as the node's
durability mode asks — and its acknowledgement counts towards ``W``
(``counts_towards_quorum``): with ``w=2`` and one owner down, the write is
acknowledged by one owner and one fallback. When no member outside the
preference list is live (a 3-node cluster with ``N=3``), the coordinator
keeps the hint itself, and that hint does not count towards ``W``: a node
holding both a replica and a hint is one failure, not two.

A send to an owner that fails (the owner died before anyone noticed) leaves a
hint too, kept by the coordinator (``hint_after_failure``): it does not count
towards ``W`` either — the write is acknowledged only if enough other
replicas took it — but the owner still receives the write once it is back.

**Replay.** A holder replays its hints to each owner it believes live
(``replay_owners``), in chunks bounded like any batch to a replica
(``PEER_BATCH_OPS_MAX`` operations, ``PEER_BATCH_BYTES_MAX`` bytes), through
the owner's ``/internal/apply``. A hint is dropped only once the owner
acknowledged it (``settle_replay``); a refused or unanswered one stays and
is tried again. Hints for a member removed from the cluster are dropped:
removing a member re-replicates its partitions from the survivors. A hint
for an owner that no longer owns its partition (it moved while the owner was
away) is readdressed to the partition's current owners (``readdress``): the
new owners copied the partition from a replica that may not have had it.

**Catch-up of a restarted owner.** A restarted node, or one the cluster
marked down while it ran, does not serve reads of the partitions it holds
until every live peer reports no hint pending for it in that partition
(``catch_up``): then it has received what it missed. When a holder could
not keep a hint (its hint store was full), it reports the partition *lost*
for that owner, and the owner copies the partition whole from a replica
(the re-sync of ``legion.runtime.handoff_receiver``).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

from legion.write_batch import chunk_ranges


def fallback_order(members: Collection[str], preference: Sequence[str], partition: int) -> tuple[str, ...]:
    """The members that may keep hints for ``partition``, in the order they are tried.

    The ring is the sorted member ids; the walk starts at ``partition`` (modulo
    the ring's size), so the fallbacks of different partitions spread over the
    cluster. Replicas of the partition (``preference``) are skipped."""
    ring = sorted(set(members))
    if not ring:
        return ()
    start = partition % len(ring)
    walk = ring[start:] + ring[:start]
    return tuple(n for n in walk if n not in preference)


def hint_holders(
    preference: Sequence[str], fallbacks: Sequence[str], live: Collection[str], coordinator: str
) -> dict[str, str]:
    """For each owner in ``preference`` that is not live: the node that keeps its hint.

    Each down owner gets its own live fallback, in ``fallbacks`` order; when
    the fallbacks run out, the ``coordinator`` keeps the hint."""
    spare = [n for n in fallbacks if n in live and n not in preference]
    holders: dict[str, str] = {}
    for owner in preference:
        if owner in live:
            continue
        holders[owner] = spare.pop(0) if spare else coordinator
    return holders


def counts_towards_quorum(holder: str, preference: Sequence[str]) -> bool:
    """Whether a hint kept by ``holder`` counts towards ``W``: only if ``holder`` holds no replica itself."""
    return holder not in preference


def hint_after_failure(coordinator: str) -> str:
    """Who keeps the hint of a send to an owner that failed: the coordinator, which is alive to know it."""
    return coordinator


def replay_owners(
    pending: Mapping[str, int], live: Collection[str], members: Mapping[str, str], holder: str
) -> tuple[list[str], list[str]]:
    """Owners to replay hints to now, and *orphaned* owners (removed or unknown members), whose hints
    the holder readdresses to their partitions' current owners (``readdress``) — never drops: a
    coordinator that had not heard of the removal may have counted such a hint towards w.

    ``pending`` maps an owner to its number of hints; ``members`` maps each
    member id to its status (``up``, ``down``, ``removed``, ...). An owner
    that is not live keeps its hints until it is. The ``holder`` itself may be
    an owner (of a readdressed hint): it is live, so its hints are replayed."""
    replay: list[str] = []
    orphaned: list[str] = []
    for owner, count in sorted(pending.items()):
        if count <= 0:
            continue
        status = members.get(owner)
        if status is None or status == "removed":
            orphaned.append(owner)
        elif owner in live:
            replay.append(owner)
    return replay, orphaned


def readdress(owner: str, owners_now: Sequence[str]) -> tuple[str, ...]:
    """Who a hint kept for ``owner`` goes to now: ``owner`` while it owns the partition (``owners_now``,
    the current owners and those gaining it), else every current owner."""
    return (owner,) if owner in owners_now else tuple(owners_now)


def replay_chunks(sizes: Sequence[int], *, ops_max: int, bytes_max: int) -> list[range]:
    """Hints of one owner (their encoded sizes, oldest first) cut into chunks sent one request each."""
    return chunk_ranges(sizes, ops_max=ops_max, bytes_max=bytes_max)


def settle_replay(ids: Sequence[int], refused: Collection[int], failed: bool) -> tuple[list[int], list[int]]:
    """Which hints of a replayed chunk to drop (acknowledged) and which to keep.

    ``ids`` are the chunk's hints in the order sent; ``refused`` the
    positions the owner refused; ``failed`` the whole chunk got no answer."""
    if failed:
        return [], list(ids)
    drop = [hint for i, hint in enumerate(ids) if i not in refused]
    keep = [hint for i, hint in enumerate(ids) if i in refused]
    return drop, keep


@dataclass(frozen=True)
class HintReport:
    """What one peer holds for an owner: hints pending per partition, and partitions whose hints it lost."""

    pending: Mapping[int, int] = field(default_factory=dict)
    lost: frozenset[int] = frozenset()


@dataclass(frozen=True)
class CatchUp:
    """A restarted owner's partitions after one catch-up round."""

    serving: frozenset[int]
    waiting: frozenset[int]
    resync: frozenset[int]


def catch_up(held: Collection[int], reports: Mapping[str, HintReport | None]) -> CatchUp:
    """Which held partitions a catching-up owner may serve now, which wait for hints, which it re-copies whole.

    ``reports`` maps every live peer asked to its answer (None: no answer, so
    every partition waits for it). A partition waits while any peer holds a
    hint for it; a partition whose hints a peer lost is re-copied whole."""
    held_set = frozenset(held)
    if any(report is None for report in reports.values()):
        return CatchUp(serving=frozenset(), waiting=held_set, resync=frozenset())
    lost: set[int] = set()
    waiting: set[int] = set()
    for report in reports.values():
        assert report is not None
        lost |= set(report.lost) & held_set
        waiting |= {p for p, n in report.pending.items() if n > 0 and p in held_set}
    resync = frozenset(lost)
    waiting_set = frozenset(waiting - resync)
    return CatchUp(serving=held_set - resync - waiting_set, waiting=waiting_set, resync=resync)


# Member attributes a node publishes about its hints (shown by ``legion cluster status``).
ATTRIBUTE_PREFIX = "hints"
PENDING_ATTRIBUTE = f"{ATTRIBUTE_PREFIX}.pending"
CATCHING_UP_ATTRIBUTE = f"{ATTRIBUTE_PREFIX}.catching-up"
# The handoff receiver's attribute: partitions being re-copied whole.
RESYNCING_ATTRIBUTE = "legion.resyncing"


def unhealthy_summary(attributes: Mapping[str, str]) -> str:
    """The partitions a member does not serve reads of, from its attributes ("" when it serves all)."""
    parts = []
    if attributes.get(RESYNCING_ATTRIBUTE):
        parts.append(f"re-syncing {attributes[RESYNCING_ATTRIBUTE]}")
    if attributes.get(CATCHING_UP_ATTRIBUTE):
        parts.append(f"waiting for hints {attributes[CATCHING_UP_ATTRIBUTE]}")
    return "; ".join(parts)


def pending_summary(pending: Mapping[str, int], limit_chars: int = 200) -> str:
    """``"node-b=12,node-c=3"``: hints pending per owner, as a member attribute ("" for none)."""
    text = ",".join(f"{owner}={count}" for owner, count in sorted(pending.items()) if count > 0)
    return text if len(text) <= limit_chars else text[: limit_chars - 1] + "…"


def parse_pending_summary(text: str) -> dict[str, int]:
    """The inverse of ``pending_summary`` (an owner cut off by the length limit is left out)."""
    out: dict[str, int] = {}
    for part in text.split(","):
        owner, sep, count = part.partition("=")
        if sep and owner and count.isdigit():
            out[owner] = int(count)
    return out
