"""A replica that cannot write stops serving what it missed, says so, and catches up by itself.

Real node processes on loopback. The fault is real too: the node process's
file-size limit (RLIMIT_FSIZE, set from outside with ``prlimit``) is lowered
to one byte, so every write it makes to its data directory fails as on a
full disk (EFBIG instead of ENOSPC; Python ignores SIGXFSZ), and raised back
to let it write again.
"""

from __future__ import annotations

import resource

from engines.kv import KVClient
from legion.errors import NotFound
from legion.runtime import local_cluster as cluster_processes
from tests.conftest import LocalCluster

KEYS = [f"disk:{i:04d}" for i in range(500)]


def value_of(key: str) -> bytes:
    return f"value of {key}".encode()


def missing_through(client, keys: list[str], **kw) -> list[str]:
    kv, missing = KVClient(client), []
    for key in keys:
        try:
            assert kv.get(key, **kw).value == value_of(key)
        except NotFound:
            missing.append(key)
    return missing


def resyncing(client, node_id: str) -> str:
    member = next(m for m in client.status()["members"] if m["id"] == node_id)
    return (member.get("attributes") or {}).get("legion.resyncing", "")


def test_a_replica_that_cannot_write_forwards_reads_shows_it_and_catches_up(local_cluster: LocalCluster):
    pid = local_cluster.node("n3")["pid"]
    _, hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (1, hard))  # n3's disk is "full"
    try:
        with local_cluster.node_client("n1") as c1:
            kv = KVClient(c1)
            for key in KEYS:
                kv.put(key, value_of(key), w=2)  # n1 and n2 acknowledge; n3 cannot log
        with local_cluster.node_client("n3") as c3:
            # r=1 through the full node: it must not answer from its stale copy.
            assert missing_through(c3, KEYS) == []
            c3.wait_for(lambda s: bool(resyncing(c3, "n3")), timeout_s=10, interval_s=0.1)
    finally:
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (hard, hard))  # space is back

    with local_cluster.node_client("n1") as c1:
        c1.wait_for(lambda s: not resyncing(c1, "n3"), timeout_s=60, interval_s=0.2)
    # Caught up by itself: with the other two gone, n3 alone answers every acknowledged key.
    for node_id in ("n1", "n2"):
        cluster_processes.stop_node(local_cluster.directory, node_id, kill=True)
    with local_cluster.node_client("n3") as c3:
        assert missing_through(c3, KEYS, r=1) == []
