"""Cluster-state transitions: joins, removals, rebalances, gossip ordering, encoding."""

import pytest

from legion import cluster_state as cs
from legion.errors import BadRequest, Conflict


def three_nodes(partitions=16, replicas=3):
    state = cs.new_cluster("c1", "n1", "http://127.0.0.1:1", partitions, replicas)
    for i in (2, 3):
        state = cs.commit(state, cs.add_member(state, f"n{i}", f"http://127.0.0.1:{i}"), "n1")
        state = cs.commit(state, finish_handoff(state), "n1")
    return state


def finish_handoff(state):
    for p, node in cs.gained_slots(state.placement, state.pending):
        state = cs.mark_ready(state, node, [p])
    return cs.try_commit(state)


def test_a_new_cluster_places_every_partition_on_its_only_node():
    state = cs.new_cluster("c1", "n1", "http://x:1", 8, 3)
    assert state.placement == tuple(("n1",) for _ in range(8))
    assert state.member("n1").status == cs.UP


def test_join_is_pending_until_every_gained_slot_is_ready():
    state = cs.new_cluster("c1", "n1", "http://x:1", 8, 3)
    joined = cs.add_member(state, "n2", "http://x:2")
    assert joined.member("n2").status == cs.JOINING
    assert joined.pending is not None and joined.placement == state.placement
    gained = cs.gained_slots(joined.placement, joined.pending)
    assert gained and all(node == "n2" for _, node in gained)
    first = sorted(gained)[0]
    partial = cs.try_commit(cs.mark_ready(joined, "n2", [first[0]]))
    assert partial.pending is not None, "must not commit before every slot is ready"
    done = finish_handoff(joined)
    assert done.pending is None and done.placement == joined.pending
    assert done.member("n2").status == cs.UP


def test_owners_include_gaining_nodes_during_a_rebalance():
    state = three_nodes(16, 2)
    joined = cs.add_member(state, "n4", "http://x:4")
    gained = {p for p, n in cs.gained_slots(joined.placement, joined.pending) if n == "n4"}
    for p in gained:
        assert "n4" in cs.owners(joined, p)
        assert "n4" not in joined.placement[p]
    assert set(cs.partitions_held(joined, "n4")) == gained


def test_remove_moves_data_off_then_marks_removed():
    state = three_nodes(16, 2)
    leaving = cs.remove_member(state, "n3")
    assert leaving.member("n3").status == cs.LEAVING
    done = finish_handoff(leaving)
    assert done.member("n3").status == cs.REMOVED
    assert all("n3" not in nodes for nodes in done.placement)


def test_the_last_data_holder_cannot_be_removed():
    state = cs.new_cluster("c1", "n1", "http://x:1", 8, 3)
    with pytest.raises(Conflict):
        cs.remove_member(state, "n1")


def test_a_removed_node_cannot_rejoin_under_the_same_id():
    state = finish_handoff(cs.remove_member(three_nodes(), "n2"))
    with pytest.raises(Conflict):
        cs.add_member(state, "n2", "http://x:2")


def test_down_is_kept_apart_from_the_lifecycle_status():
    state = three_nodes()
    down = cs.set_down(state, "n2", True)
    assert down.member("n2").shown_status == cs.DOWN
    assert down.member("n2").status == cs.UP
    assert down.placement == state.placement, "a down node keeps its partitions (no automatic eviction)"
    assert cs.set_down(down, "n2", False).member("n2").shown_status == cs.UP


def test_commit_bumps_the_epoch_only_on_change():
    state = three_nodes()
    assert cs.commit(state, state, "n1") is state
    changed = cs.commit(state, cs.set_down(state, "n3", True), "n2")
    assert changed.epoch == state.epoch + 1 and changed.committed_by == "n2"


def test_newer_prefers_higher_epoch_then_lower_committer():
    state = three_nodes()
    a = cs.commit(state, cs.set_down(state, "n3", True), "n1")
    b = cs.commit(state, cs.set_down(state, "n2", True), "n2")
    assert cs.newer(a, b) and not cs.newer(b, a)
    later = cs.commit(b, cs.set_down(b, "n2", False), "n2")
    assert cs.newer(later, a)
    assert not cs.newer(a, a)


def test_round_trip_through_dict():
    state = cs.add_member(three_nodes(), "n4", "http://x:4")
    state = cs.mark_ready(state, "n4", [p for p, n in cs.gained_slots(state.placement, state.pending)][:2])
    assert cs.from_dict(cs.to_dict(state)) == state


@pytest.mark.parametrize("bad", [{}, {"members": "x"}, [], None, {"cluster_id": "c", "partitions": "many"}])
def test_malformed_state_is_a_bad_request(bad):
    with pytest.raises(BadRequest):
        cs.from_dict(bad)


def test_status_document_counts_primaries_and_replicas():
    state = three_nodes(16, 3)
    doc = cs.status_document(state, "n1")
    assert sum(m["primary"] for m in doc["members"]) == 16
    assert all(m["primary"] + m["replica"] == 16 for m in doc["members"])
    assert doc["rebalancing"] is False and doc["claimant"] == "n1"


def test_status_document_shows_each_members_attributes_empty_when_unknown():
    state = three_nodes(16, 3)
    doc = cs.status_document(state, "n1", {"n2": {"mr.worker": "tcp://127.0.0.1:9"}})
    assert {m["id"]: m["attributes"] for m in doc["members"]} == {
        "n1": {},
        "n2": {"mr.worker": "tcp://127.0.0.1:9"},
        "n3": {},
    }
    assert all(m["attributes"] == {} for m in cs.status_document(state, "n1")["members"])


def test_removing_a_joiner_removes_it_at_once_without_giving_it_a_vote():
    state = cs.new_cluster("c1", "n1", "http://x:1", 8, 3)
    joined = cs.add_member(state, "n2", "http://x:2")
    removed = cs.remove_member(joined, "n2")
    assert removed.member("n2").status == cs.REMOVED
    assert removed.pending is None and removed.placement == state.placement
