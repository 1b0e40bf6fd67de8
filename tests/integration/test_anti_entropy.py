"""Active anti-entropy on real nodes: replicas made to diverge on purpose converge with no operator command.

Divergence is made the way lost replication messages leave it: operations
applied to one replica alone (``/internal/apply``) — a key only one replica
has, a newer version only one has, a delete only one has. Then, with nobody
calling ``repair``, the background rounds must make ``cluster verify`` clean
within a bounded time, and every replica must serve the newest value from its
own copy.
"""

from __future__ import annotations

import re
import time

import msgpack
import pytest

from engines.kv import KVClient
from engines.search import operations as search_ops
from engines.search.client import SearchClient
from engines.kv.entries import ENGINE_NAME, KIND_DELETE, KIND_PUT, encode_put
from legion.clock import pack
from legion.errors import BadRequest, NotFound
from legion.keyspace import partition_of
from legion.replication import Operation, encode_ops
from tests.conftest import LocalCluster

PARTITIONS = 16
CONVERGENCE_TIMEOUT_S = 30


def apply_on(local_cluster: LocalCluster, node_id: str, ops: list[Operation]) -> None:
    with local_cluster.node_client(node_id) as client:
        client.request("POST", "/internal/apply", body=encode_ops(ops), headers={"Content-Type": "application/msgpack"})


def kv_op(key: str, origin: str, value: bytes | None, offset_ms: int = 0) -> Operation:
    raw = key.encode()
    hlc = pack(int(time.time() * 1000) + offset_ms, 0)
    if value is None:
        return Operation(ENGINE_NAME, partition_of(raw, PARTITIONS), raw, hlc, origin, KIND_DELETE, b"")
    return Operation(ENGINE_NAME, partition_of(raw, PARTITIONS), raw, hlc, origin, KIND_PUT, encode_put(None, value))


@pytest.mark.cluster(nodes=3, partitions=PARTITIONS, replicas=3)
def test_replicas_made_to_differ_converge_without_any_command(fast_anti_entropy: None, local_cluster: LocalCluster):
    with local_cluster.node_client("n1") as client:
        kv = KVClient(client)
        for i in range(60):
            kv.put(f"base:{i}", b"old", w=3)
    # Each replica gets writes the others never see.
    only = {"n1": [f"only-n1:{i}" for i in range(20)], "n2": [f"only-n2:{i}" for i in range(20)], "n3": ["only-n3:0"]}
    for node_id, keys in only.items():
        apply_on(local_cluster, node_id, [kv_op(key, node_id, node_id.encode()) for key in keys])
    apply_on(local_cluster, "n2", [kv_op(f"base:{i}", "n2", b"new") for i in range(10)])  # newer, on n2 alone
    apply_on(local_cluster, "n3", [kv_op(f"base:{i}", "n3", None) for i in range(10, 15)])  # deleted, on n3 alone

    converged_s = wait_until_clean(local_cluster)
    print(f"anti-entropy: verify clean {converged_s:.1f} s after the divergence")

    expected = {key: node_id.encode() for node_id, keys in only.items() for key in keys}
    expected |= {f"base:{i}": b"new" for i in range(10)} | {f"base:{i}": b"old" for i in range(15, 60)}
    for node_id in ("n1", "n2", "n3"):  # N=3 on three nodes: each answers from its own copy
        with local_cluster.node_client(node_id) as client:
            kv = KVClient(client)
            assert {key: kv.get(key, r=1).value for key in expected} == expected
            for i in range(10, 15):
                with pytest.raises(NotFound):
                    kv.get(f"base:{i}", r=1)

    repaired = 0
    statuses = {}
    for node_id in ("n1", "n2", "n3"):
        with local_cluster.node_client(node_id) as client:
            metrics = client.request("GET", "/metrics").body.decode()
            repaired += sum(int(float(n)) for n in re.findall(r'^legion_anti_entropy_keys_repaired_total\{engine="kv"\} (\S+)$', metrics, re.M))
            assert re.search(r"^legion_anti_entropy_rounds_total (\S+)$", metrics, re.M)
            statuses = client.request("GET", "/v1/cluster").json()
    # 41 keys one replica alone had, 10 newer and 5 deleted: each differs between two pairs of replicas at least once.
    assert repaired >= 56, repaired
    shown = {m["id"]: m["attributes"].get("anti-entropy.repaired", "") for m in statuses["members"]}
    assert all(re.match(r"^\d+ keys in \d+ rounds$", text) for text in shown.values()), shown
    assert sum(int(text.split()[0]) for text in shown.values()) >= 1, shown

    # The peer endpoints refuse bad input with a 400 that names what to fix.
    bad = [
        ("/internal/tree", {"engine": "kv", "partition": 0, "level": "roots"}, "'level' must be"),
        ("/internal/tree", {"engine": "kv", "partition": 0, "level": "segments", "buckets": [32]}, "from 0 to 31"),
        ("/internal/tree", {"engine": "kv", "partition": 0, "level": "items", "segments": ["x"]}, "from 0 to 1023"),
        ("/internal/fold-keys", {"engine": "kv", "partition": 0, "keys": "a"}, "list of byte strings"),
        ("/internal/exchange", {"engine": "kv", "partition": 0, "peer": "n1"}, "not another replica"),
        ("/internal/exchange", {"engine": "kv", "partition": 0, "peer": "n9"}, "not another replica"),
    ]
    with local_cluster.node_client("n1") as client:
        for path, body, message in bad:
            with pytest.raises(BadRequest, match=message):
                client.request("POST", path, body=msgpack.packb(body), headers={"Content-Type": "application/msgpack"})


