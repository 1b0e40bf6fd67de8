"""A retried write with the same idempotency key is applied once, on real node processes.

The engine is a tally — not last-writer-wins: every operation id is one
increment, kept once (insert-once), so a write applied twice under two ids
counts twice. It is defined here and served through the ``legion_cluster``
fixture, which registers it for the node processes without installing it.

The handler can be told to stall on one node *after* its write met its
quorum: the client's request then times out although the write is stored,
and the client retries on the next node — the failure every network has.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from legion.client import Client
from legion.engine import Engine, HttpRequest, HttpResponse, Route, WriteItem, WriteResult
from legion.errors import BadRequest, Unavailable
from legion.replication import Operation
from legion.testing.cluster import LocalCluster
from tests.conftest import NO_DASK

STALL_S = 4.0
CLIENT_TIMEOUT_S = 1.5
SLOW_AMOUNT = b"999"  # an increment by this much takes SLOW_APPLY_S to apply
SLOW_APPLY_S = 2.0
SETTLE_TIMEOUT_S = 10.0


async def add(req: HttpRequest, cluster: Any) -> HttpResponse:
    result = await cluster.write("tally", req.path_params["key"].encode(), "add", req.body or b"1")
    if req.query.get("stall_on") == cluster.node_id:
        await asyncio.sleep(STALL_S)  # stored, but the client gives up first
    return HttpResponse.json({"hlc": result.hlc})


async def add_many(req: HttpRequest, cluster: Any) -> HttpResponse:
    """Body [[key, amount, idempotency key or null], ...]: one write_many."""
    rows = req.json()
    items = [WriteItem(key.encode(), "add", str(amount).encode(), idempotency_key=named) for key, amount, named in rows]
    results = await cluster.write_many("tally", items)
    return HttpResponse.json([r.acks if isinstance(r, WriteResult) else r.message for r in results])


async def total(req: HttpRequest, cluster: Any) -> HttpResponse:
    key = req.path_params["key"].encode()
    # Every replica must agree: r is all of them (3 unless the test asks for fewer).
    replies = await cluster.read("tally", key, key, r=req.int_param("r", 3))
    return HttpResponse.json({"replies": replies})


async def everything(req: HttpRequest, cluster: Any) -> HttpResponse:
    """Every key's total (a coverage request), and which nodes answered (?via=NODE: ask that node first)."""
    via = req.query.get("via")
    result = await cluster.coverage("tally", None, prefer=dict.fromkeys(range(cluster.partitions), via) if via else None)
    totals: dict[str, int] = {}
    for rows in result.by_partition().values():
        for key, amount in rows:
            totals[key] = totals.get(key, 0) + amount
    return HttpResponse.json({"totals": totals, "served_by": sorted(set(result.served_by.values()))})


