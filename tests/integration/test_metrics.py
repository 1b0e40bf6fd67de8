"""Acceptance tests for ``GET /metrics``: a known workload on a real 3-node cluster, read back.

Every figure is scraped over HTTP from the node processes and parsed with
prometheus_client's own parser, as Prometheus would read it.
"""

from __future__ import annotations

import http.client
import time
from urllib.parse import urlsplit

import pytest
from prometheus_client.parser import text_string_to_metric_families

from engines.kv import KVClient
from engines.search.client import SearchClient
from legion.client import Client
from legion.errors import Unauthorized
from tests.conftest import LocalCluster

PUTS = 500
DOCS = 20
SETTLE_TIMEOUT_S = 20.0


def scrape(cluster: LocalCluster, node_id: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Sample name → [(labels, value)] from one node's /metrics."""
    with cluster.node_client(node_id) as client:
        text = client.request("GET", "/metrics").body.decode()
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def total(samples, name: str, **labels: str) -> float:
    return sum(value for found, value in samples.get(name, ()) if all(found.get(k) == v for k, v in labels.items()))


def test_500_puts_through_n1_are_500_requests_there_and_replicated_ops_everywhere_and_engines_report(
    no_background_anti_entropy: None, local_cluster: LocalCluster
):
    # It counts every operation logged: anti-entropy would log a key again when it meets a write in flight.
    with local_cluster.node_client("n1") as c1:
        kv = KVClient(c1)
        for i in range(PUTS):
            kv.put(f"metric:{i:04d}", b"x")
    # W=2 acknowledges before the third replica logs: wait for every replica to have them all.
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while True:
        scraped = {node_id: scrape(local_cluster, node_id) for node_id in ("n1", "n2", "n3")}
        logged = {n: total(s, "legion_ops_logged_total", engine="kv") for n, s in scraped.items()}
        if all(count >= PUTS for count in logged.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    status = local_cluster.client.status()
    for node_id, samples in scraped.items():
        puts = total(samples, "legion_http_requests_total", route="/v1/kv/{key}", engine="kv", method="PUT")
        assert puts == (PUTS if node_id == "n1" else 0), node_id
        # Every node holds a replica of every partition (3 nodes, 3 replicas): each logged and applied all 500.
        assert total(samples, "legion_ops_logged_total", engine="kv") == PUTS, node_id
        assert total(samples, "legion_ops_applied_total", engine="kv") == PUTS, node_id
        assert total(samples, "legion_kv_keys") == PUTS, node_id
        assert total(samples, "legion_group_commit_ops_sum") == PUTS, node_id
        assert total(samples, "legion_partitions_held", role="primary") + total(
            samples, "legion_partitions_held", role="replica"
        ) == 64
        assert total(samples, "legion_members", status="up") == 3
        assert total(samples, "legion_cluster_epoch") == status["epoch"]
        assert total(samples, "legion_gossip_rounds_total") > 0
        assert total(samples, "legion_handoffs_in_flight") == 0
        assert total(samples, "legion_oplog_newest_seq") >= PUTS
        assert total(samples, "legion_http_request_duration_seconds_count", route="/v1/kv/{key}") == (
            PUTS if node_id == "n1" else 0
        )
    # The replicas got their operations from n1 over the peer API, and answered nothing to clients.
    for node_id in ("n2", "n3"):
        applies = total(scraped[node_id], "legion_http_requests_total", route="/internal/apply", status="200")
        assert 0 < applies <= PUTS, node_id
    primaries = sum(total(s, "legion_partitions_held", role="primary") for s in scraped.values())
    assert primaries == 64

    # Search's figures (Engine.metrics) reach every node's /metrics too.
    search = SearchClient(local_cluster.client)
    search.create("notes", {"fields": {"id": {"type": "keyword"}, "t": {"type": "text"}}})
    for i in range(DOCS):
        search.put("notes", {"id": f"d{i}", "t": f"note number {i}"}, refresh=True)
    for node_id in ("n1", "n2", "n3"):
        samples = scrape(local_cluster, node_id)
        # refresh: every live replica committed the document before the answer.
        assert total(samples, "legion_search_documents") == DOCS, node_id
        assert total(samples, "legion_search_indexes") == 1
        assert total(samples, "legion_search_commits") > 0
        assert total(samples, "legion_search_searcher_reloads") > 0
        assert total(samples, "legion_mr_jobs_running") == 0

    # Scraping needs the cluster token, like every other request.
    url = urlsplit(local_cluster.node("n1")["url"])
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=5)
    connection.request("GET", "/metrics")
    response = connection.getresponse()
    assert response.status == 401
    assert b"legion_" not in response.read()
    with Client([local_cluster.node("n1")["url"]], "not-the-token") as stranger:
        with pytest.raises(Unauthorized):
            stranger.metrics()


@pytest.mark.cluster(nodes=1, replicas=1, metrics_open=True)
def test_metrics_open_serves_loopback_without_the_token_and_nothing_else(local_cluster: LocalCluster):
    url = urlsplit(local_cluster.node("n1")["url"])
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=5)
    connection.request("GET", "/metrics")
    response = connection.getresponse()
    body = response.read().decode()
    assert response.status == 200
    names = {family.name for family in text_string_to_metric_families(body)}
    assert {"legion_http_requests", "legion_partitions_held", "legion_kv_keys"} <= names
    connection.request("GET", "/v1/cluster")
    response = connection.getresponse()
    response.read()
    assert response.status == 401
