"""Member attributes, pure: merging, limits, the gossip digest exchange, versions across restarts."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from legion import attributes
from legion.attributes import Attributes
from legion.errors import BadRequest
from legion.limits import ATTRIBUTE_KEYS_MAX, ATTRIBUTE_VALUE_CHARS_MAX

# Few nodes, few versions and few values: equal versions with different values (a tie
# the merge must break the same way whatever the order) come up often.
records = st.builds(
    Attributes.of,
    st.integers(0, 4),
    st.dictionaries(st.sampled_from(["kv.a", "kv.b", "mr.worker"]), st.sampled_from(["", "x", "tcp://h:1"]), max_size=3),
)
tables = st.dictionaries(st.sampled_from(["n1", "n2", "n3", "n4"]), records, max_size=4)


@settings(max_examples=300, deadline=None)
@given(tables, tables)
def test_merge_is_commutative(a, b):
    assert attributes.merge(a, b) == attributes.merge(b, a)


@settings(max_examples=200, deadline=None)
@given(tables, tables, tables)
def test_merge_is_associative_and_idempotent(a, b, c):
    assert attributes.merge(attributes.merge(a, b), c) == attributes.merge(a, attributes.merge(b, c))
    merged = attributes.merge(a, b)
    assert attributes.merge(merged, merged) == merged
    assert attributes.merge(merged, a) == merged


@settings(max_examples=300, deadline=None)
@given(st.lists(tables, min_size=1, max_size=5))
def test_merge_keeps_each_nodes_newest_record(many):
    merged: dict[str, Attributes] = {}
    for table in many:
        merged = attributes.merge(merged, table)
    for node in {node for table in many for node in table}:
        candidates = [table[node] for table in many if node in table]
        newest = max(candidates, key=lambda record: (record.version, record.pairs))
        assert merged[node] == newest
        assert all(merged[node].version >= record.version for record in candidates)


def test_a_greater_version_wins_whatever_the_values():
    old = Attributes.of(7, {"mr.worker": "zzz"})
    new = Attributes.of(8, {})
    assert attributes.merge({"n1": old}, {"n1": new}) == {"n1": new}
    assert attributes.merge({"n1": new}, {"n1": old}) == {"n1": new}


def gossip(a: dict[str, Attributes], b: dict[str, Attributes]) -> tuple[dict[str, Attributes], dict[str, Attributes]]:
    """One exchange as the gossiper and the gossip handler run it: digest, records it lacks, records the other lacks."""
    reply = attributes.newer_than(b, attributes.digest(a))  # b answers a's digest
    a = attributes.merge(a, attributes.from_wire(json.loads(json.dumps(attributes.to_wire(reply)))))
    push = attributes.newer_than(a, attributes.digest(b))  # a pushes what b's digest lacks
    b = attributes.merge(b, attributes.from_wire(json.loads(json.dumps(attributes.to_wire(push)))))
    return a, b


def test_records_spread_transitively_and_both_sides_end_equal():
    n1 = {"n1": Attributes.of(5, {"mr.worker": "tcp://1"})}
    n2 = {"n2": Attributes.of(3, {"mr.worker": "tcp://2"})}
    n3 = {"n3": Attributes.of(9, {})}
    n1, n2 = gossip(n1, n2)
    assert n1 == n2 and set(n1) == {"n1", "n2"}
    n2, n3 = gossip(n2, n3)
    # n3 never spoke to n1, yet holds n1's record: n2 relayed it.
    assert n3["n1"] == Attributes.of(5, {"mr.worker": "tcp://1"})
    assert n2 == n3


def test_newer_than_sends_only_what_the_digest_lacks():
    table = {"n1": Attributes(5), "n2": Attributes(3), "n3": Attributes(1)}
    assert attributes.newer_than(table, {"n1": 5, "n2": 2}) == {"n2": Attributes(3), "n3": Attributes(1)}
    assert attributes.newer_than(table, attributes.digest(table)) == {}


def test_an_engine_replaces_only_its_own_keys():
    current = {"kv.a": "1", "mr.worker": "tcp://old", "mr.threads": "4"}
    assert attributes.with_engine_values(current, "mr", {"mr.worker": "tcp://new"}) == {
        "kv.a": "1",
        "mr.worker": "tcp://new",
    }


@pytest.mark.parametrize(
    "values, message",
    [
        ({"kv.a": "1"}, "may only publish attributes named 'mr.…'"),
        ({"worker": "1"}, "may only publish attributes named 'mr.…'"),
        ({f"mr.k{i}": "v" for i in range(ATTRIBUTE_KEYS_MAX + 1)}, f"at most {ATTRIBUTE_KEYS_MAX} attributes"),
        ({"mr.worker": "x" * (ATTRIBUTE_VALUE_CHARS_MAX + 1)}, f"the limit is {ATTRIBUTE_VALUE_CHARS_MAX}"),
        ({"mr.worker": 8786}, "must be a string"),
        ({"mr.bad key": "1"}, "attribute key 'mr.bad key'"),
        (["mr.worker"], "not a mapping"),
    ],
)
def test_attributes_that_break_a_rule_are_refused_with_a_value_error_naming_it(values, message):
    with pytest.raises(ValueError, match="engine 'mr'") as caught:
        attributes.with_engine_values({}, "mr", values)
    assert message in str(caught.value)


def test_the_key_limit_counts_every_engines_keys_of_the_node():
    others = {f"kv.k{i}": "v" for i in range(ATTRIBUTE_KEYS_MAX)}
    with pytest.raises(ValueError, match=f"at most {ATTRIBUTE_KEYS_MAX} attributes"):
        attributes.with_engine_values(others, "mr", {"mr.worker": "x"})


def test_the_wire_form_round_trips_and_refuses_what_is_malformed_or_over_the_limits():
    table = {"n1": Attributes.of(attributes.version_of(1_700_000_000, 3), {"mr.worker": "tcp://h:1"})}
    assert attributes.from_wire(json.loads(json.dumps(attributes.to_wire(table)))) == table
    for raw in (
        [],
        {"n1": {"values": {}}},
        {"n1": {"version": -1, "values": {}}},
        {"n1": {"version": True, "values": {}}},
        {"n1": {"version": 1, "values": []}},
        {"n1": {"version": 1, "values": {"mr.w": "x" * (ATTRIBUTE_VALUE_CHARS_MAX + 1)}}},
    ):
        with pytest.raises(BadRequest):
            attributes.from_wire(raw)
    with pytest.raises(BadRequest):
        attributes.digest_from_wire({"n1": "7"})
    assert attributes.digest_from_wire(None) == {}


def test_a_restarted_node_publishes_above_its_previous_life_even_if_the_clock_went_back():
    first = attributes.next_incarnation(None, wall_s=1_000)
    last_of_first_life = attributes.version_of(first, attributes.COUNTER_MAX)
    second = attributes.next_incarnation(first, wall_s=900)  # the wall clock stepped back
    assert attributes.version_of(second, 0) > last_of_first_life
    # A wiped data directory forgets the previous incarnation; the wall clock still moved on.
    assert attributes.version_of(attributes.next_incarnation(None, wall_s=1_001), 0) > last_of_first_life
