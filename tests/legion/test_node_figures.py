"""Tests for ``legion.node_figures``: rates and the p99 from real exposition text."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from legion.node_figures import quantile, rates, snapshot
from legion.runtime.node_metrics import NodeMetrics


def test_rates_between_two_scrapes_count_client_requests_only():
    metrics = NodeMetrics()
    before = snapshot(metrics.exposition().decode())
    for _ in range(90):
        metrics.observe_request("/v1/kv/{key}", "kv", "PUT", 200, 0.003)
    for _ in range(10):
        metrics.observe_request("/v1/kv/{key}", "kv", "GET", 200, 0.2)
    for _ in range(500):  # peer traffic and scrapes are not client requests
        metrics.observe_request("/internal/apply", "", "POST", 200, 5.0)
    metrics.observe_request("/metrics", "", "GET", 200, 5.0)
    metrics.observe_group_commit({"kv": 40}, 0.001)
    metrics.handoff_partitions.inc(2)
    after = snapshot(metrics.exposition().decode())
    got = rates(before, after, seconds=2.0)
    assert got.requests_per_s == 50.0
    assert got.ops_per_s == 20.0
    assert got.handoffs_done == 2
    # 99 % of 100 requests: rank 99 falls among the ten slow ones, in the (0.1, 0.25] bucket.
    assert 100 < got.p99_latency_ms <= 250


def test_no_requests_means_no_latency():
    metrics = NodeMetrics()
    snap = snapshot(metrics.exposition().decode())
    assert rates(snap, snap, 1.0).p99_latency_ms is None


@given(st.lists(st.floats(min_value=0.0001, max_value=9.0), min_size=1, max_size=200), st.floats(0.01, 1.0))
def test_the_quantile_lies_in_the_bucket_that_holds_that_rank(values, q):
    bounds = [0.001, 0.01, 0.1, 1.0, 10.0, math.inf]
    buckets = {b: float(sum(v <= b for v in values)) for b in bounds}
    got = quantile(q, buckets)
    ordered = sorted(values)
    true = ordered[max(0, math.ceil(q * len(values)) - 1)]
    upper = next(b for b in bounds if true <= b)
    lower = max([0.0] + [b for b in bounds if b < upper])
    assert lower <= got <= upper + 1e-12


def test_rates_need_a_positive_window():
    with pytest.raises(AssertionError):
        rates(snapshot(""), snapshot(""), 0)
