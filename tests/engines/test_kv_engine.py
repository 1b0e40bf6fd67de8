"""Tests of engines.kv.engine against real SQLite files, and of its HTTP surface.

The convergence property is the heart of it: any order of the same set of
operations — duplicated, batched differently — must leave the same state,
equal to a model that keeps the newest version per key. The HTTP handlers
and ``KVClient`` are driven through an in-process fake of the coordinator
with three real replicas, so no sockets are involved.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import engines.kv.engine as kv_engine
from engines.kv import KVClient, KVEngine, entries
from engines.kv.entries import Entry
from legion.engine import CoverageResult, HttpRequest, HttpResponse, NodeReply, WriteItem, WriteResult, load_engines
from legion.errors import BadRequest, ConfigError, LegionError, NotFound, NotOwner, PayloadTooLarge, Unavailable
from legion.keyspace import partition_of
from legion.limits import VALUE_BYTES_MAX
from legion.replication import Operation, read_quorum, write_quorum
from legion.testing.convergence import assert_converges

KEYS = [b"a", b"b", b"\x00", b"\xff\xfe", "é".encode()]


def put(key: bytes, hlc: int, origin: str = "n1", value: bytes = b"v", content_type: str = "text/plain") -> Operation:
    return Operation("kv", 0, key, hlc, origin, "put", entries.encode_put(content_type, value))


def delete(key: bytes, hlc: int, origin: str = "n1") -> Operation:
    return Operation("kv", 0, key, hlc, origin, "delete", b"")


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[KVEngine]:
    engine = KVEngine(tmp_path)
    engine.open(0, tmp_path / "p0")
    yield engine
    engine.close(0)


def state(engine: KVEngine, partition: int = 0) -> tuple[list[Operation], dict[bytes, Any]]:
    """Everything observable about a partition: its fold and a read of every test key."""
    return list(engine.fold(partition)), {key: engine.read(partition, key) for key in KEYS}


# --- convergence ---------------------------------------------------------------

# Few timestamps and keys, so that equal timestamps (ties the origin breaks) are common.
versions = st.tuples(st.integers(min_value=0, max_value=6), st.sampled_from(["n1", "n2", "n10"]))
op_specs = st.tuples(
    st.sampled_from(KEYS), versions, st.booleans(), st.sampled_from(["text/plain", "image/png"]), st.binary(max_size=8)
)


def op_of(spec: tuple[bytes, tuple[int, str], bool, str, bytes]) -> Operation:
    key, (hlc, origin), is_delete, content_type, value = spec
    return delete(key, hlc, origin) if is_delete else put(key, hlc, origin, value, content_type)


def model(ops: list[Operation]) -> tuple[list[Operation], dict[bytes, Any]]:
    """The expected state: per key, the op with the highest (hlc, origin), and the reads that follow from it."""
    winners: dict[bytes, Operation] = {}
    for op in ops:
        if op.key not in winners or op.version > winners[op.key].version:
            winners[op.key] = op
    folded = sorted(winners.values())
    return folded, {key: entries.entry_of(winners[key]).to_wire() if key in winners else None for key in KEYS}


def sorted_state(engine: KVEngine, partition: int) -> tuple[list[Operation], dict[bytes, Any]]:
    folded, reads = state(engine, partition)
    return sorted(folded), reads


@settings(max_examples=25, deadline=None)
@given(st.lists(op_specs, max_size=14, unique_by=lambda spec: spec[1]), st.randoms(use_true_random=False))
def test_any_order_duplicates_batching_restarts_and_handoff_reach_the_same_state(specs, rng) -> None:
    # A version names one operation cluster-wide (each node's HLC is strictly increasing).
    assert_converges(KVEngine, [op_of(spec) for spec in specs], rng, state=sorted_state, expected=model)


@settings(max_examples=40, deadline=None)
@given(st.lists(op_specs, max_size=14, unique_by=lambda spec: spec[1]), st.randoms(use_true_random=False))
def test_fold_applied_to_a_fresh_partition_rebuilds_it_exactly(specs, rng) -> None:
    ops = [op_of(spec) for spec in specs]
    with tempfile.TemporaryDirectory() as root:
        source, target = KVEngine(Path(root)), KVEngine(Path(root))
        source.open(0, Path(root, "source"))
        target.open(0, Path(root, "target"))
        source.apply(0, ops)
        folded = list(source.fold(0))
        assert all(op.engine == "kv" and op.partition == 0 for op in folded)
        rng.shuffle(folded)
        target.apply(0, folded)
        assert state(target) == state(source)
        source.close(0)
        target.close(0)


@pytest.mark.parametrize("order", [1, -1])
def test_equal_timestamps_are_ordered_by_origin(engine: KVEngine, order: int) -> None:
    ops = [put(b"a", 7, "n2", b"from n2"), put(b"a", 7, "n10", b"from n10"), delete(b"a", 6, "n9")]
    for op in ops[::order]:
        engine.apply(0, [op])
    assert entries.newest([engine.read(0, b"a")]).value == b"from n2"  # "n2" > "n10" as strings


def test_tombstones_survive_the_fold_and_still_beat_older_puts(engine: KVEngine, tmp_path: Path) -> None:
    engine.apply(0, [put(b"a", 1), delete(b"a", 2)])
    assert [op.kind for op in engine.fold(0)] == ["delete"]
    target = KVEngine(tmp_path)
    target.open(0, tmp_path / "target")
    target.apply(0, list(engine.fold(0)))
    target.apply(0, [put(b"a", 1, value=b"late and old")])
    assert entries.newest([target.read(0, b"a")]).deleted
    target.close(0)


def test_fold_visits_every_row_across_pages(engine: KVEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kv_engine, "FOLD_PAGE_ROWS", 3)
    keys = [bytes([i]) for i in range(10)] + [b"\xff" * 3]
    engine.apply(0, [put(key, 1) for key in keys])
    folded = engine.fold(0)
    first = next(folded)
    # Writes between pages must not make the fold skip or repeat a key.
    engine.apply(0, [put(b"\x05", 2, value=b"newer"), put(b"\x01\x00", 3)])
    rest = list(folded)
    seen = [first.key, *(op.key for op in rest)]
    assert seen == sorted(set(seen)), "keys repeated or out of order"
    assert set(keys) <= set(seen), "keys skipped"


# --- durability and lifecycle ----------------------------------------------------


def test_state_survives_close_and_open(engine: KVEngine, tmp_path: Path) -> None:
    engine.apply(0, [put(b"a", 1, value=b"one"), put(b"b", 2), delete(b"b", 3)])
    before = state(engine)
    engine.close(0)
    again = KVEngine(tmp_path)
    again.open(0, tmp_path / "p0")
    assert state(again) == before
    assert entries.newest([again.read(0, b"a")]).value == b"one"
    again.close(0)
    engine.open(0, tmp_path / "p0")  # for the fixture's close


def test_an_applied_batch_survives_kill_9(tmp_path: Path) -> None:
    script = f"""
