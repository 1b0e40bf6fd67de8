"""A third-party package adds an engine through the ``legion.engines`` entry point alone.

The test writes a tiny installed-looking distribution (a package plus a
``.dist-info`` with ``entry_points.txt``) into a temporary directory, puts it
on the nodes' ``PYTHONPATH`` and starts a real cluster: the nodes find the
engine, serve its routes, replicate its operations (one by one and in
batches through ``write_many``), answer coverage requests (it keeps the
default ``coverage_many``: one ``coverage`` per partition, in parallel threads;
``prefer`` sends them to another node, and the client's request id follows)
and hand its partitions to a new node — with no change to ``legion/``.

The engine defers durability to ``flush`` (``durable_on_apply = False``), so the
same cluster also shows the translog model: a write acknowledged before any
flush survives ``kill -9`` of every replica, replayed from the operation log.

It also runs services the way the map/reduce engine runs Dask: a local
service (a "beacon" that ``local_cluster.up`` starts beside the nodes, and
whose option reaches every node), a sidecar process per node (which dies with
its node, even on ``kill -9``), member attributes published through gossip
(visible on every node, published again by a restarted node), and a route
that answers with ``Cluster.placement()``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from legion.client import Client
from legion.clock import pack
from legion.errors import NotFound, Unavailable
from legion.keyspace import partition_of
from legion.replication import Operation, encode_ops
from legion.runtime import local_cluster
from legion.runtime.local_cluster import processes as local_processes
from legion.testing.cluster import node_metric, read_when_served, wait_until_listenable
from tests.conftest import NO_DASK
from tests.legion.runtime.test_sidecar import is_alive, wait_until

ENGINE_SOURCE = '''
"""A counter per key: every 'add' operation is a uniquely named increment, so applying is
idempotent (a set of increment ids) and commutative (the sum does not depend on order).

