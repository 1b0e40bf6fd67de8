"""Invariants of a simulated Legion cluster, checked while it runs and once it has settled.

Pure. ``InvariantChecker`` is an ``Observer`` of a ``Simulation``: it checks
every state a node adopts, every commit, and every dropped copy, the moment it
happens, and raises ``AssertionError`` naming the node, the partition and the
states involved. ``check_convergence`` judges a cluster after its quiet period.

The invariants:

(a) placement: every adopted state's committed placement, and its pending one
    if any, gives each partition min(replicas, data holders) distinct nodes,
    only members, with loads within one of each other (the rule of
    ``legion.placement``);
(b) data safety, the property handoff exists for: a commit never assigns a
    partition to a node that holds no copy of it (the gainers pulled first);
    at every moment every node the newest committed placement assigns a
    partition to holds a copy; no node drops a copy that placement still
    assigns to it; and no partition ever loses its last copy;
(c) convergence: after the quiet period every live non-removed node holds the
    same state, no rebalance is pending, the voters are the up members, no member is marked down, every node
    sees the lowest-id live member as claimant, each node holds exactly the
    copies that state gives it, and every operator action that was
    acknowledged took effect;
(d) epochs: the state a node believes never goes back to an older one;
(e) one history: no two leaders commit the same epoch, each commit builds on
    the one before it (following the published states' parents back), and
    the voters change by at most one member from one commit to the next;
(f) consensus: at most one leader per term; a node's term and accepted
    (term, epoch) never decrease, across crashes too; a commit is durable on
    a majority of both voter sets (on their disks, not just in their
    answers); no leader commits what it published after a split from the
    side without such a majority; and every acknowledged join or removal
    shows in every later commit.
"""

from __future__ import annotations

from legion import cluster_state as cs
from legion import consensus as cn
from legion.placement import Placement, node_loads
from legion.testing.sim import Observer, Simulation, describe
from legion.testing.sim_node import SimNode


class InvariantChecker(Observer):
    """Checks (a), (b), (d), (e) and (f) on every event that could break them."""

    def __init__(self) -> None:
        self.commits = 0
        self.drops = 0
        # Committed states are unique per (epoch, term): each one's placements are checked once.
        self._placements_checked: set[tuple[int, int]] = set()

    def on_adopt(
        self, sim: Simulation, node: SimNode, before: cs.ClusterState | None, after: cs.ClusterState, committed: bool
    ) -> None:
        if (after.epoch, after.term) not in self._placements_checked:
            check_placements(after, f"{node.id} adopted {describe(after)}")
            self._placements_checked.add((after.epoch, after.term))
        check_epoch_order(node.id, before, after)
        if committed:
            self.commits += 1
            assert before is not None
            check_one_history(sim, node.id, before, after)
            check_commit_backed(sim, node.id, before, after)
        check_data_safety(sim)

    def on_record(self, sim: Simulation, node: SimNode, before: cn.Record, after: cn.Record) -> None:
        check_record_forward(node.id, before, after)

    def on_elected(self, sim: Simulation, node: SimNode, term: int, adopted: cs.ClusterState) -> None:
        leader = sim.leaders.get(term)
        assert leader is None or leader == node.id, f"two leaders of term {term}: {leader} and {node.id}"

    def on_commit(
        self, sim: Simulation, node: SimNode, state: cs.ClusterState, acks: set[str], started_ms: int
    ) -> None:
        check_durable_quorum(sim, node.id, state)
        check_majority_side(sim, node.id, state, started_ms)
        check_chain(sim, node.id, state)
        check_acknowledged_survive(sim, node.id, state)

    def on_drop(self, sim: Simulation, node: SimNode, partition: int) -> None:
        self.drops += 1
        check_drop_allowed(sim, node, partition)


# --- (a) placement ------------------------------------------------------------


def check_placements(state: cs.ClusterState, context: str) -> None:
    holders = cs.data_holders(state)
    if state.pending is None:
        check_balanced(state.placement, holders, state, f"{context}: committed placement")
        return
    check_balanced(state.pending, holders, state, f"{context}: pending placement")
    # The committed placement was made for the member set of an earlier epoch,
    # whose data holders are exactly the nodes it names.
    named = sorted({node for row in state.placement for node in row})
    live_members = {m.id for m in state.members if m.status != cs.REMOVED}
    strangers = sorted(set(named) - live_members)
    assert not strangers, f"{context}: committed placement names non-members {strangers}"
    check_balanced(state.placement, named, state, f"{context}: committed placement")


def check_balanced(placement: Placement, nodes: list[str], state: cs.ClusterState, context: str) -> None:
    """Each row min(replicas, |nodes|) distinct nodes from ``nodes``; loads floor or ceil of the mean."""
    assert nodes, f"{context}: no data holders"
    assert len(placement) == state.partitions, f"{context}: {len(placement)} rows for {state.partitions} partitions"
    r = min(state.replicas, len(nodes))
    allowed = set(nodes)
    for p, row in enumerate(placement):
        assert len(row) == r and len(set(row)) == r, f"{context}: partition {p} has {row}, want {r} distinct nodes"
        assert allowed.issuperset(row), f"{context}: partition {p} has {row}, not all among holders {nodes}"
    base, extra = divmod(state.partitions * r, len(nodes))
    loads = {node: node_loads(placement).get(node, 0) for node in nodes}
    assert all(base <= load <= base + 1 for load in loads.values()), f"{context}: unbalanced loads {loads}"
    assert sum(1 for load in loads.values() if load == base + 1) == extra, f"{context}: unbalanced loads {loads}"


