"""The map/reduce engine on real clusters: datasets stored in the partitions, jobs on Dask workers beside them.

Each test starts its own cluster of real node processes on loopback (with a
Dask scheduler and a worker per node) and talks to it like a user: through
``MRClient`` over HTTP, or the ``legion`` command. Results are checked
against DuckDB on the same Parquet file and against ``collections.Counter``.
"""

from __future__ import annotations

import http.client
import json
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path

import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engines.mapreduce.client import MRClient
from engines.mapreduce.examples import path as example
from engines.mapreduce.examples import source
from engines.mapreduce.testing import lineitem_parquet, q1_differences, q1_reference, q6_reference, word_lines
from legion.client import Client
from legion.errors import BadRequest, Conflict, NotFound
from legion.runtime import local_cluster
from legion.testing.cluster import node_metric
from tests.conftest import CLUSTER_START_TIMEOUT_S, NO_DASK

SCALE = 0.01


@pytest.fixture(scope="module")
def lineitem(tmp_path_factory) -> Path:
    return lineitem_parquet(tmp_path_factory.mktemp("tpch"), SCALE)


@pytest.fixture
def cluster_of(tmp_path):
    started: list[Path] = []

    def make(
        nodes: int = 3, replicas: int = 3, partitions: int = 16, options: dict[str, str] | None = None
    ) -> tuple[Path, MRClient]:
        directory = tmp_path / f"cluster{len(started)}"
        local_cluster.up(
            directory, nodes=nodes, partitions=partitions, replicas=replicas, base_port=0,
            timeout_s=CLUSTER_START_TIMEOUT_S, options=options,
        )  # fmt: skip
        started.append(directory)
        return directory, MRClient(Client.connect(directory, timeout_s=60))

    yield make
    for directory in started:
        local_cluster.down(directory)


def test_ingest_spreads_rows_over_every_partition_and_replica_and_drop_removes_them(cluster_of, lineitem, legion_cli):
    directory, mr = cluster_of()
    ingest = legion_cli("mr", "ingest", "lineitem", str(lineitem), "--cluster", str(directory))
    assert ingest.returncode == 0, ingest.stderr
    rows = pq.ParquetFile(lineitem).metadata.num_rows
    assert f"ingested {rows:,} rows" in ingest.stdout
    found = mr.dataset("lineitem")
    assert found["rows"] == rows and found["partitions_missing"] == []
    assert {node: v["rows"] for node, v in found["nodes"].items()} == {"n1": rows, "n2": rows, "n3": rows}  # N=3: all of it on each
    types = {f["name"]: f["type"] for f in found["schema"]}
    assert types["l_extendedprice"] == "decimal128(15, 2)" and types["l_shipdate"] == "date32[day]"
    assert types["l_comment"] == "string"  # string_view in the Parquet file, stored as a plain string

    listing = legion_cli("mr", "datasets", "--json", "--cluster", str(directory))
    assert json.loads(listing.stdout)[0]["rows"] == rows

    keyed = pa.table({"id": [f"u{i}" for i in range(500)], "n": list(range(500))})
    mr.ingest_table("users", keyed, key="id")
    assert mr.dataset("users")["key"] == "id" and mr.dataset("users")["rows"] == 500
    with pytest.raises(Conflict):
        mr.ingest_table("users", keyed, key="n")
    with pytest.raises(BadRequest):
        mr.ingest_table("users", pa.table({"other": [1]}))

    mr.drop("lineitem")
    with pytest.raises(NotFound):
        mr.dataset("lineitem")
    assert [d["name"] for d in mr.datasets()] == ["users"]


def wait_for_workers(mr: MRClient, directory: Path, nodes: int) -> None:
    """Until every node publishes its Dask worker's resource (a node's worker starts after the node)."""
    with Client.connect(directory) as client:
        client.wait_for(
            lambda s: sum(bool((m.get("attributes") or {}).get("mr.resource")) for m in s["members"]) >= nodes,
            timeout_s=CLUSTER_START_TIMEOUT_S,
        )