import os, signal
from pathlib import Path
from engines.kv import KVEngine, entries
from legion.replication import Operation
engine = KVEngine(Path({str(tmp_path)!r}))
engine.open(0, Path({str(tmp_path / "p0")!r}))
engine.apply(0, [Operation("kv", 0, b"k%d" % i, i + 1, "n1", "put", entries.encode_put("text/plain", b"v")) for i in range(50)])
os.kill(os.getpid(), signal.SIGKILL)
"""
    result = subprocess.run([sys.executable, "-c", script], timeout=60, capture_output=True)
    assert result.returncode == -9, result.stderr.decode()
    engine = KVEngine(tmp_path)
    engine.open(0, tmp_path / "p0")
    assert len(list(engine.fold(0))) == 50
    engine.close(0)


@pytest.mark.parametrize(("mode", "expected"), [("fsync", 2), ("async", 1)])
def test_the_database_commits_as_durably_as_the_node_s_mode_asks(tmp_path: Path, mode: str, expected: int) -> None:
    # KV is durable on apply and the core compacts the log below what it applied: in fsync mode its
    # commits must fsync (FULL = 2) too, or power loss could take writes the log no longer holds.
    # PRAGMA synchronous belongs to the connection, not the file, so the writer connection is asked.
    engine = KVEngine(tmp_path)
    engine.durability = mode  # as the core sets it, before the first open
    engine.open(0, tmp_path / "p0")
    with engine._store(0).writer.use() as conn:
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == expected
    engine.close(0)


def test_a_malformed_batch_applies_nothing(engine: KVEngine) -> None:
    with pytest.raises(BadRequest):
        engine.apply(0, [put(b"a", 1), Operation("kv", 0, b"b", 2, "n1", "put", b"\xc1")])
    assert state(engine) == ([], {key: None for key in KEYS})


def test_validate_refuses_what_apply_would_refuse_and_touches_nothing(engine: KVEngine) -> None:
    engine.validate(put(b"a", 1))
    engine.validate(delete(b"a", 2))
    for bad in [Operation("kv", 0, b"b", 2, "n1", "put", b"\xc1"), Operation("kv", 0, b"b", 2, "n1", "merge", b"")]:
        with pytest.raises(BadRequest):
            engine.validate(bad)
        with pytest.raises(BadRequest):
            engine.apply(0, [bad])
    assert state(engine) == ([], {key: None for key in KEYS})


def test_a_partition_that_is_not_open_is_not_owned(engine: KVEngine) -> None:
    with pytest.raises(NotOwner):
        engine.read(1, b"a")
    with pytest.raises(NotOwner):
        engine.apply(1, [put(b"a", 1)])
    engine.close(0)
    with pytest.raises(NotOwner):
        engine.read(0, b"a")
    with pytest.raises(NotOwner):
        list(engine.fold(0))
    engine.close(0)  # closing twice is harmless
    engine.open(0, engine.root / "p0")


def test_opening_twice_keeps_the_state(engine: KVEngine) -> None:
    engine.apply(0, [put(b"a", 1)])
    engine.open(0, engine.root / "p0")
    assert engine.read(0, b"a") is not None


def test_a_read_query_must_be_key_bytes(engine: KVEngine) -> None:
    with pytest.raises(BadRequest):
        engine.read(0, "a")


def test_a_database_from_a_newer_schema_is_refused(tmp_path: Path) -> None:
    import sqlite3

    with sqlite3.connect(tmp_path / "kv.sqlite") as conn:
        conn.execute("PRAGMA user_version=99")
    with pytest.raises(ConfigError, match="schema version 99"):
        KVEngine(tmp_path).open(0, tmp_path / "p0")


def open_database_files(directory: Path) -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}").startswith(str(directory))
        except FileNotFoundError:  # the fd listdir itself used, already closed
            pass
    return count


@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="needs /proc to count open files")
def test_readers_on_worker_threads_never_go_back_in_time_and_close_releases_them(engine: KVEngine, tmp_path: Path) -> None:
    # WAL: readers run while the writer commits, and a reader's own
    # connection never sees a key's version go backwards.
    failures: list[str] = []
    stop = threading.Event()

    def reader() -> None:
        last = -1
        while not stop.is_set():
            reply = engine.read(0, b"a")
            hlc = -1 if reply is None else reply[0]
            if hlc < last:
                failures.append(f"hlc went back from {last} to {hlc}")
            last = hlc

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for thread in threads:
        thread.start()
    for hlc in range(1, 200):
        engine.apply(0, [put(b"a", hlc), put(b"b", hlc)])
    stop.set()
    for thread in threads:
        thread.join(timeout=10)
    assert not failures
    assert open_database_files(tmp_path / "kv.sqlite") > 0
    engine.close(0)
    assert open_database_files(tmp_path / "kv.sqlite") == 0
    engine.open(0, tmp_path / "p0")


# --- registration ------------------------------------------------------------------


def test_the_engine_is_registered_under_its_entry_point() -> None:
    assert load_engines()["kv"] is KVEngine


def test_routes_cover_put_get_delete_bulk_put_and_listing() -> None:
    routes = {(route.method, route.path) for route in KVEngine(Path(".")).routes()}
    assert routes == {
        ("PUT", "/v1/kv/{key}"), ("GET", "/v1/kv/{key}"), ("DELETE", "/v1/kv/{key}"), ("POST", "/v1/kv"), ("GET", "/v1/kv"),
    }  # fmt: skip


# --- HTTP handlers and client, over a fake coordinator with three replicas ---------


class FakeCluster:
    """``legion.engine.Cluster`` in one process: three KVEngine replicas, some of which can be down."""

    node_id = "n1"
    partitions = 4

    def __init__(self, root: Path) -> None:
        self.replicas = [KVEngine(root / f"r{i}") for i in range(3)]
        for i, replica in enumerate(self.replicas):
            for partition in range(self.partitions):
                replica.open(partition, root / f"r{i}" / f"p{partition}")
        self.down: set[int] = set()
        self.lost: set[int] = set()  # partitions no replica answers for (coverage)
        self.hlc = 0
        self.writes: list[Operation] = []
        self.refreshed: list[bool] = []

    def partition_of(self, key: bytes) -> int:
        return partition_of(key, self.partitions)

    def live(self, needed: int) -> list[KVEngine]:
        live = [replica for i, replica in enumerate(self.replicas) if i not in self.down]
        if len(live) < needed:
            raise Unavailable(f"{len(live)} live replicas, {needed} needed")
        return live

    async def write(
        self, engine: str, key: bytes, kind: str, body: bytes, *, w: int | None = None, refresh: bool = False
    ) -> WriteResult:
        self.refreshed.append(refresh)
        live = self.live(write_quorum(w, len(self.replicas)))
        self.hlc += 1
        op = Operation(engine, self.partition_of(key), key, self.hlc, self.node_id, kind, body)
        self.writes.append(op)
        for replica in live:
            replica.apply(op.partition, [op])
        return WriteResult(op.partition, op.hlc, len(live), len(self.replicas))

    async def write_many(
        self, engine: str, items: list[WriteItem], *, w: int | None = None, refresh: bool = False
    ) -> list[WriteResult | LegionError]:
        if w is not None:
            write_quorum(w, len(self.replicas))  # as the coordinator: a bad w fails the call, not each item
        results: list[WriteResult | LegionError] = []
        for item in items:
            try:
                results.append(await self.write(engine, item.key, item.kind, item.body, w=w, refresh=refresh))
            except LegionError as exc:
                results.append(exc)
        return results

    async def coverage(self, engine: str, query: Any, *, allow_partial: bool = False, **_: Any) -> CoverageResult:
        """Each partition from the first live replica, as if each replica were a node."""
        live = [i for i in range(len(self.replicas)) if i not in self.down]
        missing = tuple(sorted(self.lost)) if live else tuple(range(self.partitions))
        if missing and not allow_partial:
            raise Unavailable(f"no live replica answered for partitions {list(missing)}", partitions=list(missing))
        parts = tuple(p for p in range(self.partitions) if p not in missing)
        if not parts:
            return CoverageResult((), {}, missing)
        value = self.replicas[live[0]].coverage_many(parts, query)
        reply = NodeReply(f"r{live[0]}", parts, msgpack.unpackb(msgpack.packb(value)))  # as if from a peer
        return CoverageResult((reply,), dict.fromkeys(parts, reply.node), missing)

    async def read(self, engine: str, key: bytes, query: Any, *, r: int | None = None) -> list[Any]:
        needed = read_quorum(r, len(self.replicas))
        replies = [replica.read(self.partition_of(key), query) for replica in self.live(needed)[:needed]]
        return [msgpack.unpackb(msgpack.packb(reply)) for reply in replies]  # as if from peers

    def close(self) -> None:
        for replica in self.replicas:
            for partition in range(self.partitions):
                replica.close(partition)


@dataclass
class FakeResponse:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        import json

        return json.loads(self.body)


class FakeClient:
    """``legion.client.Client.request`` routed straight into the engine's handlers."""

    def __init__(self, cluster: FakeCluster) -> None:
        self.cluster = cluster
        self.handlers = {(route.method, route.path): route.handler for route in cluster.replicas[0].routes()}
        self.paths: list[str] = []
        self.closed = False

    def __enter__(self) -> FakeClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.closed = True

    def request(self, method: str, path: str, *, body=None, json=None, params=None, headers=None) -> FakeResponse:
        self.paths.append(path)
        query = {name: str(value) for name, value in (params or {}).items()}
        if path == "/v1/kv":
            handler, path_params = self.handlers[(method, path)], {}
        else:
            prefix, _, encoded = path.rpartition("/")
            assert prefix == "/v1/kv", f"key not percent-encoded: {path}"
            handler, path_params = self.handlers[(method, "/v1/kv/{key}")], {"key": unquote(encoded)}
        request = HttpRequest(method, path_params, query, headers or {}, body or b"")
        response: HttpResponse = asyncio.run(handler(request, self.cluster))
        return FakeResponse(response.status, {"Content-Type": response.content_type, **response.headers}, response.body)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[FakeCluster]:
    cluster = FakeCluster(tmp_path)
    yield cluster
    cluster.close()


