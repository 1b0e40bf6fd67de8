"""The ``legion`` command end to end: real node processes, driven only through the CLI.

Every command runs as ``python -m cli …`` in a subprocess, the way a user
types it, against a cluster that ``legion cluster up`` started on free
loopback ports. Errors must come out as one ``error: …`` line on stderr with
exit status 1 — never a traceback.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from legion.client import Client
from legion.errors import ConfigError
from legion.runtime import local_cluster

CliResult = subprocess.CompletedProcess[str]


def assert_ok(result: CliResult) -> CliResult:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result


def assert_one_error_line(result: CliResult, expected: str) -> None:
    """Exit 1, and stderr is exactly one ``error:`` line containing ``expected``; no traceback anywhere."""
    assert result.returncode == 1, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert expected in lines[0], lines[0]


@pytest.fixture(scope="module")
def workdir(legion_cli, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A directory whose ./.legion holds a running 3-node cluster, started through the CLI."""
    work = tmp_path_factory.mktemp("cli-cluster")
    try:
        up = assert_ok(legion_cli("cluster", "up", "--nodes", "3", "--dir", ".legion", "--base-port", "0", cwd=work))
        assert "cluster up" in up.stdout
        for node_id in ("n1", "n2", "n3"):
            assert node_id in up.stdout
        yield work
    finally:
        if (work / ".legion" / "cluster.json").exists():
            legion_cli("cluster", "down", "--dir", ".legion", cwd=work)


def test_status_json_shows_three_settled_members(legion_cli, workdir: Path) -> None:
    status = json.loads(assert_ok(legion_cli("cluster", "status", "--json", cwd=workdir)).stdout)
    assert [member["id"] for member in status["members"]] == ["n1", "n2", "n3"]
    assert {member["status"] for member in status["members"]} == {"up"}
    assert (status["partitions"], status["replicas"], status["rebalancing"]) == (64, 3, False)
    assert len(status["placement"]) == 64
    # Attributes are what the installed engines publish (the map/reduce engine: its Dask worker's resource).
    assert all(all(isinstance(v, str) for v in member["attributes"].values()) for member in status["members"])


def durability_of_running_nodes(directory: Path) -> dict[str, str]:
    """Each running node's durability mode, as its ``/v1/health`` reports it."""
    token = (directory / "token").read_text().strip()
    modes = {}
    for node in local_cluster.load(directory)["nodes"]:
        if node["pid"] is not None:
            with Client([node["url"]], token) as client:
                modes[node["id"]] = client.health()["durability"]
    return modes


def test_nodes_fsync_acknowledged_writes_unless_told_otherwise(workdir: Path) -> None:
    assert durability_of_running_nodes(workdir / ".legion") == {"n1": "fsync", "n2": "fsync", "n3": "fsync"}
    assert local_cluster.load(workdir / ".legion")["durability"] == "fsync"


def test_status_table_names_members_and_the_claimant(legion_cli, workdir: Path) -> None:
    table = assert_ok(legion_cli("cluster", "status", "--cluster", str(workdir / ".legion"))).stdout
    for word in ("n1", "n2", "n3", "up", "claimant", "64 partitions", "settled"):
        assert word in table


def test_dashboard_prints_the_url_of_a_page_a_node_serves_without_the_token(legion_cli, workdir: Path) -> None:
    out = assert_ok(legion_cli("cluster", "dashboard", "--no-open", cwd=workdir)).stdout
    url = out.splitlines()[0].strip()
    nodes = json.loads((workdir / ".legion" / "cluster.json").read_text())["nodes"]
    assert url in [node["url"] + "/ui/" for node in nodes]
    assert "token" in out
    with urllib.request.urlopen(url, timeout=5) as page:
        assert page.status == 200
        assert "default-src 'none'" in page.headers["Content-Security-Policy"]
        assert b"dashboard.js" in page.read()


def test_the_demo_ends_with_the_dashboard_url_of_the_cluster_it_leaves_running(workdir: Path) -> None:
    from rich.console import Console

    from cli import demo

    console = Console(record=True, width=200)
    demo.epilogue(demo.Tour(console=console, directory=workdir / ".legion"))
    last = console.export_text().strip().splitlines()[-1]
    nodes = json.loads((workdir / ".legion" / "cluster.json").read_text())["nodes"]
    assert last.startswith(f"Dashboard: {nodes[0]['url']}/ui/"), last


