"""Who is alive, and who decides: the failure detector and the claimant rule.

Pure. The runtime records when it last heard from each peer (any successful
gossip exchange counts as a heartbeat) and hands those times here with the
current time; these functions say which members look dead, which came back,
and which node is the claimant — the lowest-id live member, the only one that
commits changes to the cluster state.

A member is never evicted automatically: the detector only marks it down,
which routing skips. Removing a member for good is an operator's decision,
because evicting on a timeout is how a network partition turns into two
clusters that both accept writes.
"""

from __future__ import annotations

from collections.abc import Mapping

from legion import cluster_state as cs
from legion.cluster_state import REMOVED, ClusterState
from legion.limits import FAILURE_TIMEOUT_MS


def alive_ids(state: ClusterState, self_id: str, last_heard_ms: Mapping[str, int], now_ms: int) -> set[str]:
    """Members this node has heard from within the failure timeout, itself included."""
    alive = {self_id}
    for member in state.members:
        heard = last_heard_ms.get(member.id)
        if member.status != REMOVED and heard is not None and now_ms - heard < FAILURE_TIMEOUT_MS:
            alive.add(member.id)
    return alive


def claimant(state: ClusterState, alive: set[str]) -> str | None:
    """The lowest-id member that is alive and not removed, or None if there is none."""
    candidates = [m.id for m in state.members if m.status != REMOVED and m.id in alive]
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


def claimant_step(state: ClusterState, alive: set[str], by: str) -> ClusterState:
    """What the claimant ``by`` commits after a gossip round: liveness verdicts, then a finished rebalance.

    Returns ``state`` itself when there is nothing to change, else the next epoch."""
    new = state
    for member_id, down in liveness_verdicts(state, alive).items():
        new = cs.set_down(new, member_id, down)
    return cs.commit(state, cs.try_commit(new), by)