@pytest.fixture
def kv(cluster: FakeCluster) -> KVClient:
    return KVClient(FakeClient(cluster))  # type: ignore[arg-type]


def test_put_get_delete_round_trip(kv: KVClient, cluster: FakeCluster) -> None:
    key = "dir/file name é?&=%"
    written = kv.put(key, b"\x00\x01binary", content_type="application/x-thing")
    assert written == {"key": key, "partition": cluster.partition_of(key.encode()), "hlc": 1, "acks": 3}
    assert kv.get(key).value == b"\x00\x01binary"
    assert kv.get(key).content_type == "application/x-thing"
    assert kv.get(key).hlc == 1
    assert kv.client.paths[0] == "/v1/kv/dir%2Ffile%20name%20%C3%A9%3F%26%3D%25"
    assert kv.delete(key) == {"key": key, "deleted": True, "hlc": 2, "acks": 3}
    with pytest.raises(NotFound, match="not found"):
        kv.get(key)
    with pytest.raises(NotFound):
        kv.get("never written")


def test_text_values_default_to_utf8_text(kv: KVClient) -> None:
    kv.put("greeting", "héllo")
    assert (kv.get("greeting").text, kv.get("greeting").content_type) == ("héllo", "text/plain; charset=utf-8")


def test_a_read_returns_the_newest_reply_not_the_first(kv: KVClient, cluster: FakeCluster) -> None:
    kv.put("k", "old")
    cluster.down = {0}  # replica 0 misses the next write
    kv.put("k", "new", w=2)
    cluster.down = set()
    assert kv.get("k", r=1).text == "old"  # only the stale replica asked
    assert kv.get("k", r=3).text == "new"
    assert kv.get("k", r=2).text == "new"  # r + w > N: some reply is up to date