def test_top_shows_each_nodes_request_and_op_rates_from_metrics(legion_cli, workdir: Path) -> None:
    from engines.kv import KVClient
    from legion.client import Client

    stop = threading.Event()
    put_times: list[float] = []

    def write() -> None:
        with Client.connect(workdir / ".legion") as client:
            n1 = client.for_node(client.status()["members"][0]["url"])
            with n1:
                while not stop.is_set():
                    KVClient(n1).put(f"top:{len(put_times)}", b"x")
                    put_times.append(time.monotonic())

    writer = threading.Thread(target=write)
    writer.start()
    try:
        out = assert_ok(legion_cli("cluster", "top", "--iterations", "3", "--interval", "1", cwd=workdir)).stdout
    finally:
        stop.set()
        writer.join()
    cells_of = [line.replace("│", " ").split() for line in out.splitlines()]
    rows = {cells[0]: cells[1:] for cells in cells_of if cells[:1] in (["n1"], ["n2"], ["n3"])}
    assert set(rows) == {"n1", "n2", "n3"}, out
    requests = {node: float(cells[0]) for node, cells in rows.items()}
    ops = {node: float(cells[2]) for node, cells in rows.items()}
    # The writer's own rate over the last seconds before top ended (top's figures are per window, and the load varies).
    recent = [t for t in put_times if t >= put_times[-1] - 3.0]
    rate = len(recent) / (recent[-1] - recent[0])
    # n1 answers every put; the others only replicate them (peer calls are not client requests).
    assert 0.5 * rate <= requests["n1"] <= 2.0 * rate, (requests, rate)
    assert requests["n2"] == requests["n3"] == 0.0
    # Every node holds every partition: each logs what n1 took in, in the same window.
    assert all(0.5 * requests["n1"] <= ops[node] <= 2.0 * requests["n1"] for node in rows), (ops, requests)
    assert rows["n1"][1] != "-" and float(rows["n1"][1]) > 0  # a p99 latency in ms


def test_kv_put_get_delete(legion_cli, workdir: Path) -> None:
    put = assert_ok(legion_cli("kv", "put", "greeting", "hello, world", cwd=workdir))
    assert "partition" in put.stdout
    assert assert_ok(legion_cli("kv", "get", "greeting", cwd=workdir)).stdout == "hello, world"
    described = json.loads(assert_ok(legion_cli("kv", "get", "greeting", "--json", cwd=workdir)).stdout)
    assert described["value"] == "hello, world"
    assert described["content_type"].startswith("text/plain")
    assert_ok(legion_cli("kv", "delete", "greeting", cwd=workdir))
    assert_one_error_line(legion_cli("kv", "get", "greeting", cwd=workdir), "not found")


def test_every_command_finds_the_cluster_by_cluster_dir_or_legion_cluster(legion_cli, workdir: Path, tmp_path: Path) -> None:
    cluster, elsewhere = str(workdir / ".legion"), tmp_path  # no ./.legion where these run
    assert_ok(legion_cli("kv", "put", "where", "here", "--cluster", cluster, cwd=elsewhere))
    assert assert_ok(legion_cli("kv", "get", "where", "--dir", cluster, cwd=elsewhere)).stdout == "here"
    env = {"LEGION_CLUSTER": cluster}
    assert assert_ok(legion_cli("kv", "get", "where", cwd=elsewhere, env=env)).stdout == "here"
    status = json.loads(assert_ok(legion_cli("cluster", "status", "--json", cwd=elsewhere, env=env)).stdout)
    assert [member["id"] for member in status["members"]] == ["n1", "n2", "n3"]
    assert_ok(legion_cli("search", "list", cwd=elsewhere, env=env))
    assert_ok(legion_cli("mr", "datasets", cwd=elsewhere, env=env))
    # A command on the local cluster's files (not its HTTP API) takes the same option and variable.
    assert "/ui/" in assert_ok(legion_cli("cluster", "dashboard", "--no-open", cwd=elsewhere, env=env)).stdout
    assert "/ui/" in assert_ok(legion_cli("cluster", "dashboard", "--no-open", "--cluster", cluster, cwd=elsewhere)).stdout
    # The flag wins over the variable, and without either there is no cluster here.
    assert_one_error_line(legion_cli("kv", "get", "where", "--cluster", str(elsewhere), cwd=elsewhere, env=env), "no cluster at")
    assert_one_error_line(legion_cli("kv", "get", "where", cwd=elsewhere), "no cluster at")