class TallyEngine(Engine):
    """Increments kept once per operation id, in a JSON file per partition (written on apply)."""

    name = "tally"

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.files: dict[int, Path] = {}
        self.increments: dict[int, dict[str, list[Any]]] = {}
        self.lock = threading.Lock()  # reads run on worker threads while apply runs
        self.threads: dict[str, set[str]] = {"apply": set(), "read": set()}  # which threads called what

    def open(self, partition: int, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "tally.json"
        with self.lock:
            self.files[partition] = path
            self.increments[partition] = json.loads(path.read_text()) if path.exists() else {}

    def close(self, partition: int) -> None:
        with self.lock:
            del self.files[partition], self.increments[partition]

    def validate(self, op: Operation) -> None:
        if op.kind != "add" or not op.body.isdigit():
            raise BadRequest("tally only knows 'add' of a positive integer")

    def apply(self, partition: int, ops: Sequence[Operation]) -> None:
        self.threads["apply"].add(threading.current_thread().name)
        if any(op.body == SLOW_AMOUNT for op in ops):
            time.sleep(SLOW_APPLY_S)  # outside the lock: reads may run meanwhile
        with self.lock:
            for op in ops:
                self.increments[partition].setdefault(op.id, [op.key.hex(), int(op.body), op.hlc, op.origin])
            self.files[partition].write_text(json.dumps(self.increments[partition]))

    def read(self, partition: int, query: Any) -> Any:
        if query == b"_threads":
            return {name: sorted(seen) for name, seen in self.threads.items()}
        self.threads["read"].add(threading.current_thread().name)
        with self.lock:
            amounts = [amount for key, amount, _, _ in self.increments[partition].values() if key == query.hex()]
        return [sum(amounts), len(amounts)]

    def coverage(self, partition: int, query: Any) -> list[list[Any]]:
        with self.lock:
            rows = list(self.increments[partition].values())
        return [[bytes.fromhex(key).decode(), amount] for key, amount, _, _ in rows]

    def fold(self, partition: int) -> Iterator[Operation]:
        with self.lock:
            rows = list(self.increments[partition].values())
        for key, amount, hlc, origin in rows:
            yield Operation(self.name, partition, bytes.fromhex(key), hlc, origin, "add", str(amount).encode())

    def routes(self) -> Sequence[Route]:
        return [
            Route("POST", "/v1/tally/{key}", add),
            Route("GET", "/v1/tally/{key}", total),
            Route("POST", "/v1/tally", add_many),
            Route("GET", "/v1/tally", everything),
        ]


def stalled_then_retried(cluster: LocalCluster, key: str) -> str:
    """POST to n1, which stores the write and stalls; the client times out and retries on n2, which answers."""
    urls = [cluster.node("n1")["url"], cluster.node("n2")["url"]]
    with Client(urls, cluster.token, timeout_s=CLIENT_TIMEOUT_S) as client:
        return client.request("POST", f"/v1/tally/{key}", body=b"1", params={"stall_on": "n1"}).url


def replies(cluster: LocalCluster, key: str, expected: list[list[int]]) -> list[list[int]]:
    """Every replica's [total, increments] once they show ``expected`` (the last replica logs in the background)."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while True:
        seen = cluster.client.request("GET", f"/v1/tally/{key}").json()["replies"]
        if seen == expected or time.monotonic() > deadline:
            return seen
        time.sleep(0.1)


def test_a_write_retried_after_a_timeout_is_applied_once_and_without_the_key_twice(legion_cluster):
    cluster = legion_cluster(TallyEngine, nodes=3, partitions=8, replicas=3, options=NO_DASK)
    # legion.Client names the write once and sends the same key on the retry: one increment on every replica.
    assert stalled_then_retried(cluster, "apples") == cluster.node("n2")["url"]
    assert replies(cluster, "apples", [[1, 1]] * 3) == [[1, 1]] * 3
    # Each partition's files live in DATA/engines/<engine>/<partition, 4 digits>/ on each node.
    files = list(cluster.directory.glob("nodes/*/engines/tally/[0-9][0-9][0-9][0-9]/tally.json"))
    assert {path.parts[-5] for path in files} == {"n1", "n2", "n3"}
    assert all(0 <= int(path.parent.name) < 8 for path in files)
    # The control: two attempts under two keys (what a client without one does) are two writes.
    with Client([cluster.node("n1")["url"]], cluster.token, timeout_s=CLIENT_TIMEOUT_S) as n1:
        try:
            n1.request("POST", "/v1/tally/pears", body=b"1", params={"stall_on": "n1"}, headers={"Idempotency-Key": "first-try"})
        except Unavailable:
            pass  # timed out, as above: the write was stored anyway
    cluster.node_client("n2").request("POST", "/v1/tally/pears", body=b"1", headers={"Idempotency-Key": "second-try"})
    assert replies(cluster, "pears", [[2, 2]] * 3) == [[2, 2]] * 3


def test_write_many_items_named_by_a_key_are_applied_once_however_often_they_are_sent(legion_cluster):
    cluster = legion_cluster(TallyEngine, nodes=3, partitions=8, replicas=3, options=NO_DASK)
    batch = [["plums", 5, "plum-batch-1"], ["figs", 2, "fig-batch-1"], ["figs", 3, None]]
    for node_id in ("n1", "n2", "n3"):  # the same batch through every node
        with cluster.node_client(node_id) as client:
            assert all(acks >= 2 for acks in client.request("POST", "/v1/tally", json=batch).json())
    assert replies(cluster, "plums", [[5, 1]] * 3) == [[5, 1]] * 3
    figs = [[2 + 3 * 3, 4]] * 3  # the unnamed item counted once per send
    assert replies(cluster, "figs", figs) == figs
    # A malformed key fails its item alone, with a message that says what a key is.
    with cluster.node_client("n1") as client:
        answer = client.request("POST", "/v1/tally", json=[["figs", 1, "has space"], ["figs", 1, "ok"]]).json()
    assert "printable ASCII" in answer[0] and answer[1] >= 2
    try:
        cluster.client.request("POST", "/v1/tally/figs", body=b"1", headers={"Idempotency-Key": "two words"})
        raise AssertionError("a malformed Idempotency-Key header was accepted")
    except BadRequest as exc:
        assert "printable ASCII" in exc.message