def test_quorums_that_cannot_be_met_are_unavailable(kv: KVClient, cluster: FakeCluster) -> None:
    cluster.down = {0, 1}
    with pytest.raises(Unavailable):
        kv.put("k", "v")
    assert kv.put("k", "v", w=1)["acks"] == 1
    with pytest.raises(Unavailable):
        kv.delete("k", w=3)


def run_handler(method: str, cluster: FakeCluster, key: str | None, body: bytes = b"", **options: Any) -> HttpResponse:
    """The handler of ``/v1/kv/{key}``, or of ``/v1/kv`` when ``key`` is None."""
    handlers = {(route.method, route.path): route.handler for route in cluster.replicas[0].routes()}
    path, path_params = ("/v1/kv", {}) if key is None else ("/v1/kv/{key}", {"key": key})
    request = HttpRequest(method, path_params, options.get("query", {}), options.get("headers", {}), body)
    return asyncio.run(handlers[(method, path)](request, cluster))


def test_put_stores_the_content_type_header_whatever_its_case(cluster: FakeCluster) -> None:
    run_handler("PUT", cluster, "k", b"{}", headers={"content-type": "application/json"})
    response = run_handler("GET", cluster, "k")
    assert (response.status, response.body, response.content_type) == (200, b"{}", "application/json")
    assert response.headers["X-Legion-HLC"] == "1"
    run_handler("PUT", cluster, "k", b"raw")
    assert run_handler("GET", cluster, "k").content_type == "application/octet-stream"


