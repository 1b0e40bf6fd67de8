"""Replica verification: fold summaries ignore arrival order; compare names what differs and what went unchecked."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from legion.replication import Operation
from legion.verify import Summary, compare, summarise

ops = st.lists(
    st.builds(
        Operation,
        st.just("kv"), st.integers(0, 3), st.binary(min_size=1, max_size=4), st.integers(0, 2**40),
        st.sampled_from(["n1", "n2"]), st.sampled_from(["put", "delete"]), st.binary(max_size=8),
    ),  # fmt: skip
    unique=True,
)


@given(ops, st.randoms(use_true_random=False))
def test_a_summary_does_not_depend_on_the_order_of_the_fold(history, rnd):
    shuffled = list(history)
    rnd.shuffle(shuffled)
    assert summarise(history) == summarise(shuffled)
    assert summarise(history).count == len(history)


@given(ops.filter(bool))
def test_a_missing_or_changed_operation_changes_the_summary(history):
    assert summarise(history[1:]) != summarise(history)
    first = history[0]
    changed = Operation(first.engine, first.partition, first.key, first.hlc + 1, first.origin, first.kind, first.body)
    if changed not in history:
        assert summarise([changed, *history[1:]]) != summarise(history)


def test_compare_names_differing_unchecked_and_unreachable():
    same, other = Summary(3, "a" * 32), Summary(2, "b" * 32)
    placement = [("n1", "n2", "n3"), ("n1", "n2", "n3"), ("n3", "n1", "n2")]
    answers = {
        "n1": {("kv", 0): same, ("kv", 1): same, ("kv", 2): same},
        "n2": {("kv", 0): same, ("kv", 1): other, ("kv", 2): same},
    }
    report = compare(placement, ["kv"], answers, {"n3": "down"})
    assert report.checked == 3 and not report.clean
    assert [(d.engine, d.partition, dict(d.replicas)) for d in report.differing] == [("kv", 1, {"n1": same, "n2": other})]
    assert report.unreachable == {"n3": "down"} and report.unverified == []
    only_one = compare(placement, ["kv"], {"n1": answers["n1"]}, {"n2": "down", "n3": "down"})
    assert only_one.checked == 0 and len(only_one.unverified) == 3


def test_a_cluster_whose_replicas_agree_is_clean():
    s = Summary(1, "c" * 32)
    placement = [tuple(random.Random(p).sample(["n1", "n2", "n3"], 2)) for p in range(8)]
    answers = {n: {("kv", p): s for p, replicas in enumerate(placement) if n in replicas} for n in ("n1", "n2", "n3")}
    report = compare(placement, ["kv"], answers, {})
    assert report.clean and report.checked == 8 and report.to_json()["clean"] is True
