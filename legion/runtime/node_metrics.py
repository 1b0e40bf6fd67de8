"""A node's Prometheus metrics: what ``GET /metrics`` exposes.

I/O-free bookkeeping plus a scrape-time collector; the runtime parts record
into it where the work happens — the transport middleware (HTTP requests),
the log writer (operations logged and applied, group commits), the gossiper
(rounds), the handoff receiver (partitions, operations and bytes pulled),
hinted handoff (hints kept, lost, replayed) and anti-entropy (rounds,
exchanges, keys repaired).
Figures that are a picture of *now* (partitions held, members by status, the
epoch, the operation log, each engine's ``Engine.metrics()``) are read when
scraped, from the ``MetricsSource`` the node hands over.

Every node has its own ``CollectorRegistry``, never prometheus_client's global
one: several nodes may share a process (tests, the simulator), and each must
report only its own figures. Metrics are built with ``prometheus_client``;
nothing here writes the exposition format by hand.

Labels stay bounded: ``route`` is the matched route template
(``/v1/kv/{key}``, never the key itself), or ``unmatched``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from legion import cluster_state as cs
from legion.dashboard import check_figure_name
from legion.engine import Engine

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS_OPS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
ENGINE_LABEL_CORE = ""
_ENGINE_PATH = re.compile(r"^/v1/([^/]+)")


class MetricsSource(Protocol):
    """What the scrape-time collector reads from the node (a narrow view, not the node)."""

    node_id: str
    engines: Mapping[str, Engine]

    @property
    def state(self) -> cs.ClusterState | None: ...

    def handoffs_in_flight(self) -> int: ...

    def hints_pending(self) -> Mapping[str, int]:
        """Hints this node keeps, per owner they are for."""
        ...

    def partitions_catching_up(self) -> int:
        """Partitions this node does not serve reads of until the hints peers hold for it arrived."""
        ...

    def partitions_handing_over(self) -> int:
        """Partitions this node no longer owns and still holds a copy of, until their owners took it."""
        ...

    def log_figures(self) -> tuple[int, int, int | None]:
        """Operation log rows, the newest seq, and the oldest seq above its partition's checkpoint (None: none)."""
        ...


def engine_of(path: str, engines: Mapping[str, object]) -> str:
    """The engine a request path belongs to (``/v1/<engine>/…``), or "" for the core's own routes."""
    match = _ENGINE_PATH.match(path)
    return match.group(1) if match and match.group(1) in engines else ENGINE_LABEL_CORE


class NodeMetrics:
    """One node's registry and the counters and histograms the runtime records into."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.http_requests = Counter(
            "legion_http_requests", "HTTP requests answered, by route template, engine, method and status.",
            ["route", "engine", "method", "status"], registry=r,
        )  # fmt: skip
        self.http_seconds = Histogram(
            "legion_http_request_duration_seconds", "Time to answer an HTTP request, by route template and engine.",
            ["route", "engine"], buckets=LATENCY_BUCKETS_S, registry=r,
        )  # fmt: skip
        self.ops_logged = Counter("legion_ops_logged", "Operations appended to the operation log.", ["engine"], registry=r)
        self.ops_applied = Counter("legion_ops_applied", "Operations applied by their engine.", ["engine"], registry=r)
        self.group_commit_ops = Histogram(
            "legion_group_commit_ops", "Operations per group commit of the log writer.", buckets=BATCH_BUCKETS_OPS, registry=r
        )
        self.group_commit_seconds = Histogram(
            "legion_group_commit_duration_seconds", "Time to log and apply one group commit.",
            buckets=LATENCY_BUCKETS_S, registry=r,
        )  # fmt: skip
        self.gossip_rounds = Counter("legion_gossip_rounds", "Gossip rounds run.", registry=r)
        self.handoff_partitions = Counter(
            "legion_handoff_partitions", "Partitions copied in from another replica (handoffs and re-syncs).", registry=r
        )
        self.handoff_ops = Counter("legion_handoff_ops", "Operations received by handoff.", registry=r)
        self.etcd_swaps_lost = Counter(
            "legion_etcd_swaps_lost",
            "Compare-and-swaps of the cluster state in etcd (--metadata etcd://) lost to another node's change, then retried.",
            registry=r,
        )  # fmt: skip
        self.read_repairs = Counter(
            "legion_read_repairs", "Keys this node repaired after replicas answered a read with different versions.",
            ["engine"], registry=r,
        )  # fmt: skip
        self.handoff_snapshots = Counter(
            "legion_handoff_snapshots", "Engine partitions copied in as snapshots of their files (not folds).", registry=r
        )
        self.handoff_bytes = Counter("legion_handoff_bytes", "Bytes received by handoff.", registry=r)
        self.hints_kept = Counter("legion_hints_kept", "Operations kept as hints for owners that were down.", registry=r)
        self.hints_lost = Counter(
            "legion_hints_lost", "Hints not kept because the hint store was full (their owners re-sync).", registry=r
        )
        self.hints_replayed = Counter("legion_hints_replayed", "Hints replayed and acknowledged by their owner.", registry=r)
        self.anti_entropy_exchanges = Counter(
            "legion_anti_entropy_exchanges", "Anti-entropy exchanges this node ran with a peer (one engine's partition each).",
            ["engine", "outcome"], registry=r,
        )  # fmt: skip
        self.anti_entropy_keys = Counter(
            "legion_anti_entropy_keys_repaired", "Keys anti-entropy found differing and shipped both ways.",
            ["engine"], registry=r,
        )  # fmt: skip
        self.anti_entropy_rounds = Counter(
            "legion_anti_entropy_rounds", "Anti-entropy rounds completed: every partition pair this node starts, once.",
            registry=r,
        )  # fmt: skip
        # Labelled children by label values, looked up once: ``labels()`` costs a few microseconds per
        # request, three times what counting does. Bounded: routes are templates, statuses a handful.
        self._request_children: dict[tuple[str, str, str, int], tuple[Any, Any]] = {}

    def watch(self, source: MetricsSource) -> None:
        """Report ``source``'s current picture at every scrape."""
        self.registry.register(_StateCollector(source))

    def observe_request(self, route: str, engine: str, method: str, status: int, seconds: float) -> None:
        key = (route, engine, method, status)
        children = self._request_children.get(key)
        if children is None:
            children = (self.http_requests.labels(route, engine, method, str(status)), self.http_seconds.labels(route, engine))
            self._request_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def observe_group_commit(self, logged: Mapping[str, int], seconds: float) -> None:
        """One group commit: operations logged per engine, and how long logging and applying took."""
        for engine, count in logged.items():
            self.ops_logged.labels(engine).inc(count)
        self.group_commit_ops.observe(sum(logged.values()))
        self.group_commit_seconds.observe(seconds)

    def observe_hints(self, *, kept: int = 0, lost: int = 0, replayed: int = 0) -> None:
        self.hints_kept.inc(kept)
        self.hints_lost.inc(lost)
        self.hints_replayed.inc(replayed)

    def observe_applied(self, engine: str, count: int) -> None:
        self.ops_applied.labels(engine).inc(count)

    def exposition(self) -> bytes:
        """The registry in Prometheus' text format (blocking: engines' figures are read; call off the loop)."""
        return generate_latest(self.registry)