@pytest.mark.parametrize(
    ("method", "key", "body", "options", "error"),
    [
        ("PUT", "k", bytes(VALUE_BYTES_MAX + 1), {}, PayloadTooLarge),
        ("PUT", "k", b"v", {"headers": {"Content-Type": "text/plain\r\nX-Evil: 1"}}, BadRequest),
        ("PUT", "k", b"v", {"query": {"w": "two"}}, BadRequest),
        ("PUT", "k", b"v", {"query": {"w": "0"}}, BadRequest),
        ("PUT", "", b"v", {}, BadRequest),
        ("DELETE", "k" * 1025, b"", {}, BadRequest),
        ("GET", "k", b"", {"query": {"r": "-1"}}, BadRequest),
    ],
)
def test_bad_requests_are_refused_before_anything_is_written(cluster, method, key, body, options, error) -> None:
    with pytest.raises(error):
        run_handler(method, cluster, key, body, **options)
    assert cluster.writes == []


def test_the_client_checks_keys_and_values_before_sending(kv: KVClient) -> None:
    with pytest.raises(BadRequest):
        kv.put("", "v")
    with pytest.raises(PayloadTooLarge):
        kv.put("k", bytes(VALUE_BYTES_MAX + 1))
    assert kv.client.paths == []


def test_tombstone_reads_carry_no_value() -> None:
    # The record a replica returns for a deleted key: the version, and nothing else.
    with tempfile.TemporaryDirectory() as root:
        engine = KVEngine(Path(root))
        engine.open(0, Path(root, "p0"))
        engine.apply(0, [delete(b"a", 4, "n2")])
        assert engine.read(0, b"a") == [4, "n2", True, None, None]
        assert Entry.from_wire(engine.read(0, b"a")).deleted
        engine.close(0)