Durability is deferred (durable_on_apply = False), as a search index's would be: applied
increments live in memory, visible at once, and reach the partition's counter.json only
in flush. What is not flushed yet is in the core's operation log, which the core replays
into apply after a crash. After flush the core deletes that log, so in the node's "fsync"
durability mode flush fsyncs the file and its directory: the counter must survive power
loss as the log would have."""
import json
import os
import sys
import threading
from pathlib import Path

from legion.dashboard import DashboardPanel, PanelLookup
from legion.engine import Engine, HttpResponse, LocalService, PartitionSnapshot, Route, WriteItem, WriteResult, current_request_id
from legion.errors import BadRequest, NotFound
from legion.replication import Operation
from legion.runtime.sidecar import Sidecar

FILE_NAME = "counter.json"
SLEEP = "import time; time.sleep(600)"
# The beacon: says it is ready by writing its file, then stays up until stopped.
BEACON = "import pathlib, sys, time; pathlib.Path(sys.argv[1]).write_text('lit'); time.sleep(600)"


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


async def placement(req, cluster):
    view = cluster.placement()
    return HttpResponse.json({
        "partitions": view.partitions,
        "preference": [list(nodes) for nodes in view.preference],
        "live": sorted(view.live),
        "attributes": view.attributes,
        "urls": view.urls,
        "epoch": view.epoch,
        "live_replicas": [list(view.live_replicas(p)) for p in range(view.partitions)],
    })


class CounterEngine(Engine):
    name = "counter"
    durable_on_apply = False

    def __init__(self, root):
        super().__init__(root)
        self.files = {}
        self.increments = {}  # partition -> {operation id: (key, amount, hlc, origin)}: insert-once
        self.lock = threading.Lock()  # read and fold run on worker threads while apply runs

    def open(self, partition, directory):
        path = Path(directory) / FILE_NAME
        saved = json.loads(path.read_text()) if path.exists() else []
        with self.lock:
            self.files[partition] = path
            self.increments[partition] = {
                inc: (bytes.fromhex(key), amount, hlc, origin) for inc, key, amount, hlc, origin in saved
            }

    def close(self, partition):
        with self.lock:
            del self.files[partition], self.increments[partition]

    def validate(self, op):
        if op.kind != "add":
            raise BadRequest("counter only knows 'add'")

    def apply(self, partition, ops):
        with self.lock:
            for op in ops:
                self.increments[partition][op.id] = (op.key, json.loads(op.body)[0], op.hlc, op.origin)

    def flush(self, partitions):
        for partition in partitions:
            with self.lock:
                rows = [[inc, key.hex(), amount, hlc, origin] for inc, (key, amount, hlc, origin) in self.increments[partition].items()]
                path = self.files[partition]
            temporary = path.with_suffix(".tmp")
            with open(temporary, "w") as file:
                file.write(json.dumps(rows))
                if self.durability == "fsync":
                    file.flush()
                    os.fsync(file.fileno())
            os.replace(temporary, path)  # a crash leaves the old file or the new one
            if self.durability == "fsync":  # the rename itself is durable once the directory is
                descriptor = os.open(path.parent, os.O_RDONLY)
                try:
                    os.fsync(descriptor)
                finally:
                    os.close(descriptor)

    def read(self, partition, query):
        with self.lock:
            amounts = [amount for key, amount, _, _ in self.increments[partition].values() if key == query]
        return [sum(amounts), len(amounts)] if amounts else None

    def coverage(self, partition, query):
        totals = {}
        with self.lock:
            for key, amount, _, _ in self.increments[partition].values():
                totals[key] = totals.get(key, 0) + amount
        # The request id this node sees: the client's, if it travelled the hop.
        return [current_request_id(), [[key, total] for key, total in sorted(totals.items())]]

    def fold(self, partition):
        with self.lock:
            increments = list(self.increments[partition].values())
        for key, amount, hlc, origin in increments:
            yield Operation("counter", partition, key, hlc, origin, "add", json.dumps([amount]).encode())

    def snapshot(self, partition, into):
        # Right after a flush: counter.json holds the partition. A later flush replaces the file
        # (a new inode), so this hard link stays the snapshot's own, unchanged.
        path = self.files[partition]
        if not path.exists():
            return PartitionSnapshot(files=[])
        os.link(path, into / FILE_NAME)
        return PartitionSnapshot(files=[FILE_NAME])

    def install(self, partition, directory, snapshot):
        # Merged, not replaced: the partition may hold increments already (writes during the pull).
        rows = json.loads((directory / FILE_NAME).read_text()) if snapshot.files else []
        with self.lock:
            for inc, key, amount, hlc, origin in rows:
                self.increments[partition].setdefault(inc, (bytes.fromhex(key), amount, hlc, origin))

    def metrics(self):
        with self.lock:
            return {"increments": sum(len(held) for held in self.increments.values())}

    def dashboard_panel(self):
        return DashboardPanel(
            title="Counters",
            figures={"increments": "increments held"},
            lookups=[PanelLookup(label="Total of a key", path="/v1/counter/{key}", fields=["key"])],
        )

    def start(self, node):
        self.sidecar = Sidecar("sleeper", [sys.executable, "-c", SLEEP], log_path=node.root / "sleeper.log")
        self.sidecar.start()
        node.publish({
            "counter.sidecar": str(self.sidecar.pid),
            "counter.beacon": node.options.get("counter.beacon", "unset"),
            "counter.durability": self.durability,  # the node's mode, which the core set before any open
        })

    def stop(self):
        if getattr(self, "sidecar", None) is not None:
            self.sidecar.stop()

    @classmethod
    def local_services(cls, directory, options):
        if "counter.beacon" in options:
            return []  # the user named a beacon already: start none
        ready = directory / "beacon.ready"
        return [LocalService(
            "beacon",
            [sys.executable, "-c", BEACON, str(ready)],
            ready_file=ready,
            options_to_nodes={"counter.beacon": "lit by the local service"},
        )]

    def routes(self):
        return [
            Route("GET", "/v1/counter/_/placement", placement),
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
    # This process finds it too: local_cluster.up asks every engine for its local services.
    monkeypatch.syspath_prepend(str(site))
    return site


def test_an_engine_from_another_package_is_served_replicated_and_handed_off(plugin_path: Path, tmp_path: Path):
    directory = tmp_path / "cluster"
    local_cluster.up(directory, nodes=3, partitions=16, replicas=3, base_port=0, options=NO_DASK)
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
            # Its figures (Engine.metrics) reach /metrics and the dashboard; its panel is declared there.
            dashboard = _dashboard_when_settled(client)
            assert dashboard["panels"]["counter"]["lookups"][0]["path"] == "/v1/counter/{key}"
            assert "legion_counter_increments 9.0" in client.request("GET", "/metrics").body.decode()
        with Client([local_cluster.load(directory)["nodes"][0]["url"]], token) as n1:
            # Asked of n1 but answered by n2 (prefer): the client's request id reaches the engine on n2.
            traced = n1.request("GET", "/v1/counter", params={"via": "n2"}, headers={"X-Request-Id": "trace-me"})
            assert traced.json()["served_by"] == ["n2"] and traced.json()["request_ids"] == ["trace-me"]
            assert traced.json()["counters"]["apples"] == 10
            # An increment that reached n1 alone: anti-entropy, through the contract's defaults (derived
            # from fold), brings it to the other replicas with no command.
            key = b"figs"
            op = Operation("counter", partition_of(key, 16), key, pack(int(time.time() * 1000), 0), "n1", "add", b"[5]")
            n1.request("POST", "/internal/apply", body=encode_ops([op]), headers={"Content-Type": "application/msgpack"})
            deadline = time.monotonic() + 30
            while not (report := n1.request("GET", "/v1/cluster/verify").json())["clean"]:
                assert time.monotonic() < deadline, report
                time.sleep(0.5)
            assert n1.request("GET", "/v1/counter/figs").json() == {"total": 5, "increments": 1}  # r=3
        local_cluster.add_node(directory)
        assert node_metric(directory, "n4", "legion_handoff_snapshots_total") > 0  # counter.json moved as a file
        doc = local_cluster.load(directory)
        newcomer = next(n for n in doc["nodes"] if n["id"] == "n4")
        with Client([newcomer["url"]], token) as c4:
            assert c4.request("GET", "/v1/counter/pears").json() == {"total": 6, "increments": 3}
            # r=3: every replica holds the batch's increments too, the newcomer's copy included.
            assert c4.request("GET", "/v1/counter/quinces").json() == {"total": 2, "increments": 1}
            assert c4.request("GET", "/v1/counter").json()["counters"]["apples"] == 10
    finally:
        local_cluster.down(directory)


FIGURES_TIMEOUT_S = 15.0


def _dashboard_when_settled(client: Client) -> dict:
    """GET /v1/dashboard until every node reports the 9 increments (the third replica may lag the acks)."""
    deadline = time.monotonic() + FIGURES_TIMEOUT_S
    while True:
        dashboard = client.request("GET", "/v1/dashboard").json()
        figures = [(dashboard["nodes"].get(n) or {}).get("engines", {}).get("counter") for n in ("n1", "n2", "n3")]
        if figures == [{"increments": 9.0}] * 3 or time.monotonic() > deadline:
            assert figures == [{"increments": 9.0}] * 3, figures
            return dashboard
        time.sleep(0.2)


def test_a_write_acknowledged_before_any_flush_survives_kill_9_of_every_replica(plugin_path: Path, tmp_path: Path):
    directory = tmp_path / "cluster"
    local_cluster.up(directory, nodes=3, partitions=16, replicas=3, base_port=0, options=NO_DASK)
    try:
        nodes = local_cluster.load(directory)["nodes"]
        with Client.connect(directory) as client:
            # Each acknowledged by W=2 replicas. The second group commit on a replica is also where
            # a checkpoint that moved on apply (not on flush) would have been recorded past the first.
            client.request("POST", "/v1/counter/survivor", body=b"5")
            client.request("POST", "/v1/counter/survivor", body=b"7")
        # At once, well within the 1 s flush interval: every process dies with the increment unflushed.
        for node in nodes:
            os.kill(node["pid"], signal.SIGKILL)
        for node in nodes:
            local_cluster.stop_node(directory, node["id"], kill=True)  # reaps it and records it stopped
        flushed = [path.read_text() for path in directory.glob("nodes/*/engines/counter/*/counter.json")]
        assert not any(b"survivor".hex() in text for text in flushed), "flushed before the kill: the test proves nothing"
        for node in nodes:
            wait_until_listenable(node["url"])  # the killed sockets may linger a moment in closing states
            local_cluster.start_node(directory, node["id"])
        with Client.connect(directory) as client:
            assert read_when_served(client, "GET", "/v1/counter/survivor").json() == {"total": 12, "increments": 2}
    finally:
        local_cluster.down(directory)


ATTRIBUTES_TIMEOUT_S = 15.0
Attributes = dict[str, dict[str, str]]


def attributes_everywhere(
    nodes: Sequence[dict[str, Any]], token: str, wanted: Callable[[Attributes], bool]
) -> Attributes:
    """Poll every node's ``/v1/cluster`` until all show the same members' attributes, and ``wanted`` holds."""
    deadline = time.monotonic() + ATTRIBUTES_TIMEOUT_S
    while True:
        seen: list[Attributes | None] = []
        for node in nodes:
            try:
                with Client([node["url"]], token, timeout_s=2) as client:
                    seen.append({m["id"]: m["attributes"] for m in client.status()["members"]})
            except Unavailable:
                seen.append(None)
        first = seen[0]
        if first is not None and wanted(first) and all(other == first for other in seen):
            return first
        if time.monotonic() > deadline:
            raise AssertionError(f"nodes did not agree on the wanted attributes in {ATTRIBUTES_TIMEOUT_S:g}s: {seen}")
        time.sleep(0.2)


def test_services_attributes_sidecars_and_placement_beside_real_nodes(plugin_path: Path, tmp_path: Path):
    directory = tmp_path / "cluster"
    # async, not the default: the engine learns the node's mode (not the class default).
    local_cluster.up(directory, nodes=3, partitions=16, replicas=3, base_port=0, durability="async", options=NO_DASK)
    token = (directory / "token").read_text().strip()
    document = local_cluster.load(directory)
    nodes = document["nodes"]
    [beacon] = [service for service in document["services"] if service["engine"] == "counter"]  # other engines may add theirs
    sidecars: dict[str, int] = {}
    try:
        # The local service runs, and the option it yields reached every node's engine.
        assert beacon["id"] == "counter/beacon" and local_processes.is_running(beacon)
        assert document["options"]["counter.beacon"] == "lit by the local service"
        seen = attributes_everywhere(
            nodes,
            token,
            lambda found: set(found) == {"n1", "n2", "n3"}
            and all(a.get("counter.beacon") == "lit by the local service" and a.get("counter.sidecar") for a in found.values()),
        )
        assert {found["counter.durability"] for found in seen.values()} == {"async"}
        sidecars = {node_id: int(found["counter.sidecar"]) for node_id, found in seen.items()}
        for node in nodes:
            # Each node's sidecar runs in that node's process group (the node leads its own).
            assert is_alive(sidecars[node["id"]]) and os.getpgid(sidecars[node["id"]]) == node["pid"]

        with Client([nodes[0]["url"]], token) as n1:
            view = n1.request("GET", "/v1/counter/_/placement").json()
            status = n1.status()
        assert (view["partitions"], view["epoch"]) == (16, status["epoch"])
        assert view["preference"] == status["placement"] == view["live_replicas"]
        assert view["live"] == ["n1", "n2", "n3"]
        assert view["attributes"] == seen
        assert view["urls"] == {node["id"]: node["url"] for node in nodes}

        # kill -9 of n2's process alone, not its group: only the kernel can take its sidecar down.
        n2 = nodes[1]
        os.kill(n2["pid"], signal.SIGKILL)
        wait_until(lambda: not is_alive(sidecars["n2"]), "n2's sidecar to die with n2")
        local_cluster.stop_node(directory, "n2", kill=True)  # reaps it and records it stopped
        wait_until_listenable(n2["url"])
        local_cluster.start_node(directory, "n2")
        # Restarted, n2 publishes again (its new sidecar), and every node comes to see it.
        seen = attributes_everywhere(
            nodes, token, lambda found: found["n2"].get("counter.sidecar") not in (None, str(sidecars["n2"]))
        )
        sidecars["n2 restarted"] = int(seen["n2"]["counter.sidecar"])
        assert is_alive(sidecars["n2 restarted"])
    finally:
        local_cluster.down(directory)
    assert not local_processes.is_running(beacon)
    wait_until(lambda: not any(is_alive(pid) for pid in sidecars.values()), "every sidecar to stop with its node")


def test_an_option_given_to_up_replaces_the_local_service_and_a_restarted_node_keeps_it(
    plugin_path: Path, tmp_path: Path
):
    directory = tmp_path / "cluster"
    local_cluster.up(directory, nodes=1, partitions=8, replicas=1, base_port=0, options={"counter.beacon": "the user's"})
    try:
        document = local_cluster.load(directory)
        assert [s for s in document["services"] if s["engine"] == "counter"] == []
        assert document["options"]["counter.beacon"] == "the user's"
        local_cluster.stop_node(directory, "n1")
        local_cluster.start_node(directory, "n1")
        token = (directory / "token").read_text().strip()
        attributes_everywhere(document["nodes"], token, lambda found: found["n1"].get("counter.beacon") == "the user's")
        # The CLI, as a user runs it: the status JSON carries the attributes, the table shows them.
        environment = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}
        status = subprocess.run(
            [sys.executable, "-m", "cli", "cluster", "status", "--json", "--dir", str(directory)],
            capture_output=True, text=True, timeout=60, env=environment, check=True,
        )  # fmt: skip
        assert json.loads(status.stdout)["members"][0]["attributes"]["counter.beacon"] == "the user's"
        table = subprocess.run(
            [sys.executable, "-m", "cli", "cluster", "status", "--dir", str(directory)],
            capture_output=True, text=True, timeout=60, env=environment, check=True,
        )  # fmt: skip
        assert "attributes" in table.stdout and "counter.beacon=the user's" in table.stdout
    finally:
        local_cluster.down(directory)