class _StateCollector(Collector):
    """Gauges read at scrape time from the node's current state."""

    def __init__(self, source: MetricsSource) -> None:
        self.source = source

    def describe(self) -> list[Metric]:
        return []  # dynamic: engine figures are only known at scrape time

    def collect(self) -> Iterator[Metric]:
        source = self.source
        state = source.state
        yield from _placement_gauges(state, source.node_id)
        handoffs = GaugeMetricFamily("legion_handoffs_in_flight", "Partitions this node is pulling right now.")
        handoffs.add_metric([], source.handoffs_in_flight())
        yield handoffs
        hints = GaugeMetricFamily("legion_hints_pending", "Hints this node keeps, by the owner they are for.", labels=["owner"])
        for owner, count in sorted(source.hints_pending().items()):
            hints.add_metric([owner], count)
        yield hints
        catching_up = GaugeMetricFamily(
            "legion_partitions_catching_up", "Partitions this node does not serve reads of until its hints arrived."
        )
        catching_up.add_metric([], source.partitions_catching_up())
        yield catching_up
        handing_over = GaugeMetricFamily(
            "legion_partitions_handing_over", "Partitions this node no longer owns and still hands to their owners."
        )
        handing_over.add_metric([], source.partitions_handing_over())
        yield handing_over
        rows, newest, oldest = source.log_figures()
        log_rows = GaugeMetricFamily("legion_oplog_rows", "Rows in the operation log (not yet compacted).")
        log_rows.add_metric([], rows)
        yield log_rows
        newest_seq = GaugeMetricFamily("legion_oplog_newest_seq", "Position (seq) of the newest logged operation.")
        newest_seq.add_metric([], newest)
        yield newest_seq
        oldest_seq = GaugeMetricFamily(
            "legion_oplog_oldest_uncheckpointed_seq",
            "Position of the oldest logged operation above its partition's checkpoint (the newest seq + 1 when none).",
        )
        oldest_seq.add_metric([], newest + 1 if oldest is None else oldest)
        yield oldest_seq
        yield from _engine_gauges(source.engines)


def _placement_gauges(state: cs.ClusterState | None, node_id: str) -> Iterator[Metric]:
    epoch = GaugeMetricFamily("legion_cluster_epoch", "Epoch of the cluster state this node holds.")
    held = GaugeMetricFamily("legion_partitions_held", "Partitions this node holds, as primary or replica.", labels=["role"])
    members = GaugeMetricFamily("legion_members", "Members of the cluster by status, as this node sees them.", labels=["status"])
    counts = {"primary": 0, "replica": 0}
    by_status = dict.fromkeys(("joining", "up", "leaving", "down", "removed"), 0)
    if state is not None:
        epoch.add_metric([], state.epoch)
        for nodes in state.placement:
            if node_id in nodes:
                counts["primary" if nodes[0] == node_id else "replica"] += 1
        for member in state.members:
            by_status[member.shown_status] = by_status.get(member.shown_status, 0) + 1
    for role, count in counts.items():
        held.add_metric([role], count)
    for status, count in by_status.items():
        members.add_metric([status], count)
    yield from (epoch, held, members)


def _engine_gauges(engines: Mapping[str, Engine]) -> Iterator[Metric]:
    for name, engine in sorted(engines.items()):
        try:
            figures = engine.metrics()
        except Exception:
            # One engine's broken figures must not hide every other metric of the node.
            log.exception("engine %s failed to report its metrics", name)
            continue
        prefix = "legion_" + re.sub(r"[^a-zA-Z0-9_]", "_", name)
        for figure, value in sorted(figures.items()):
            family = GaugeMetricFamily(f"{prefix}_{check_figure_name(figure)}", f"Engine {name}: {figure} on this node.")
            family.add_metric([], float(value))
            yield family