def test_tpch_q1_q6_and_word_count_equal_the_references_all_map_tasks_local_also_after_a_fourth_node_joins(
    cluster_of, lineitem, legion_cli, tmp_path
):
    directory, mr = cluster_of()
    wait_for_workers(mr, directory, 3)
    assert mr.ingest("lineitem", [lineitem]).rows == pq.ParquetFile(lineitem).metadata.num_rows
    lines = word_lines(2_000)
    text = tmp_path / "lines.jsonl"
    text.write_text("".join(json.dumps({"line": line}) + "\n" for line in lines))
    assert legion_cli("mr", "ingest", "text", str(text), "--cluster", str(directory)).returncode == 0

    run = legion_cli("mr", "run", str(example("tpch_q1")), "--dataset", "lineitem", "--json", "--cluster", str(directory))
    assert run.returncode == 0, run.stderr
    answer = json.loads(run.stdout)
    assert [(r["l_returnflag"], r["l_linestatus"], r["count_order"]) for r in answer["rows"]] == [
        (r["l_returnflag"], r["l_linestatus"], r["count_order"]) for r in q1_reference(lineitem)
    ]
    assert [Decimal(r["sum_charge"]) for r in answer["rows"]] == [r["sum_charge"] for r in q1_reference(lineitem)]
    report = answer["report"]
    assert report["data_local_percent"] == 100.0 and report["retries"] == 0 and sorted(report["nodes"]) == ["n1", "n2", "n3"]
    assert report["rows_in"] == pq.ParquetFile(lineitem).metadata.num_rows and report["partitions"] == 16

    status, q6 = mr.run(source("tpch_q6"), "lineitem")
    assert q6["revenue"].to_pylist() == [Decimal(str(q6_reference(lineitem)[0]["revenue"]))]
    _status, counted = mr.run(source("word_count"), "text", reducers=3)
    assert dict(zip(counted["key"].to_pylist(), counted["value"].to_pylist())) == Counter(w for line in lines for w in line.lower().split())

    # Jobs chain: a map-only job stores its result as a dataset, and the next job reads it.
    keep_late = "import pyarrow.compute as pc\ndef map(part):\n    return part.filter(pc.equal(part['l_linestatus'], 'F'))\n"
    stored, _ = mr.run(keep_late, "lineitem", into="finished")
    assert stored.result_rows == mr.dataset("finished")["rows"] > 0
    _status, q1_on_f = mr.run(source("tpch_q1"), "finished")
    assert set(q1_on_f["l_linestatus"].to_pylist()) == {"F"}

    local_cluster.add_node(directory, timeout_s=120)
    # n4 took its map/reduce partitions as snapshots of their Arrow files, not as folds.
    assert node_metric(directory, "n4", "legion_handoff_snapshots_total") > 0
    wait_for_workers(mr, directory, 4)
    status, q1_after = mr.run(source("tpch_q1"), "lineitem")
    assert q1_differences(q1_after, q1_reference(lineitem)) == []
    assert status.report.data_local_percent == 100.0 and "n4" in status.report.nodes
    jobs = legion_cli("mr", "jobs", "--json", "--cluster", str(directory))
    assert len(json.loads(jobs.stdout)) >= 6


def test_a_node_killed_mid_job_does_not_stop_the_job_nor_change_its_answer(cluster_of, lineitem):
    directory, mr = cluster_of()
    wait_for_workers(mr, directory, 3)
    mr.ingest("lineitem", [lineitem])
    slow_q1 = source("tpch_q1").replace("def map(part):\n", "def map(part):\n    __import__('time').sleep(0.25)\n")
    submitted = mr.submit(slow_q1, "lineitem")  # 16 partitions, ~5 per task: each map task runs for over a second
    deadline = time.monotonic() + 30
    while mr.job(submitted["job_id"])["progress"]["map_total"] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    victim = "n2" if submitted["node"] != "n2" else "n3"
    local_cluster.stop_node(directory, victim, kill=True)
    status = mr.wait(submitted["job_id"], timeout_s=120)
    assert q1_differences(mr.result(status.job_id), q1_reference(lineitem)) == []
    assert status.report.retries >= 1 and victim not in status.report.nodes
    assert status.report.data_local_percent == 100.0


