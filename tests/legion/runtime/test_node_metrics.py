"""Unit tests for ``legion.runtime.node_metrics``: per-node registries and scrape-time figures."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from legion import cluster_state as cs
from legion.runtime.node_metrics import NodeMetrics, engine_of


class _Engine:
    def __init__(self, figures=None, broken=False):
        self.figures, self.broken = figures or {}, broken

    def metrics(self):
        if self.broken:
            raise RuntimeError("boom")
        return self.figures


class _Source:
    def __init__(self, node_id, state, engines):
        self.node_id, self.state, self.engines = node_id, state, engines

    def handoffs_in_flight(self):
        return 2

    def log_figures(self):
        return 7, 40, None

    def hints_pending(self):
        return {"n2": 5, "n3": 1}

    def partitions_catching_up(self):
        return 4

    def partitions_handing_over(self):
        return 3


def samples(metrics: NodeMetrics) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_two_nodes_in_one_process_keep_their_own_figures():
    a, b = NodeMetrics(), NodeMetrics()
    a.observe_request("/v1/kv/{key}", "kv", "PUT", 200, 0.002)
    a.observe_group_commit({"kv": 3}, 0.001)
    got_a, got_b = samples(a), samples(b)
    key = ("legion_http_requests_total", (("engine", "kv"), ("method", "PUT"), ("route", "/v1/kv/{key}"), ("status", "200")))
    assert got_a[key] == 1
    assert key not in got_b
    assert got_a[("legion_ops_logged_total", (("engine", "kv"),))] == 3
    assert got_a[("legion_group_commit_ops_sum", ())] == 3


def test_scrape_reads_placement_log_and_engine_figures_and_survives_a_broken_engine():
    state = cs.new_cluster("c-test", "n1", "http://127.0.0.1:1", 8, 1)
    metrics = NodeMetrics()
    metrics.watch(_Source("n1", state, {"kv": _Engine({"keys": 12}), "bad": _Engine(broken=True)}))
    got = samples(metrics)
    assert got[("legion_partitions_held", (("role", "primary"),))] == 8
    assert got[("legion_partitions_held", (("role", "replica"),))] == 0
    assert got[("legion_members", (("status", "up"),))] == 1
    assert got[("legion_cluster_epoch", ())] == state.epoch
    assert got[("legion_handoffs_in_flight", ())] == 2
    assert got[("legion_oplog_rows", ())] == 7
    # Nothing above a checkpoint: the oldest un-checkpointed position is one past the newest.
    assert got[("legion_oplog_oldest_uncheckpointed_seq", ())] == 41
    assert got[("legion_kv_keys", ())] == 12
    assert got[("legion_hints_pending", (("owner", "n2"),))] == 5
    assert got[("legion_hints_pending", (("owner", "n3"),))] == 1
    assert got[("legion_partitions_catching_up", ())] == 4
    assert got[("legion_partitions_handing_over", ())] == 3


def test_hints_kept_lost_and_replayed_are_counted():
    metrics = NodeMetrics()
    metrics.observe_hints(kept=10, lost=2)
    metrics.observe_hints(replayed=7)
    got = samples(metrics)
    assert got[("legion_hints_kept_total", ())] == 10
    assert got[("legion_hints_lost_total", ())] == 2
    assert got[("legion_hints_replayed_total", ())] == 7


def test_engine_of_a_path():
    engines = {"kv": object(), "search": object()}
    assert engine_of("/v1/kv/some-key", engines) == "kv"
    assert engine_of("/v1/search", engines) == "search"
    assert engine_of("/v1/cluster", engines) == ""
    assert engine_of("/internal/apply", engines) == ""


def test_log_figures_of_a_real_store(tmp_path: Path):
    from legion.replication import Operation
    from legion.runtime.storage import NodeStore

    store = NodeStore(tmp_path)
    assert store.log_figures() == (0, 0, None)
    ops = [Operation("kv", 0, b"k%d" % i, i + 1, "n1", "put", b"") for i in range(3)]
    store.append(ops, {})
    assert store.log_figures() == (3, 3, 1)
    store.append([], {("kv", 0): 2})
    assert store.log_figures() == (3, 3, 3)
    store.close()
