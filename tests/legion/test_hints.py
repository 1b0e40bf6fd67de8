"""Hinted handoff decisions (``legion.hints``): property tests over plain data."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from legion import cluster_state as cs
from legion.hints import (
    CatchUp,
    HintReport,
    catch_up,
    counts_towards_quorum,
    fallback_order,
    hint_holders,
    parse_pending_summary,
    pending_summary,
    readdress,
    replay_chunks,
    replay_owners,
    settle_replay,
    unhealthy_summary,
)
from legion.routing import write_plan
from tests.legion.test_cluster_state import three_nodes

NODE_IDS = [f"n{i}" for i in range(1, 8)]


@st.composite
def clusters(draw):
    """Members, a preference list drawn from them, a live subset, and a live coordinator."""
    members = draw(st.lists(st.sampled_from(NODE_IDS), min_size=1, max_size=7, unique=True))
    preference = draw(st.lists(st.sampled_from(members), min_size=1, max_size=min(3, len(members)), unique=True))
    live = set(draw(st.lists(st.sampled_from(members), unique=True)))
    coordinator = draw(st.sampled_from(members))
    live.add(coordinator)
    return members, preference, live, coordinator


@given(clusters(), st.integers(min_value=0, max_value=4095))
def test_fallbacks_are_the_other_members_once_each_and_stable(cluster, partition):
    members, preference, _live, _coordinator = cluster
    order = fallback_order(members, preference, partition)
    assert sorted(order) == sorted(set(members) - set(preference))
    assert fallback_order(list(reversed(members)), preference, partition) == order  # member order does not matter


@given(clusters(), st.integers(min_value=0, max_value=4095))
def test_every_down_owner_gets_a_live_holder_distinct_fallbacks_first(cluster, partition):
    members, preference, live, coordinator = cluster
    fallbacks = fallback_order(members, preference, partition)
    holders = hint_holders(preference, fallbacks, live, coordinator)
    assert set(holders) == {n for n in preference if n not in live}
    assert all(h in live for h in holders.values())
    assert not any(h in preference for h in holders.values() if h != coordinator)
    outside = [h for h in holders.values() if h != coordinator or coordinator not in preference]
    spare = [n for n in fallbacks if n in live]
    if len(holders) <= len(spare):
        # Enough live fallbacks: each down owner has its own, in ring order.
        assert list(holders.values()) == spare[: len(holders)]
        assert len(set(outside)) == len(outside)
    else:
        assert coordinator in holders.values()


@given(clusters())
def test_a_hint_counts_towards_w_only_on_a_node_without_a_replica(cluster):
    _members, preference, _live, coordinator = cluster
    for holder in NODE_IDS:
        assert counts_towards_quorum(holder, preference) == (holder not in preference)
    assert counts_towards_quorum(coordinator, preference) == (coordinator not in preference)


def test_a_write_plan_hints_a_down_owner_and_never_counts_one_node_twice():
    state = three_nodes(8, 3)
    plan = write_plan(state, 0, {"n1", "n2"}, "n1")
    assert plan.counted == tuple(n for n in state.placement[0] if n != "n3")
    assert plan.hinted == (("n3", "n1"),)  # no member outside the list: the coordinator keeps it
    assert plan.quorum == plan.counted  # ...and it does not count
    both_down = write_plan(state, 0, {"n1"}, "n1")
    assert both_down.quorum == ("n1",)
    assert write_plan(state, 0, {"n1", "n2"}).hinted == ()  # without a coordinator, no hints


@given(
    st.dictionaries(st.sampled_from(NODE_IDS), st.integers(min_value=0, max_value=50)),
    st.sets(st.sampled_from(NODE_IDS)),
    st.dictionaries(st.sampled_from(NODE_IDS), st.sampled_from([cs.UP, cs.JOINING, cs.LEAVING, cs.REMOVED])),
    st.sampled_from(NODE_IDS),
)
def test_hints_are_replayed_to_live_members_and_dropped_only_for_members_gone(pending, live, members, holder):
    replay, orphaned = replay_owners(pending, live, members, holder)
    assert not set(replay) & set(orphaned)
    for owner, count in pending.items():
        if count <= 0:
            assert owner not in replay and owner not in orphaned
        elif members.get(owner) in (None, cs.REMOVED):
            assert owner in orphaned
        else:
            assert (owner in replay) == (owner in live)
            assert owner not in orphaned  # a member that is only down keeps its hints


@given(st.sampled_from(NODE_IDS), st.lists(st.sampled_from(NODE_IDS), min_size=1, max_size=4, unique=True))
def test_a_hint_follows_its_partition_when_the_owner_no_longer_holds_it(owner, owners_now):
    targets = readdress(owner, owners_now)
    if owner in owners_now:
        assert targets == (owner,)
    else:
        assert targets == tuple(owners_now)  # every current owner gets it: none is known to have it


@given(st.lists(st.integers(min_value=1, max_value=10_000), unique=True), st.data())
def test_a_hint_is_dropped_only_once_acknowledged(ids, data):
    refused = data.draw(st.sets(st.integers(min_value=0, max_value=max(0, len(ids) - 1))))
    failed = data.draw(st.booleans())
    drop, keep = settle_replay(ids, refused, failed)
    assert sorted(drop + keep) == sorted(ids)
    if failed:
        assert drop == []
    else:
        assert drop == [h for i, h in enumerate(ids) if i not in refused]


@given(st.lists(st.integers(min_value=50, max_value=3_000), max_size=300))
def test_replay_chunks_cover_every_hint_in_order_within_the_bounds(sizes):
    chunks = replay_chunks(sizes, ops_max=40, bytes_max=10_000)
    assert [i for chunk in chunks for i in chunk] == list(range(len(sizes)))
    assert all(0 < len(chunk) <= 40 and sum(sizes[i] for i in chunk) <= 10_000 for chunk in chunks)


reports = st.one_of(
    st.none(),
    st.builds(
        HintReport,
        pending=st.dictionaries(st.integers(0, 15), st.integers(0, 5)),
        lost=st.frozensets(st.integers(0, 15)),
    ),
)


@given(st.sets(st.integers(0, 15)), st.dictionaries(st.sampled_from(NODE_IDS), reports))
def test_a_catching_up_owner_serves_a_partition_only_once_no_peer_holds_hints_for_it(held, answers):
    result = catch_up(held, answers)
    assert isinstance(result, CatchUp)
    assert result.serving | result.waiting | result.resync == held
    assert not (result.serving & result.waiting or result.serving & result.resync or result.waiting & result.resync)
    if any(report is None for report in answers.values()):
        assert result.waiting == held  # a peer that did not answer may hold hints for anything
        return
    for p in result.serving:
        assert all(report.pending.get(p, 0) == 0 and p not in report.lost for report in answers.values())
    for p in result.resync:
        assert any(p in report.lost for report in answers.values())


def test_with_no_peer_to_ask_every_partition_is_served():
    assert catch_up({1, 2}, {}) == CatchUp(serving=frozenset({1, 2}), waiting=frozenset(), resync=frozenset())


@given(st.dictionaries(st.sampled_from(NODE_IDS), st.integers(min_value=0, max_value=10**9)))
def test_the_pending_summary_reads_back(pending):
    assert parse_pending_summary(pending_summary(pending)) == {o: n for o, n in pending.items() if n > 0}


def test_unhealthy_names_what_a_member_does_not_serve_and_why():
    assert unhealthy_summary({}) == ""
    text = unhealthy_summary({"legion.resyncing": "2: 3-4", "hints.catching-up": "1: 7"})
    assert "re-syncing 2: 3-4" in text and "waiting for hints 1: 7" in text