# --- CLI, over the same fake cluster ---------------------------------------------------


@pytest.fixture
def cli(cluster: FakeCluster, monkeypatch: pytest.MonkeyPatch):
    from typer.testing import CliRunner

    import engines.kv.cli as kv_cli

    clients: list[FakeClient] = []

    def connect(directory: str | Path | None = None) -> FakeClient:
        clients.append(FakeClient(cluster))
        clients[-1].directory = directory
        return clients[-1]

    monkeypatch.setattr(kv_cli.Client, "connect", connect)
    runner = CliRunner()

    def run(*args: str, stdin: bytes | None = None):
        result = runner.invoke(KVEngine.cli(), list(args), input=stdin)
        assert all(client.closed for client in clients)
        return result, clients[-1] if clients else None

    return run


def test_cli_put_get_delete(cli) -> None:
    result, client = cli("put", "a key", "héllo", "--w", "3", "--cluster", "/some/dir")
    assert result.exit_code == 0, result.output
    assert "a key" in result.stdout and "3 acks" in result.stdout
    assert str(client.directory) == "/some/dir"
    result, _ = cli("get", "a key")
    assert (result.exit_code, result.stdout_bytes) == (0, "héllo".encode())
    result, _ = cli("get", "a key", "--json")
    assert json.loads(result.stdout) == {
        "value": "héllo", "encoding": "utf-8", "content_type": "text/plain; charset=utf-8", "hlc": 1
    }
    result, _ = cli("delete", "a key")
    assert result.exit_code == 0 and "deleted" in result.stdout
    result, _ = cli("get", "a key")
    assert isinstance(result.exception, NotFound)  # the top-level CLI prints LegionErrors


def test_cli_reads_binary_values_from_stdin(cli) -> None:
    result, _ = cli("put", "blob", "-", "--content-type", "image/png", stdin=b"\x89PNG\xff")
    assert result.exit_code == 0, result.output
    result, _ = cli("get", "blob", "--json")
    document = json.loads(result.stdout)
    assert (document["encoding"], document["content_type"]) == ("base64", "image/png")
    assert base64.b64decode(document["value"]) == b"\x89PNG\xff"


def test_partitions_share_one_file_but_not_their_keys(engine: KVEngine, tmp_path: Path) -> None:
    engine.open(1, tmp_path / "p1")
    engine.apply_batch({0: [put(b"a", 1, value=b"zero")], 1: [put(b"a", 2, value=b"one")]})
    assert engine.read(0, b"a")[0] == 1 and engine.read(0, b"a")[4] == b"zero"
    assert engine.read(1, b"a")[0] == 2 and engine.read(1, b"a")[4] == b"one"
    assert [op.partition for op in engine.fold(1)] == [1]


def test_drop_deletes_only_the_dropped_partition(engine: KVEngine, tmp_path: Path) -> None:
    engine.open(1, tmp_path / "p1")
    engine.apply_batch({0: [put(b"a", 1)], 1: [put(b"b", 1)]})
    engine.drop(1)
    engine.close(1)
    engine.open(1, tmp_path / "p1")
    assert engine.read(1, b"b") is None
    assert engine.read(0, b"a") is not None


def test_a_batch_naming_a_closed_partition_changes_nothing(engine: KVEngine) -> None:
    with pytest.raises(NotOwner):
        engine.apply_batch({0: [put(b"a", 1)], 7: [put(b"b", 1)]})
    assert engine.read(0, b"a") is None


# --- key listings (coverage_many) on the engine ------------------------------------------


def test_coverage_many_lists_live_keys_of_the_asked_partitions_in_order(engine: KVEngine, tmp_path: Path) -> None:
    engine.open(1, tmp_path / "p1")
    engine.apply_batch({
        0: [put(b"b", 1), put(b"d", 1), delete(b"c", 2), put(b"prefix/x", 1)],
        1: [put(b"a", 1), put(b"c", 1), put(b"prefix/y", 1)],
    })  # fmt: skip
    everything = entries.list_query(b"", None, 100)
    assert engine.coverage_many([0, 1], everything) == [b"a", b"b", b"c", b"d", b"prefix/x", b"prefix/y"]
    assert engine.coverage_many([0], everything) == [b"b", b"d", b"prefix/x"]  # c is a tombstone in 0
    assert engine.coverage_many([0, 1], entries.list_query(b"prefix/", None, 100)) == [b"prefix/x", b"prefix/y"]
    assert engine.coverage_many([0, 1], entries.list_query(b"", b"b", 2)) == [b"c", b"d"]
    assert engine.coverage(1, everything) == [b"a", b"c", b"prefix/y"]