# --- (b) data safety ------------------------------------------------------------


def check_commit_backed(sim: Simulation, node_id: str, before: cs.ClusterState, after: cs.ClusterState) -> None:
    """A commit never hands a partition to a node that has not pulled it."""
    for p, row in enumerate(after.placement):
        for holder in row:
            if holder not in before.placement[p] and p not in sim.nodes[holder].data:
                raise AssertionError(
                    f"{node_id} committed {describe(after)} giving partition {p} to {holder}, "
                    f"which holds no copy of it (the commit came before the handoff)"
                )


def check_data_safety(sim: Simulation) -> None:
    """Every node the newest committed placement names holds a copy; every partition has a copy somewhere."""
    newest = sim.newest_state()
    if newest is None:
        return
    for p, row in enumerate(newest.placement):
        missing = [n for n in row if p not in sim.nodes[n].data]
        if missing:
            holders = sorted(n.id for n in sim.nodes.values() if p in n.data)
            raise AssertionError(
                f"the newest committed state {describe(newest)} assigns partition {p} to {list(row)}, "
                f"but {missing} hold no copy of it (copies are on {holders or 'no node at all: data lost'})"
            )


def check_drop_allowed(sim: Simulation, node: SimNode, partition: int) -> None:
    newest = sim.newest_state()
    assert newest is not None
    if node.id in newest.placement[partition]:
        raise AssertionError(
            f"{node.id} drops partition {partition} (its view: {describe(node.state)}), "
            f"but the newest committed state {describe(newest)} still assigns it there"
        )
    others = [n.id for n in sim.nodes.values() if n is not node and partition in n.data]
    assert others, f"{node.id} drops the last copy of partition {partition}"


# --- (d) epochs -----------------------------------------------------------------


def check_epoch_order(node_id: str, before: cs.ClusterState | None, after: cs.ClusterState) -> None:
    if before is None:
        return
    assert after.epoch > before.epoch, f"{node_id} went back from {describe(before)} to {describe(after)}"


# --- (e) one history ------------------------------------------------------------


def check_one_history(sim: Simulation, node_id: str, before: cs.ClusterState, after: cs.ClusterState) -> None:
    """``after`` is the only commit of its epoch (``sim.commits`` already records it)."""
    rivals = sorted((other, state) for other, state in sim.commits.get(after.epoch, {}).items() if other != node_id)
    if rivals:
        other, state = rivals[0]
        raise AssertionError(
            f"fork: {node_id} committed {describe(after)} on top of e{before.epoch}/{before.committed_by}, "
            f"but {other} already committed {describe(state)}: two claimants decided at once, "
            f"and gossip will throw one branch away"
        )


def check_chain(sim: Simulation, node_id: str, state: cs.ClusterState) -> None:
    """``state`` descends from the commit of the nearest lower epoch, and the nearest higher one from it;
    its voters differ from those of the commit before it by at most one member."""
    epochs = sorted(e for e in sim.commits if e != state.epoch)
    lower = [e for e in epochs if e < state.epoch]
    higher = [e for e in epochs if e > state.epoch]
    if lower:
        previous = _commit_at(sim, lower[-1])
        assert _ancestor_at(sim, state, previous.epoch) == cn.version(previous), (
            f"{node_id} commits {describe(state)}, which does not build on the commit before it, {describe(previous)}"
        )
        changed = set(state.voters) ^ set(previous.voters)
        assert len(changed) <= 1, (
            f"{node_id} commits {describe(state)}: the voters changed by {sorted(changed)} since {describe(previous)}"
        )
    if higher:
        following = _commit_at(sim, higher[0])
        assert _ancestor_at(sim, following, state.epoch) == cn.version(state), (
            f"{node_id} commits {describe(state)}, but {describe(following)} was committed and does not build on it"
        )


def _commit_at(sim: Simulation, epoch: int) -> cs.ClusterState:
    return next(iter(sim.commits[epoch].values()))


def _ancestor_at(sim: Simulation, state: cs.ClusterState, epoch: int) -> cn.Version | None:
    version = cn.version(state)
    while version[1] > epoch:
        parent = sim.parents.get(version)
        if parent is None:
            return None
        version = parent
    return version


# --- (f) consensus ------------------------------------------------------------------


def check_record_forward(node_id: str, before: cn.Record, after: cn.Record) -> None:
    assert after.current_term >= before.current_term, (
        f"{node_id}'s term went back from {before.current_term} to {after.current_term}"
    )
    assert cn.version(after.accepted) >= cn.version(before.accepted), (
        f"{node_id}'s accepted state went back from (term, epoch) {cn.version(before.accepted)} "
        f"to {cn.version(after.accepted)}"
    )
    assert cn.version(after.accepted) <= (after.current_term, cn.version(after.accepted)[1]), (
        f"{node_id} accepted a state of term {cn.version(after.accepted)[0]} beyond its term {after.current_term}"
    )


