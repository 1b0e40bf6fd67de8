"""A node's figures as an operator watches them: rates between two scrapes of ``/metrics``.

Pure: functions over the Prometheus text a node serves (``legion.runtime.
node_metrics``), parsed with prometheus_client's own parser. ``snapshot``
reads the cumulative counters that matter; ``rates`` turns two snapshots
of one node, ``seconds`` apart, into what ``legion cluster top`` shows:
client requests per second and their 99th-percentile latency (from the
latency histogram's buckets, interpolated within the bucket as Prometheus'
``histogram_quantile`` does), operations logged per second, and handoffs.

Client requests are every route but the peer API (``/internal/…``) and
``/metrics`` itself, so watching a cluster does not inflate what it shows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

QUANTILE = 0.99


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The cumulative figures of one scrape."""

    requests: float = 0.0
    latency_buckets: Mapping[float, float] = field(default_factory=dict)  # upper bound (s) → cumulative count
    ops_logged: float = 0.0
    handoffs_in_flight: float = 0.0
    handoff_partitions: float = 0.0


@dataclass(frozen=True, slots=True)
class Rates:
    """What changed between two snapshots, per second (latency in milliseconds; None: no request)."""

    requests_per_s: float
    p99_latency_ms: float | None
    ops_per_s: float
    handoffs_in_flight: int
    handoffs_done: int


def is_client_route(route: str) -> bool:
    return not route.startswith("/internal/") and route != "/metrics"


def sample_sum(exposition: str, name: str) -> float:
    """The sum of every sample called ``name`` (e.g. ``legion_handoff_snapshots_total``) in one scrape."""
    return sum(s.value for family in text_string_to_metric_families(exposition) for s in family.samples if s.name == name)


def snapshot(exposition: str) -> Snapshot:
    """The figures ``rates`` needs from one node's ``/metrics`` text."""
    requests = ops = in_flight = handoffs = 0.0
    buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            route = sample.labels.get("route", "")
            if sample.name == "legion_http_requests_total" and is_client_route(route):
                requests += sample.value
            elif sample.name == "legion_http_request_duration_seconds_bucket" and is_client_route(route):
                bound = float(sample.labels["le"])
                buckets[bound] = buckets.get(bound, 0.0) + sample.value
            elif sample.name == "legion_ops_logged_total":
                ops += sample.value
            elif sample.name == "legion_handoffs_in_flight":
                in_flight = sample.value
            elif sample.name == "legion_handoff_partitions_total":
                handoffs = sample.value
    return Snapshot(requests, buckets, ops, in_flight, handoffs)


def quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """The ``q`` quantile (seconds) of a cumulative histogram; None if it counted nothing.

    Linear within the bucket it falls in; the +Inf bucket answers with the highest finite bound."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    lower_bound, lower_count = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return bounds[-1]


def rates(before: Snapshot, after: Snapshot, seconds: float) -> Rates:
    """Per-second rates between two snapshots of one node taken ``seconds`` apart (a restart reads as zero)."""
    assert seconds > 0, seconds
    window = {bound: max(0.0, count - before.latency_buckets.get(bound, 0.0)) for bound, count in after.latency_buckets.items()}
    p99 = quantile(QUANTILE, window)
    return Rates(
        requests_per_s=max(0.0, after.requests - before.requests) / seconds,
        p99_latency_ms=None if p99 is None else p99 * 1000,
        ops_per_s=max(0.0, after.ops_logged - before.ops_logged) / seconds,
        handoffs_in_flight=int(after.handoffs_in_flight),
        handoffs_done=int(max(0.0, after.handoff_partitions - before.handoff_partitions)),
    )