def test_kv_reads_a_value_from_stdin_and_any_node_serves_it(legion_cli, workdir: Path) -> None:
    assert_ok(legion_cli("kv", "put", "doc:1", "-", "--content-type", "application/json", input='{"a": 1}', cwd=workdir))
    nodes = local_cluster.load(workdir / ".legion")["nodes"]
    token = (workdir / ".legion" / "token").read_text().strip()
    for node in nodes:
        # LEGION_URL + LEGION_TOKEN pin the command to one node.
        result = subprocess.run(
            [sys.executable, "-m", "cli", "kv", "get", "doc:1"],
            capture_output=True, text=True, timeout=60, cwd=workdir,
            env={"PATH": "/usr/bin:/bin", "LEGION_URL": node["url"], "LEGION_TOKEN": token},
        )  # fmt: skip
        assert assert_ok(result).stdout == '{"a": 1}'


def test_kv_import_then_list(legion_cli, workdir: Path) -> None:
    lines = [json.dumps({"key": f"imported/{i:03d}", "value": f"v{i}"}) for i in range(50)]
    # --refresh: every replica has the items before the import returns, so any node lists them.
    result = legion_cli("kv", "import", "-", "--refresh", input="\n".join([*lines, "not json"]) + "\n", cwd=workdir)
    assert result.returncode == 1, result.stderr  # one line failed: the import says so in its status
    assert "imported 50 items, 1 failed" in result.stdout
    assert "line 51: not valid JSON" in result.stderr and "Traceback" not in result.stderr
    listed = assert_ok(legion_cli("kv", "list", "imported/", "--limit", "10", cwd=workdir))
    assert listed.stdout.splitlines() == [f"imported/{i:03d}" for i in range(10)]
    assert "--after imported/009" in listed.stderr
    assert assert_ok(legion_cli("kv", "get", "imported/049", cwd=workdir)).stdout == "v49"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["kv", "get", "never-written"], "not found"),
        (["kv", "put", "k" * 2000, "v"], "1024"),
        (["kv", "list", "--limit", "0"], "limit"),
        (["kv", "import", "no-such-file.ndjson"], "cannot read"),
        (["cluster", "status", "--cluster", "nowhere"], "no cluster at"),
        (["cluster", "up", "--dir", ".legion", "--base-port", "0"], "already running"),
        (["cluster", "up", "--dir", "other", "--partitions", "3", "--base-port", "0"], "power of two"),
        (["cluster", "start-node", "n1", "--dir", ".legion"], "already running"),
        (["cluster", "remove-node", "n9", "--dir", ".legion"], "no node 'n9'"),
        (["node", "start", "--data-dir", "d", "--listen", "nonsense"], "--listen must be HOST:PORT"),
        (["node", "start", "--data-dir", "d", "--option", "mapreduce.scheduler"], "--option must be KEY=VALUE"),
        (["cluster", "up", "--dir", "other", "--base-port", "0", "--option", "oops"], "--option must be KEY=VALUE"),
        (["node", "start", "--data-dir", "d", "--durability", "eventually"], "--durability must be fsync or async"),
        (["cluster", "up", "--dir", "other", "--base-port", "0", "--durability", "FULL"], "--durability must be fsync or async"),
    ],
)
def test_bad_input_is_one_error_line_and_exit_1(legion_cli, workdir: Path, args: list[str], expected: str) -> None:
    assert_one_error_line(legion_cli(*args, cwd=workdir), expected)