def wait_until_clean(local_cluster: LocalCluster) -> float:
    """Seconds until ``cluster verify`` is clean, polled through n1 (fails after CONVERGENCE_TIMEOUT_S)."""
    with local_cluster.node_client("n1") as client:
        started = time.monotonic()
        while not (report := client.request("GET", "/v1/cluster/verify").json())["clean"]:
            assert time.monotonic() - started < CONVERGENCE_TIMEOUT_S, report
            time.sleep(0.5)
        return time.monotonic() - started


@pytest.mark.cluster(nodes=3, partitions=PARTITIONS, replicas=3)
def test_search_replicas_made_to_differ_converge_without_any_command(fast_anti_entropy: None, local_cluster: LocalCluster):
    with local_cluster.node_client("n1") as client:
        search = SearchClient(client)
        incarnation = search.create("notes", {"fields": {"id": {"type": "keyword"}, "t": {"type": "text"}}})["incarnation"]
        for i in range(30):
            search.put("notes", {"id": f"d{i}", "t": "common words"}, refresh=True)
    wait_until_clean(local_cluster)

    def doc_op(doc_id: str, origin: str, text: str | None) -> Operation:
        key = doc_id.encode()
        hlc = pack(int(time.time() * 1000), 0)
        if text is None:
            kind, body = search_ops.KIND_DELETE, search_ops.delete_body("notes", incarnation)
        else:
            source = search_ops.encode_source({"id": doc_id, "t": text})
            kind, body = search_ops.KIND_INDEX, search_ops.index_body("notes", incarnation, source)
        return Operation(search_ops.ENGINE_NAME, partition_of(key, PARTITIONS), key, hlc, origin, kind, body)

    apply_on(local_cluster, "n3", [doc_op(f"only-n3-{i}", "n3", "rare words") for i in range(5)])
    apply_on(local_cluster, "n2", [doc_op("d0", "n2", None), doc_op("d1", "n2", "rewritten rare")])
    converged_s = wait_until_clean(local_cluster)
    print(f"anti-entropy (search): verify clean {converged_s:.1f} s after the divergence")

    for node_id in ("n1", "n2", "n3"):
        with local_cluster.node_client(node_id) as client:
            search = SearchClient(client)
            search.refresh("notes")
            found = sorted(hit["id"] for hit in search.search("notes", "rare", limit=50, snippets=False)["hits"])
            assert found == ["d1", *(f"only-n3-{i}" for i in range(5))], (node_id, found)
            assert search.search("notes", "*", limit=1)["total"] == 34  # 30 - d0 + 5 (d1 rewritten)
