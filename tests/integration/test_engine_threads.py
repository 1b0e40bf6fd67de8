"""Which threads call an engine, on a real node: one writer thread applies, worker threads read, at the same time.

So an engine guards what ``apply`` changes and ``read`` looks at (a lock, or
a store with its own isolation such as SQLite's WAL): a read does not wait
for an ``apply`` in progress on the same partition.
"""

from __future__ import annotations

import threading
import time

from tests.conftest import NO_DASK
from tests.integration.test_idempotent_retries import SLOW_AMOUNT, SLOW_APPLY_S, TallyEngine


def test_reads_run_on_worker_threads_while_the_single_writer_thread_applies(legion_cluster):
    cluster = legion_cluster(TallyEngine, nodes=1, partitions=8, replicas=1, options=NO_DASK)
    client = cluster.node_client("n1")
    client.request("POST", "/v1/tally/apples", body=b"1")
    finished: list[float] = []

    def slow_write() -> None:
        with cluster.node_client("n1") as writer:
            writer.request("POST", "/v1/tally/apples", body=SLOW_AMOUNT)
        finished.append(time.monotonic())

    started = time.monotonic()
    writing = threading.Thread(target=slow_write)
    writing.start()
    time.sleep(SLOW_APPLY_S / 4)
    replies = client.request("GET", "/v1/tally/apples", params={"r": 1}).json()["replies"]  # the one replica
    answered = time.monotonic()
    writing.join()
    assert replies == [[1, 1]]  # the read did not wait for the slow apply
    assert answered - started < SLOW_APPLY_S * 0.75 and finished[0] - started >= SLOW_APPLY_S

    threads = client.request("GET", "/v1/tally/_threads", params={"r": 1}).json()["replies"][0]
    assert len(threads["apply"]) == 1  # one writer thread, for every apply
    assert threads["read"] and not set(threads["read"]) & set(threads["apply"])
    assert "MainThread" not in threads["read"] + threads["apply"]  # never on the event loop's thread
    client.close()
