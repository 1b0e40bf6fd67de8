"""`legion cluster verify` and `repair` on real nodes: clean when replicas agree, a partition whose replica
differs is named and then repaired, and a dead node is reported."""

from __future__ import annotations

import json
import time

import pytest

from engines.kv import KVClient
from engines.kv.entries import ENGINE_NAME, KIND_PUT, encode_put
from legion.clock import pack
from legion.keyspace import partition_of
from legion.replication import Operation, encode_ops
from legion.runtime import local_cluster as cluster_processes
from tests.conftest import LocalCluster


def test_verify_names_the_partition_one_replica_holds_differently_and_repair_merges_it(
    no_background_anti_entropy: None, local_cluster: LocalCluster, legion_cli
):
    directory = str(local_cluster.directory)
    with local_cluster.node_client("n1") as client:
        kv = KVClient(client)
        for i in range(200):
            kv.put(f"v:{i}", b"x", w=3)  # every replica has logged and applied it
        report = client.request("GET", "/v1/cluster/verify").json()
    assert report["clean"] and report["checked"] == 64 * 3, report  # 64 partitions, engines kv, mr, search
    result = legion_cli("cluster", "verify", "--cluster", directory)
    assert result.returncode == 0 and "replicas agree" in result.stdout, result.stdout + result.stderr

    # One write that reached n3 alone (as a lost replication message would leave things, in reverse).
    key = b"only-on-n3"
    partition = partition_of(key, 64)
    op = Operation(ENGINE_NAME, partition, key, pack(int(time.time() * 1000), 0), "n3", KIND_PUT, encode_put(None, b"y"))
    with local_cluster.node_client("n3") as client:
        client.request("POST", "/internal/apply", body=encode_ops([op]), headers={"Content-Type": "application/msgpack"})
    result = legion_cli("cluster", "verify", "--cluster", directory, "--json")
    assert result.returncode == 1, result.stdout + result.stderr
    report = json.loads(result.stdout)
    [entry] = report["differing"]
    assert (entry["engine"], entry["partition"]) == ("kv", partition)
    counts = {node: summary["count"] for node, summary in entry["replicas"].items()}
    assert counts["n3"] == counts["n1"] + 1 == counts["n2"] + 1
    table = legion_cli("cluster", "verify", "--cluster", directory).stdout
    assert "1 differ" in table and "kv" in table and str(partition) in table

    # Repair: anti-entropy exchanges between the partition's replicas ship the one differing key; verify is clean again.
    repaired = json.loads(assert_repair(legion_cli, directory))
    assert repaired["repaired"] == [{"engine": "kv", "partition": partition}] and repaired["after"]["clean"]
    assert repaired["keys"] == 2, repaired  # n1-n3 and n2-n3 each found the key; n1-n2 then agreed
    for node_id in ("n1", "n2"):
        with local_cluster.node_client(node_id) as client:
            assert KVClient(client).get(key.decode(), r=1).value == b"y"  # from its own copy
    assert legion_cli("cluster", "verify", "--cluster", directory).returncode == 0

    cluster_processes.stop_node(local_cluster.directory, "n2", kill=True)
    with local_cluster.node_client("n1") as client:
        deadline = time.monotonic() + 15
        while "n2" not in (report := client.request("GET", "/v1/cluster/verify").json())["unreachable"]:
            assert time.monotonic() < deadline, report
            time.sleep(0.2)
    assert not report["clean"] and report["unreachable"]["n2"]


def assert_repair(legion_cli, directory: str) -> str:
    result = legion_cli("cluster", "repair", "--cluster", directory, "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.mark.cluster(nodes=4, partitions=16, replicas=3)
def test_removing_a_dead_node_re_replicates_its_partitions_from_the_survivors(local_cluster: LocalCluster):
    keys = [f"dead:{i}" for i in range(200)]
    with local_cluster.node_client("n1") as client:
        kv = KVClient(client)
        for key in keys:
            kv.put(key, key.encode(), w=3)
    cluster_processes.stop_node(local_cluster.directory, "n4", kill=True)
    final = cluster_processes.remove_node(local_cluster.directory, "n4", timeout_s=120)
    assert {m["id"]: m["status"] for m in final["members"]}["n4"] == "removed"
    with local_cluster.node_client("n1") as client:
        report = client.request("GET", "/v1/cluster/verify").json()
    assert report["clean"] and report["checked"] == 16 * 3, report  # three full replicas again, all agreeing
    for node_id in ("n1", "n2", "n3"):  # N=3 on three nodes: every survivor holds every key itself
        with local_cluster.node_client(node_id) as client:
            kv = KVClient(client)
            assert all(kv.get(key, r=1).value == key.encode() for key in keys)