def joint_majority(nodes: set[str], state: cs.ClusterState) -> bool:
    """More than half of ``state``'s voters and more than half of its previous voters are in ``nodes``.

    Written out here rather than taken from ``legion.consensus``, so that a broken core
    does not break the checker with it."""
    return all(2 * len(nodes & set(group)) > len(group) for group in (state.voters, state.previous_voters) if group)


def check_durable_quorum(sim: Simulation, node_id: str, state: cs.ClusterState) -> None:
    """When a leader commits, a majority of both voter sets hold the state (or a newer one) on disk."""
    holders = {n.id for n in sim.nodes.values() if cn.version(n.disk.accepted) >= cn.version(state)}
    assert joint_majority(holders, state), (
        f"{node_id} commits {describe(state)} held on disk by {sorted(holders)} only: "
        f"no majority of voters {list(state.voters)} and previous voters {list(state.previous_voters)}"
    )


def check_majority_side(sim: Simulation, node_id: str, state: cs.ClusterState, started_ms: int) -> None:
    """What a leader published after a split, it commits only if its side holds a majority of both voter sets."""
    if sim.split_at_ms is None or started_ms < sim.split_at_ms:
        return
    side = {other for other in sim.nodes if sim.kernel.can_talk(node_id, other)}
    assert joint_majority(side, state), (
        f"{node_id} commits {describe(state)} on the minority side {sorted(side)} of a split"
    )


def check_acknowledged_survive(sim: Simulation, node_id: str, state: cs.ClusterState) -> None:
    """Every join or removal acknowledged with an earlier committed state shows in ``state``."""
    for (kind, member), epoch in sorted(sim.acknowledged_at.items()):
        if state.epoch <= epoch:
            continue
        if kind == "join" and member not in sim.removes_requested:
            assert state.has_member(member) and state.member(member).status != cs.REMOVED, (
                f"{member}'s join was acknowledged at e{epoch}, but {node_id} commits {describe(state)} without it"
            )
        if kind == "remove":
            assert not state.has_member(member) or state.member(member).status in (cs.LEAVING, cs.REMOVED), (
                f"the removal of {member} was acknowledged at e{epoch}, but {node_id} commits {describe(state)} with it"
            )


# --- (c) convergence --------------------------------------------------------------


def check_convergence(sim: Simulation) -> None:
    """Raise AssertionError unless the cluster has settled (see the module docstring, (c))."""
    running = sim.running()
    assert running, "no node is running"
    assert all(n.serving for n in running), f"nodes still starting: {[n.id for n in running if not n.serving]}"
    assert sim.operator.in_flight == 0, "an operator request is still in flight"
    final = _newest_of(running)
    members = {m.id: m for m in final.members if m.status != cs.REMOVED}
    participants = [n for n in running if n.id in members]
    assert participants, f"no running node is a member of {describe(final)}"
    for node in participants:
        assert node.state == final, f"{node.id} holds {describe(node.state)}, others {describe(final)}"
    assert final.pending is None, f"a rebalance is still pending: {describe(final)}"
    wanted = cs.voting_members(final)
    assert final.voters == wanted, f"the voters of {describe(final)} are still moving towards {list(wanted)}"
    absent = sorted(set(members) - {n.id for n in participants})
    assert not absent, f"members {absent} of {describe(final)} are not running"
    down = sorted(m for m, member in members.items() if member.down)
    assert not down, f"members {down} are still marked down in {describe(final)}"
    lowest = min(n.id for n in participants)
    for node in participants:
        assert node.claimant() == lowest, f"{node.id} sees {node.claimant()} as claimant, not {lowest}"
    for node in running:
        held = set(cs.partitions_held(final, node.id))
        assert node.data == held, (
            f"{node.id} holds copies of {sorted(node.data)}, but {describe(final)} gives it {sorted(held)}"
        )
    check_operator_effects(sim, final)


def check_operator_effects(sim: Simulation, final: cs.ClusterState) -> None:
    """Every acknowledged join and remove shows in the final state."""
    for node_id in sorted(sim.joins_acknowledged - sim.removes_requested):
        assert final.has_member(node_id) and final.member(node_id).status == cs.UP, (
            f"{node_id}'s join was acknowledged, but it is not an up member of {describe(final)}"
        )
    for node_id in sorted(sim.removes_acknowledged):
        assert not final.has_member(node_id) or final.member(node_id).status == cs.REMOVED, (
            f"the removal of {node_id} was acknowledged, but {describe(final)} still has it"
        )


def _newest_of(nodes: list[SimNode]) -> cs.ClusterState:
    newest: cs.ClusterState | None = None
    for node in nodes:
        if node.state is not None and cs.newer(node.state, newest):
            newest = node.state
    assert newest is not None, "no running node has a cluster state"
    return newest