def test_coverage_many_lists_keys_after_an_all_ff_prefix(engine: KVEngine) -> None:
    engine.apply(0, [put(b"\xff", 1), put(b"\xff\xff\x01", 1), put(b"\xfe", 1)])
    assert engine.coverage_many([0], entries.list_query(b"\xff\xff", None, 10)) == [b"\xff\xff\x01"]


def test_coverage_many_refuses_a_bad_query_and_a_partition_it_does_not_hold(engine: KVEngine) -> None:
    with pytest.raises(BadRequest):
        engine.coverage_many([0], {"prefix": "text"})
    with pytest.raises(NotOwner):
        engine.coverage_many([0, 9], entries.list_query(b"", None, 10))


# --- bulk puts and listings through the handlers and the client -------------------------------


def test_a_bulk_put_writes_every_good_line_and_reports_each_bad_one_with_its_line(cluster: FakeCluster) -> None:
    body = b'{"key": "a", "value": "1"}\n{"key": "", "value": "x"}\n\n{"key": "c", "value": "3", "content_type": "text/csv"}\n'
    response = run_handler("POST", cluster, None, body, headers={"Content-Type": "application/x-ndjson"})
    document = json.loads(response.body)
    assert (response.status, document["written"], document["failed"]) == (200, 2, 1)
    first, bad, third = document["results"]
    assert first == {"line": 1, "partition": cluster.partition_of(b"a"), "hlc": 1, "acks": 3}
    assert bad["line"] == 2 and bad["error"] == "bad_request" and bad["message"].startswith("line 2: ")
    assert third["line"] == 4 and third["hlc"] == 2
    assert run_handler("GET", cluster, "c").content_type == "text/csv"


def test_a_bulk_put_passes_w_and_refresh_to_write_many(cluster: FakeCluster) -> None:
    cluster.down = {0, 1}
    body = b'{"key": "a", "value": "1"}'
    refused = json.loads(run_handler("POST", cluster, None, body).body)
    assert refused["failed"] == 1 and refused["results"][0]["error"] == "unavailable"
    written = json.loads(run_handler("POST", cluster, None, body, query={"w": "1", "refresh": "1"}).body)
    assert written["written"] == 1 and cluster.refreshed[-1] is True


@pytest.mark.parametrize(
    ("body", "options"),
    [
        (b"", {}),
        (b"\n  \n", {}),
        (b"\xc1", {"headers": {"Content-Type": "application/msgpack"}}),
        (b'{"key": "a", "value": "1"}', {"query": {"w": "0"}}),
        (b'{"key": "a", "value": "1"}', {"query": {"refresh": "maybe"}}),
    ],
)
def test_a_bulk_put_that_is_wrong_as_a_whole_is_refused_whole(cluster: FakeCluster, body: bytes, options) -> None:
    with pytest.raises(BadRequest):
        run_handler("POST", cluster, None, body, **options)
    assert cluster.writes == []


def test_a_bulk_put_over_the_item_limit_is_refused(cluster: FakeCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kv_engine, "WRITE_MANY_ITEMS_MAX", 2)
    body = b'{"key": "a", "value": "1"}\n' * 3
    with pytest.raises(BadRequest, match="at most 2 items"):
        run_handler("POST", cluster, None, body)


def test_the_client_puts_many_items_in_several_requests_numbering_results_across_them(
    kv: KVClient, cluster: FakeCluster
) -> None:
    items = [{"key": f"k{i}", "value": f"v{i}"} for i in range(7)]
    items[4] = {"key": "", "value": "bad key"}
    items[5] = {"key": "binary", "value": b"\x00\xff", "content_type": "image/png"}
    results = kv.put_many(items, request_items=3)
    assert kv.client.paths == ["/v1/kv"] * 3
    assert [result["line"] for result in results] == list(range(1, 8))
    assert results[4]["error"] == "bad_request" and results[4]["message"].startswith("line 5: ")
    assert all("hlc" in result for i, result in enumerate(results) if i != 4)
    assert kv.get("binary").value == b"\x00\xff" and kv.get("binary").content_type == "image/png"
    assert kv.get("k6").text == "v6"


