"""Who is alive, and who decides: the failure detector and the claimant rule.

Pure. The runtime records when it last heard from each peer (any successful
gossip exchange counts as a heartbeat) and hands those times here with the
current time; these functions say which members look dead, which came back,
and which node is the claimant — the lowest-id live voter, the one that
campaigns and decides changes to the cluster state.

Who the claimant is, is only a hint: ``legion.consensus`` makes every change
a commit held by a majority of the voters, so the minority side of a network
split cannot decide anything whoever campaigns there.

A member is never evicted automatically: the detector only marks it down,
which routing skips. Removing a member for good is an operator's decision,
because evicting on a timeout is how a network partition turns into two
clusters that both accept writes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from legion import cluster_state as cs
from legion.cluster_state import REMOVED, ClusterState
from legion.errors import BadRequest
from legion.limits import FAILURE_TIMEOUT_MS, NODE_ID_CHARS_MAX


NODE_ID_PATTERN = re.compile(rf"^[A-Za-z0-9][A-Za-z0-9_.-]{{0,{NODE_ID_CHARS_MAX - 1}}}$")


def check_node_id(node_id: str) -> str:
    """``node_id`` if it is a valid node id; BadRequest saying what one looks like otherwise."""
    if not isinstance(node_id, str) or not NODE_ID_PATTERN.match(node_id):
        raise BadRequest(
            f"node id must be 1-{NODE_ID_CHARS_MAX} letters, digits, '_', '.' or '-', starting with a letter or digit; got {node_id!r}"
        )
    return node_id


def alive_ids(
    state: ClusterState, self_id: str, last_heard_ms: Mapping[str, int], now_ms: int,
    within_ms: int = FAILURE_TIMEOUT_MS,
) -> set[str]:
    """Members this node has heard from within ``within_ms`` (default: the failure timeout), itself included."""
    alive = {self_id}
    for member in state.members:
        heard = last_heard_ms.get(member.id)
        if member.status != REMOVED and heard is not None and now_ms - heard < within_ms:
            alive.add(member.id)
    return alive


def voters(state: ClusterState) -> list[str]:
    """Members whose liveness counts for a majority: the state's voters (``legion.consensus``).

    Joining members do not vote and cannot claim: a joiner has no state of its
    own until the claimant admits it, so it must not be asked to decide."""
    return list(state.voters) if state.voters else list(cs.voting_members(state))


def claimant(state: ClusterState, alive: set[str]) -> str | None:
    """The node that should campaign and decide: the lowest-id live voter that is not removed.

    A removed member may still vote until the voters shrink (one per commit) but
    never leads. If no voter qualifies (the only voters are removed or dead), the
    lowest-id live up or leaving member stands in: who campaigns is only a hint,
    since winning still takes a majority of the voters. None if nobody qualifies."""
    removed = {m.id for m in state.members if m.status == REMOVED}
    candidates = [node for node in voters(state) if node in alive and node not in removed]
    if not candidates:
        candidates = [m.id for m in state.members if m.status in (cs.UP, cs.LEAVING) and m.id in alive]
    return min(candidates) if candidates else None


def liveness_verdicts(state: ClusterState, alive: set[str]) -> dict[str, bool]:
    """Members whose ``down`` flag should change: id → new value of ``down``."""
    verdicts: dict[str, bool] = {}
    for member in state.members:
        if member.status == REMOVED:
            continue
        looks_down = member.id not in alive
        if looks_down != member.down:
            verdicts[member.id] = looks_down
    return verdicts


def claimant_changes(state: ClusterState, alive: set[str]) -> ClusterState:
    """What the claimant changes after a gossip round: liveness verdicts, then a finished rebalance.

    Returns the changed content (``state`` itself when nothing changes); the
    leader publishes it through ``legion.consensus.propose``."""
    new = state
    for member_id, down in liveness_verdicts(state, alive).items():
        new = cs.set_down(new, member_id, down)
    return cs.try_commit(new)