def test_a_wrong_token_is_reported_not_crashed(legion_cli, workdir: Path) -> None:
    url = local_cluster.load(workdir / ".legion")["nodes"][0]["url"]
    result = subprocess.run(
        [sys.executable, "-m", "cli", "cluster", "status"],
        capture_output=True, text=True, timeout=60, cwd=workdir,
        env={"PATH": "/usr/bin:/bin", "LEGION_URL": url, "LEGION_TOKEN": "not-the-token"},
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr


def test_usage_errors_exit_2_without_a_traceback(legion_cli) -> None:
    result = legion_cli("cluster", "up", "--nodes", "many")
    assert result.returncode == 2
    assert "Traceback" not in result.stdout + result.stderr


def test_up_on_a_busy_port_suggests_base_port(legion_cli, tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = legion_cli("cluster", "up", "--nodes", "1", "--dir", str(tmp_path / "c"), "--base-port", str(port))
    assert_one_error_line(result, "--base-port")
    assert not (tmp_path / "c").exists()


def test_the_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "legion"
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert_ok(result)
    assert "cluster" in result.stdout and "node" in result.stdout


def test_an_engine_command_imports_that_engine_alone() -> None:
    # `legion search ingest` is timed from start to exit by bench/search.py: the other
    # engines (map/reduce: pyarrow, numpy) and the cluster group are not loaded for it.
    probe = (
        "import sys; from cli.main import build_app; app = build_app(['search', 'ingest']); "
        "print(sorted(g.name for g in app.registered_groups)); "
        "print(sorted(m for m in ('engines.mapreduce', 'engines.kv', 'cli.cluster', 'cli.node', 'cli.engine') if m in sys.modules))"
    )
    result = assert_ok(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60))
    assert result.stdout.splitlines() == ["['search']", "[]"]
    everything = "from cli.main import build_app; print(sorted(g.name for g in build_app(['--help']).registered_groups))"
    result = assert_ok(subprocess.run([sys.executable, "-c", everything], capture_output=True, text=True, timeout=60))
    assert result.stdout.strip() == "['cluster', 'engine', 'kv', 'mr', 'node', 'search']"


def test_a_cluster_grows_shrinks_restarts_and_stops_through_the_cli_in_the_durability_it_was_started_with(
    legion_cli, tmp_path: Path
) -> None:
    run = lambda *args: legion_cli(*args, cwd=tmp_path)  # noqa: E731
    directory = tmp_path / ".legion"
    try:
        assert_ok(run(
            "cluster", "up", "--nodes", "2", "--partitions", "16", "--replicas", "2", "--base-port", "0",
            "--durability", "async", "--option", "mr.scheduler=off",
        ))  # fmt: skip
        assert "added n3" in assert_ok(run("cluster", "add-node")).stdout
        assert_ok(run("kv", "put", "survivor", "still here"))

        assert_ok(run("cluster", "stop-node", "n2", "--kill"))
        assert_ok(run("cluster", "start-node", "n2"))
        assert run("kv", "get", "survivor").stdout == "still here"
        # The added node and the restarted one run in the mode the cluster was started with.
        assert durability_of_running_nodes(directory) == {"n1": "async", "n2": "async", "n3": "async"}

        assert "removed n1" in assert_ok(run("cluster", "remove-node", "n1")).stdout
        status = json.loads(assert_ok(run("cluster", "status", "--json")).stdout)
        by_id = {member["id"]: member["status"] for member in status["members"]}
        assert by_id.get("n1", "removed") == "removed"
        assert by_id["n2"] == by_id["n3"] == "up"
        assert run("kv", "get", "survivor").stdout == "still here"

        assert "stopped n2, n3" in assert_ok(run("cluster", "down")).stdout
        assert all(node["pid"] is None for node in local_cluster.load(directory)["nodes"])
        assert_one_error_line(run("cluster", "status"), "is the cluster running?")
        assert_one_error_line(run("cluster", "up", "--base-port", "0"), "--reset")
        assert_ok(run("cluster", "up", "--nodes", "1", "--base-port", "0", "--reset"))
        assert_one_error_line(run("kv", "get", "survivor"), "not found")
    finally:
        if (directory / "cluster.json").exists():
            local_cluster.down(directory)


def test_a_node_that_dies_at_start_up_is_reported_with_its_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_python = tmp_path / "fake-python"
    fake_python.write_text("#!/bin/sh\necho 'starting'\necho 'boom: the data directory is corrupt' >&2\nexit 3\n")
    fake_python.chmod(0o755)
    # local_cluster spawns nodes with sys.executable; this one dies at once.
    monkeypatch.setattr(sys, "executable", str(fake_python))
    directory = tmp_path / "c"
    with pytest.raises(ConfigError) as caught:
        # An existing Dask scheduler named: no local service runs (it would die first, with sys.executable).
        local_cluster.up(directory, nodes=2, base_port=0, timeout_s=10, options={"mr.scheduler": "tcp://127.0.0.1:9"})
    assert "node n1 exited with status 3" in caught.value.message
    assert "boom: the data directory is corrupt" in caught.value.message
    assert all(node["pid"] is None for node in local_cluster.load(directory)["nodes"])


def test_dask_scheduler_is_the_map_reduce_engine_option_and_two_addresses_are_refused(legion_cli, tmp_path) -> None:
    result = legion_cli(
        "cluster", "up", "--dir", str(tmp_path / "c"), "--base-port", "0",
        "--dask-scheduler", "tcp://127.0.0.1:1", "--option", "mr.scheduler=tcp://127.0.0.1:2",
    )  # fmt: skip
    assert_one_error_line(result, "disagree")
    assert not (tmp_path / "c" / "cluster.json").exists()
