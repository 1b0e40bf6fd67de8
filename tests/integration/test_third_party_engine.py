"""A third-party package adds an engine through the ``legion.engines`` entry point alone.

The test writes a tiny installed-looking distribution (a package plus a
``.dist-info`` with ``entry_points.txt``) into a temporary directory, puts it
on the nodes' ``PYTHONPATH`` and starts a real cluster: the nodes find the
engine, serve its routes, replicate its operations (one by one and in
batches through ``write_many``), answer coverage requests (it keeps the
default ``coverage_many``: one ``coverage`` per partition, in parallel threads;
``prefer`` sends them to another node, and the client's request id follows)
and hand its partitions to a new node — with no change to ``legion/``.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from legion.client import Client
from legion.errors import NotFound
from legion.runtime import local_cluster

ENGINE_SOURCE = '''
"""A counter per key: every 'add' operation is a uniquely named increment, so applying is
idempotent (a set of increment ids) and commutative (the sum does not depend on order)."""
import json
import sqlite3
from pathlib import Path

from legion.engine import Engine, HttpResponse, Route, WriteItem, WriteResult, current_request_id
from legion.errors import BadRequest, NotFound
from legion.replication import Operation


async def add(req, cluster):
    try:
        amount = int(req.body or b"1")
    except ValueError:
        raise BadRequest("body must be an integer") from None
    key = req.path_params["key"].encode()
    result = await cluster.write("counter", key, "add", json.dumps([amount]).encode())
    return HttpResponse.json({"acks": result.acks})


async def total(req, cluster):
    key = req.path_params["key"].encode()
    replies = await cluster.read("counter", key, key, r=3)
    best = max(replies, key=lambda reply: (reply or [0, 0])[1])
    if best is None:
        raise NotFound("no such counter")
    return HttpResponse.json({"total": best[0], "increments": best[1]})


async def add_many(req, cluster):
    """Body {"key": amount, ...}: one batch, one result per key."""
    amounts = req.json()
    if not isinstance(amounts, dict) or not all(type(a) is int for a in amounts.values()):
        raise BadRequest("body must be an object of integer amounts")
    keys = sorted(amounts)
    items = [WriteItem(key.encode(), "add", json.dumps([amounts[key]]).encode()) for key in keys]
    results = await cluster.write_many("counter", items, refresh=req.query.get("refresh") == "1")
    return HttpResponse.json(
        {key: r.acks if isinstance(r, WriteResult) else r.message for key, r in zip(keys, results)}
    )


async def everything(req, cluster):
    """Every counter: a coverage request, one reply per partition (?via=NODE: ask that node for all)."""
    via = req.query.get("via")
    prefer = dict.fromkeys(range(cluster.partitions), via) if via else None
    result = await cluster.coverage("counter", None, prefer=prefer)
    totals, traced = {}, set()
    for request_id, rows in result.by_partition().values():
        traced.add(request_id)
        totals.update((key.decode(), total) for key, total in rows)
    return HttpResponse.json({
        "counters": dict(sorted(totals.items())),
        "partitions": len(result.served_by),
        "served_by": sorted(set(result.served_by.values())),
        "request_ids": sorted(traced),
    })


class CounterEngine(Engine):
    name = "counter"

    def __init__(self, root):
        super().__init__(root)
        self.dbs = {}

    def open(self, partition, directory):
        db = sqlite3.connect(Path(directory) / "counter.sqlite", check_same_thread=False, isolation_level=None)
        db.execute("CREATE TABLE IF NOT EXISTS inc (key BLOB, id TEXT, amount INTEGER, PRIMARY KEY (key, id))")
        self.dbs[partition] = db

    def close(self, partition):
        self.dbs.pop(partition).close()

    def validate(self, op):
        if op.kind != "add":
            raise BadRequest("counter only knows 'add'")

    def apply(self, partition, ops):
        rows = [(op.key, f"{op.hlc}:{op.origin}", json.loads(op.body)[0]) for op in ops]
        self.dbs[partition].executemany("INSERT OR IGNORE INTO inc VALUES (?, ?, ?)", rows)

    def read(self, partition, query):
        row = self.dbs[partition].execute(
            "SELECT sum(amount), count(*) FROM inc WHERE key = ?", (query,)).fetchone()
        return None if row[1] == 0 else [row[0], row[1]]

    def coverage(self, partition, query):
        rows = self.dbs[partition].execute("SELECT key, sum(amount) FROM inc GROUP BY key ORDER BY key").fetchall()
        # The request id this node sees: the client's, if it travelled the hop.
        return [current_request_id(), [list(row) for row in rows]]

    def fold(self, partition):
        for key, inc_id, amount in self.dbs[partition].execute("SELECT key, id, amount FROM inc").fetchall():
            hlc, origin = inc_id.split(":", 1)
            yield Operation("counter", partition, bytes(key), int(hlc), origin, "add", json.dumps([amount]).encode())

    def routes(self):
        return [
            Route("POST", "/v1/counter/{key}", add),
            Route("GET", "/v1/counter/{key}", total),
            Route("POST", "/v1/counter", add_many),
            Route("GET", "/v1/counter", everything),
        ]
'''


@pytest.fixture
def plugin_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    site = tmp_path / "site"
    (site / "counter_engine").mkdir(parents=True)
    (site / "counter_engine" / "__init__.py").write_text(ENGINE_SOURCE)
    info = site / "counter_engine-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: counter-engine\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent("""\
        [legion.engines]
        counter = counter_engine:CounterEngine
        """))
    monkeypatch.setenv("PYTHONPATH", str(site))
    return site


def test_an_engine_from_another_package_is_served_replicated_and_handed_off(plugin_path: Path, tmp_path: Path):
    directory = tmp_path / "cluster"
    local_cluster.up(directory, nodes=3, partitions=16, replicas=3, base_port=0)
    token = (directory / "token").read_text().strip()
    try:
        with Client.connect(directory) as client:
            for key in ("apples", "pears"):
                for amount in (1, 2, 3):
                    client.request("POST", f"/v1/counter/{key}", body=str(amount).encode())
            # r=3 in the engine's handler: every replica must hold all three increments.
            assert client.request("GET", "/v1/counter/apples").json() == {"total": 6, "increments": 3}
            with pytest.raises(NotFound):
                client.request("GET", "/v1/counter/plums")
            # refresh: every live replica has the batch before the answer, so any replica may list it.
            batch = client.request(
                "POST", "/v1/counter", json={"apples": 4, "plums": 1, "quinces": 2}, params={"refresh": "1"}
            ).json()
            assert batch == {"apples": 3, "plums": 3, "quinces": 3}
            listing = client.request("GET", "/v1/counter").json()
            assert listing["counters"] == {"apples": 10, "pears": 6, "plums": 1, "quinces": 2}
            assert listing["partitions"] == 16
        with Client([local_cluster.load(directory)["nodes"][0]["url"]], token) as n1:
            # Asked of n1 but answered by n2 (prefer): the client's request id reaches the engine on n2.
            traced = n1.request("GET", "/v1/counter", params={"via": "n2"}, headers={"X-Request-Id": "trace-me"})
            assert traced.json()["served_by"] == ["n2"] and traced.json()["request_ids"] == ["trace-me"]
            assert traced.json()["counters"]["apples"] == 10
        local_cluster.add_node(directory)
        doc = local_cluster.load(directory)
        newcomer = next(n for n in doc["nodes"] if n["id"] == "n4")
        with Client([newcomer["url"]], token) as c4:
            assert c4.request("GET", "/v1/counter/pears").json() == {"total": 6, "increments": 3}
            # r=3: every replica holds the batch's increments too, the newcomer's copy included.
            assert c4.request("GET", "/v1/counter/quinces").json() == {"total": 2, "increments": 1}
            assert c4.request("GET", "/v1/counter").json()["counters"]["apples"] == 10
    finally:
        local_cluster.down(directory)