def test_a_raising_job_returns_the_user_s_traceback_the_cluster_stays_healthy_and_no_token_means_401(
    cluster_of, lineitem, legion_cli, tmp_path
):
    directory, mr = cluster_of()
    wait_for_workers(mr, directory, 3)
    mr.ingest("lineitem", [lineitem])
    bad = tmp_path / "bad.py"
    bad.write_text("def map(part):\n    return helper(part)\n\ndef helper(part):\n    raise RuntimeError('the user broke it')\n")
    failed = legion_cli("mr", "run", str(bad), "--dataset", "lineitem", "--cluster", str(directory))
    assert failed.returncode == 1
    assert "raise RuntimeError('the user broke it')" in failed.stderr and "return helper(part)" in failed.stderr
    assert "failed in map: RuntimeError: the user broke it" in failed.stderr
    job_id = failed.stderr.split("error: job ", 1)[1].split()[0]
    shown = legion_cli("mr", "status", job_id, "--cluster", str(directory))
    assert shown.returncode == 0 and "failed" in shown.stdout and "raise RuntimeError('the user broke it')" in shown.stdout
    _status, q1 = mr.run(source("tpch_q1"), "lineitem")  # the workers and nodes carry on
    assert q1_differences(q1, q1_reference(lineitem)) == []

    marker = tmp_path / "ran"
    planted = f"open({str(marker)!r}, 'w').write('ran')\ndef map(part):\n    return part\n"
    node = local_cluster.load(directory)["nodes"][0]
    for headers in ({}, {"Authorization": "Bearer not-the-token"}):
        connection = http.client.HTTPConnection(node["url"].removeprefix("http://"), timeout=10)
        connection.request("POST", "/v1/mr/jobs?dataset=lineitem", body=planted.encode(), headers=headers)
        assert connection.getresponse().status == 401
        connection.close()
    time.sleep(1.0)
    assert not marker.exists()
    assert all(job["dataset"] == "lineitem" and "ran" not in str(job) for job in mr.jobs())
    assert len(mr.jobs()) == 2

    # The Dask scheduler and every worker listen on loopback only (their HTTP servers too).
    document = local_cluster.load(directory)
    dask_pids = [service["pid"] for service in document["services"] if service["engine"] == "mr"]
    dask_pids += [child.pid for node in document["nodes"] for child in psutil.Process(node["pid"]).children()]
    listening = [c.laddr.ip for pid in dask_pids for c in psutil.Process(pid).net_connections("inet") if c.status == psutil.CONN_LISTEN]
    assert len(dask_pids) == 4 and listening and set(listening) == {"127.0.0.1"}


def test_dask_scheduler_runs_jobs_on_an_existing_dask_deployment(legion_cli, tmp_path):
    """``legion cluster up --dask-scheduler ADDRESS`` starts no scheduler of its own; the nodes' workers join that one."""
    import socket
    import subprocess

    from engines.mapreduce.dask_adapter import scheduler_command

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    scheduler = subprocess.Popen(scheduler_command(port=port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    address = f"tcp://127.0.0.1:{port}"
    directory = tmp_path / "cluster"
    try:
        up = legion_cli("cluster", "up", "--dir", str(directory), "--base-port", "0", "--dask-scheduler", address)
        assert up.returncode == 0, up.stderr
        assert not local_cluster.load(directory).get("services")  # no scheduler of its own
        with Client.connect(directory) as client:
            status = client.wait_for(
                lambda s: all((m.get("attributes") or {}).get("mr.resource") for m in s["members"]), timeout_s=CLUSTER_START_TIMEOUT_S
            )
            assert {m["attributes"]["mr.scheduler"] for m in status["members"]} == {address}
            mr = MRClient(client)
            lines = word_lines(200)
            text = tmp_path / "lines.jsonl"
            text.write_text("".join(json.dumps({"line": line}) + "\n" for line in lines))
            assert legion_cli("mr", "ingest", "text", str(text), "--cluster", str(directory)).returncode == 0
            _status, counted = mr.run(source("word_count"), "text")
        assert dict(zip(counted["key"].to_pylist(), counted["value"].to_pylist())) == Counter(w for line in lines for w in line.lower().split())
    finally:
        local_cluster.down(directory)
        scheduler.terminate()
        scheduler.wait(timeout=30)


def test_a_cluster_started_with_mr_scheduler_off_runs_no_dask_stores_datasets_and_refuses_jobs_saying_why(
    cluster_of,
):
    directory, mr = cluster_of(options=NO_DASK)
    document = local_cluster.load(directory)
    assert document["services"] == []  # no scheduler of its own
    for node in document["nodes"]:
        children = psutil.Process(node["pid"]).children(recursive=True)
        assert not children, f"{node['id']} runs {[' '.join(c.cmdline()[:4]) for c in children]}"
    mr.ingest_table("numbers", pa.table({"n": pa.array(range(1_000), pa.int64())}))
    assert mr.dataset("numbers")["rows"] == 1_000
    with pytest.raises(Conflict) as refused:
        mr.submit(source("word_count"), "numbers")
    assert "mr.scheduler=off" in refused.value.message and "mr.scheduler=tcp://" in refused.value.message