def test_the_client_imports_ndjson_reporting_failures_by_their_line_in_the_file(kv: KVClient) -> None:
    lines = [b'{"key": "k%d", "value": "v%d"}' % (i, i) for i in range(10)]
    lines[2] = b"{broken"
    lines[7] = b""
    lines[8] = b'{"key": "k8", "value": 8}'
    report = kv.import_ndjson(iter(line + b"\n" for line in lines), request_items=4)
    assert report.written == 7
    assert [(failure["line"], failure["message"][:7]) for failure in report.failures] == [(3, "line 3:"), (9, "line 9:")]
    assert kv.get("k9").text == "v9"


def test_an_item_too_large_for_any_request_fails_alone_on_the_client(kv: KVClient, monkeypatch) -> None:
    import engines.kv.client as kv_client

    monkeypatch.setattr(kv_client, "BULK_BODY_BYTES_MAX", 200)
    results = kv.put_many([{"key": "a", "value": "x"}, {"key": "b", "value": "y" * 300}, {"key": "c", "value": "z"}])
    assert [result.get("error") for result in results] == [None, "payload_too_large", None]
    assert results[1]["line"] == 2


def test_listing_pages_through_live_keys(kv: KVClient) -> None:
    kv.put_many([{"key": key, "value": "v"} for key in ("b", "a", "c/1", "c/2", "d")])
    kv.delete("d")
    first = kv.list_keys(limit=2)
    assert (first.keys, first.truncated, first.partitions_missing) == (["a", "b"], True, [])
    rest = kv.list_keys(after=first.keys[-1])
    assert (rest.keys, rest.truncated) == (["c/1", "c/2"], False)
    assert kv.list_keys("c/").keys == ["c/1", "c/2"]


def test_listing_with_lost_partitions_is_unavailable_unless_partial(kv: KVClient, cluster: FakeCluster) -> None:
    kv.put_many([{"key": f"k{i}", "value": "v"} for i in range(20)])
    cluster.lost = {1}
    with pytest.raises(Unavailable):
        kv.list_keys()
    partial = kv.list_keys(allow_partial=True)
    assert partial.partitions_missing == [1]
    assert partial.keys == sorted(f"k{i}" for i in range(20) if cluster.partition_of(f"k{i}".encode()) != 1)


@pytest.mark.parametrize(
    "query",
    [{"limit": "0"}, {"limit": "10001"}, {"limit": "ten"}, {"prefix": "k" * 1025}, {"after": ""}, {"allow_partial": "yes"}],
)
def test_bad_listing_parameters_are_bad_requests(cluster: FakeCluster, query: dict[str, str]) -> None:
    if query == {"after": ""}:  # an empty cursor means "from the start", not an error
        assert run_handler("GET", cluster, None, query=query).status == 200
        return
    with pytest.raises(BadRequest):
        run_handler("GET", cluster, None, query=query)


def test_cli_import_and_list(cli, tmp_path: Path) -> None:
    source = tmp_path / "items.ndjson"
    source.write_text('{"key": "x/1", "value": "one"}\n{"key": "x/2", "value": "two"}\n{"key": "y", "value": "why"}\n')
    result, _ = cli("import", str(source))
    assert result.exit_code == 0, result.output
    assert "imported 3 items, 0 failed" in result.stdout
    result, _ = cli("list", "x/")
    assert (result.exit_code, result.stdout) == (0, "x/1\nx/2\n")
    result, _ = cli("list", "--limit", "1")
    assert result.stdout == "x/1\n" and "--after x/1" in result.stderr


def test_cli_import_from_stdin_reports_bad_lines_and_exits_1(cli) -> None:
    result, _ = cli("import", "-", stdin=b'{"key": "a", "value": "1"}\nnot json\n')
    assert result.exit_code == 1
    assert "imported 1 items, 1 failed" in result.stdout
    assert "line 2: not valid JSON" in result.stderr


def test_cli_import_of_a_missing_file_is_a_config_error(cli, tmp_path: Path) -> None:
    result, _ = cli("import", str(tmp_path / "nope.ndjson"))
    assert isinstance(result.exception, ConfigError) and "cannot read" in result.exception.message
