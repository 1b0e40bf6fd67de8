"""The consensus core: elections, publication, commits, and the one-chain property under any interleaving."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from hypothesis import given, settings
from hypothesis import strategies as st

from legion import cluster_state as cs
from legion import consensus as cn

NODES = ("n1", "n2", "n3", "n4", "n5")


def founded() -> cs.ClusterState:
    return cs.new_cluster("c1", "n1", "http://x:1", 8, 1)


def with_up(state: cs.ClusterState, *node_ids: str) -> cs.ClusterState:
    for node_id in node_ids:
        state = cs._with_member(state, cs.Member(node_id, f"http://x/{node_id}", cs.UP))
    return state


def test_a_voter_moves_to_a_higher_term_for_good_and_refuses_lower_ones():
    record = cn.founding_record(founded())
    moved, vote = cn.start_join(record, 3, "n1")
    assert moved.current_term == 3 and vote is not None and vote.accepted == record.accepted
    for term in (1, 2, 3):
        again, refused = cn.start_join(moved, term, "n1")
        assert refused is None and again == moved


def test_a_publication_from_an_older_term_is_refused():
    state = founded()
    record, _ = cn.start_join(cn.founding_record(state), 5, "n1")
    stale = cn.propose(state, with_up(state, "n2"), 4, "n2")
    assert stale is not None and cn.accept(record, stale) is None
    fresh = cn.propose(state, with_up(state, "n2"), 5, "n1")
    assert fresh is not None and cn.accept(record, fresh) == replace(record, accepted=fresh)


def test_voters_change_by_one_member_per_publication():
    state = founded()
    wanted = with_up(state, "n2", "n3", "n4")
    seen = [state.voters]
    for _ in range(5):
        nxt = cn.propose(state, replace(wanted, voters=state.voters), 1, "n1")
        if nxt is None:
            break
        assert len(set(nxt.voters) ^ set(state.voters)) <= 1 and nxt.previous_voters == state.voters
        state = nxt
        seen.append(state.voters)
    # The members come up first; each becomes a voter one publication later, one at a time.
    assert seen == [("n1",), ("n1",), ("n1", "n2"), ("n1", "n2", "n3"), ("n1", "n2", "n3", "n4")]


def test_a_change_that_changes_nothing_publishes_nothing():
    state = founded()
    assert cn.propose(state, state, 7, "n1") is None


def test_a_quorum_needs_a_majority_of_both_voter_sets():
    state = replace(founded(), voters=("n1", "n2", "n3"), previous_voters=("n1", "n2"))
    assert not cn.is_quorum({"n2", "n3"}, state), "n2 alone is no majority of the previous voters"
    assert not cn.is_quorum({"n1", "n2"} - {"n2"}, state)
    assert cn.is_quorum({"n1", "n2"}, state)


def test_the_candidate_adopts_the_newest_accepted_state_among_its_votes():
    three = ("n1", "n2", "n3")
    old = replace(with_up(founded(), "n2", "n3"), voters=three, previous_voters=three)
    new = replace(with_up(old, "n4"), term=2, epoch=old.epoch + 1, voters=(*three, "n4"), previous_voters=three)
    votes = {"n1": cn.Vote("n1", 3, old), "n3": cn.Vote("n3", 3, new)}
    assert cn.elected(votes) is None, "two of the four voters of the newest state are no majority"
    assert cn.still_to_ask(votes, ["n1", "n3"]) == ("n2", "n4")
    votes["n2"] = cn.Vote("n2", 3, old)
    assert cn.elected(votes) == new
    assert cn.elected({"n1": votes["n1"], "n2": votes["n2"]}) == old


def test_an_uncommitted_state_needs_a_majority_of_its_previous_voters_too():
    before = ("n1", "n2")
    state = replace(with_up(founded(), "n2", "n3"), term=1, epoch=5, voters=("n1", "n2", "n3"), previous_voters=before)
    votes = {"n2": cn.Vote("n2", 2, state), "n3": cn.Vote("n3", 2, state)}
    assert cn.elected(votes) is None, "n2 alone is no majority of the previous voters n1, n2"
    votes["n3"] = cn.Vote("n3", 2, state, committed=cn.version(state))
    assert cn.elected(votes) == state, "once a vote shows it committed, its own voters suffice"


def test_commits_and_gossip_only_move_a_record_forward():
    state = founded()
    nxt = cn.propose(state, with_up(state, "n2"), 1, "n1")
    assert nxt is not None
    record = cn.accept(cn.founding_record(state), nxt)
    assert record is not None
    committed = cn.commit_accepted(record, nxt.term, nxt.epoch)
    assert committed.committed == nxt
    assert cn.learn_commit(committed, state) == committed
    assert cn.commit_accepted(record, nxt.term, nxt.epoch + 1) == record


# --- any interleaving: committed states form one chain ----------------------------------


@dataclass
class Leader:
    node: str
    last: cs.ClusterState  # the state it publishes or last committed
    acks: set[str] = field(default_factory=set)
    committed: bool = False


@dataclass
class Model:
    """Nodes and messages as plain data; hypothesis picks which messages arrive and when."""

    records: dict[str, cn.Record]
    candidates: dict[int, tuple[str, dict[str, cn.Vote]]] = field(default_factory=dict)
    leaders: dict[int, Leader] = field(default_factory=dict)
    published: dict[cn.Version, cn.Version] = field(default_factory=dict)
    commits: dict[int, cs.ClusterState] = field(default_factory=dict)

    def campaign(self, node: str) -> None:
        term = max(r.current_term for r in self.records.values()) + 1
        self.candidates[term] = (node, {})
        self.vote(node, term)

    def vote(self, voter: str, term: int) -> None:
        if term not in self.candidates or voter not in self.records:
            return
        record, vote = cn.start_join(self.records[voter], term, voter)
        self.records[voter] = record
        if vote is not None:
            self.candidates[term][1][voter] = vote

    def win(self, term: int) -> None:
        if term not in self.candidates or term in self.leaders:
            return
        node, votes = self.candidates[term]
        adopted = cn.elected(votes)
        if adopted is None or self.records[node].current_term != term:
            return
        self.publish(term, Leader(node, adopted), cn.republish(adopted, term, node))

    def publish(self, term: int, leader: Leader, state: cs.ClusterState) -> None:
        self.published[cn.version(state)] = (state.parent_term, state.epoch - 1)
        self.leaders[term] = replace(leader, last=state, acks=set(), committed=False)
        self.accept(leader.node, term)

    def accept(self, voter: str, term: int) -> None:
        leader = self.leaders.get(term)
        if leader is None or leader.committed or voter not in self.records:
            return
        record = cn.accept(self.records[voter], leader.last)
        if record is not None:
            self.records[voter] = record
            leader.acks.add(voter)

    def commit(self, term: int, change: str) -> None:
        leader = self.leaders.get(term)
        if leader is None or leader.committed or not cn.is_quorum(leader.acks, leader.last):
            return
        state = leader.last
        self.check_chain(state)
        self.commits[state.epoch] = state
        self.records[leader.node] = cn.learn_commit(self.records[leader.node], state)
        leader.committed = True
        members = {m.id for m in state.members}
        changed = (
            cs._with_member(state, cs.Member(change, "u", cs.UP))
            if change not in members
            else replace(state, members=tuple(m for m in state.members if m.id != change or m.id == leader.node))
        )
        nxt = cn.propose(state, changed, term, leader.node)
        if nxt is not None:
            self.publish(term, leader, nxt)

    def check_chain(self, state: cs.ClusterState) -> None:
        same = self.commits.get(state.epoch)
        assert same is None or same == state, f"two states committed at epoch {state.epoch}"
        older = [e for e in self.commits if e < state.epoch]
        if older:
            previous = self.commits[max(older)]
            key = cn.version(state)
            while key[1] > previous.epoch:
                key = self.published[key]
            assert key == cn.version(previous), f"e{state.epoch} does not build on e{previous.epoch}"
            assert len(set(state.voters) ^ set(previous.voters)) <= 1


actions = st.lists(
    st.tuples(
        # Campaigns are rarer than the messages that complete an election or a publication.
        st.sampled_from(("campaign",) + ("vote", "win", "accept", "accept", "commit") * 5),
        st.sampled_from(NODES),
        st.sampled_from((0, 0, 0, 0, 0, 1, 2, 4)),
    ),
    min_size=80,
    max_size=200,
)


@settings(max_examples=120, deadline=None)
@given(actions)
def test_committed_states_form_one_chain_under_any_interleaving(steps):
    # Three voters that hold the same committed state; n4 and n5 may be added and removed.
    base = with_up(founded(), "n2", "n3")
    founding = replace(base, voters=("n1", "n2", "n3"), previous_voters=("n1", "n2", "n3"))
    model = Model({n: (cn.founding_record(founding) if n in founding.voters else cn.Record()) for n in NODES})
    for kind, node, k in steps:
        term = max(model.candidates, default=0) - k
        if kind == "campaign":
            model.campaign(node)
        elif kind == "vote":
            model.vote(node, term)
        elif kind == "win":
            model.win(term)
        elif kind == "accept":
            model.accept(node, term)
        elif kind == "commit":
            model.commit(term, node)
    COMMITS_SEEN.append(len(model.commits))


COMMITS_SEEN: list[int] = []


def test_the_interleavings_do_commit_and_elect():
    """The property above is not vacuous: many runs commit several states."""
    assert COMMITS_SEEN and sum(1 for n in COMMITS_SEEN if n >= 2) >= 10, COMMITS_SEEN[:50]
