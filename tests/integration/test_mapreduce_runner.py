"""The job runner against a real Dask scheduler and one worker process per (pretend) node.

No Legion nodes: partitions are Arrow files written straight into each
node's folder and the plan comes from a placement built here, so these tests
look at exactly one thing — map tasks go to the worker whose node holds their
partitions, and when a node dies its tasks are planned again on another
replica's worker and the job still gives the right answer.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from engines.mapreduce.dask_adapter import DaskSession, resource_name, scheduler_command, worker_command, worker_environment
from engines.mapreduce.job_runner import JobRunner, PlannedTask
from engines.mapreduce.partition_files import PartitionFiles
from engines.mapreduce.planner import RESOURCE_ATTRIBUTE, Placement, choose_replicas, group_tasks
from engines.mapreduce.tasks import InputPiece
from legion.placement import place

NODES = ["n1", "n2", "n3"]
PARTITIONS = 12
ROWS_PER_PARTITION = 2_000
START_TIMEOUT_S = 60.0
SUM_JOB = """
import time
import pyarrow.compute as pc
KEY = ["g"]
SLEEP_S = {sleep}
def map(part):
    time.sleep(SLEEP_S)
    return part.group_by("g").aggregate([("v", "sum")]).rename_columns(["g", "v"])
def reduce(t):
    return t.group_by("g").aggregate([("v", "sum")]).rename_columns(["g", "v"])
def finalize(t):
    return t.sort_by("g")
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def dask_cluster(tmp_path) -> Iterator[tuple[str, dict[str, subprocess.Popen[bytes]]]]:
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    log = open(tmp_path / "dask.log", "ab")
    scheduler = subprocess.Popen(scheduler_command(port=port), stdout=log, stderr=log, start_new_session=True)
    workers = {
        node: subprocess.Popen(
            worker_command(address, node_id=node, threads=1, local_directory=str(tmp_path / f"w-{node}")),
            env={**os.environ, **worker_environment(node)}, stdout=log, stderr=log, start_new_session=True,
        )  # fmt: skip
        for node in NODES
    }
    try:
        session = DaskSession.connect(address, timeout_s=START_TIMEOUT_S)
        deadline = time.monotonic() + START_TIMEOUT_S
        while len(session.workers()) < len(NODES):
            assert time.monotonic() < deadline, "the Dask workers did not connect"
            time.sleep(0.1)
        session.close()
        yield address, workers
    finally:
        for process in [*workers.values(), scheduler]:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=10)
        log.close()


class Inputs:
    """Partitions as files per node; a plan from a placement; dead nodes set by the test."""

    def __init__(self, root: Path) -> None:
        self.view = Placement(
            PARTITIONS, tuple(tuple(p) for p in place(None, NODES, PARTITIONS, 2)), frozenset(NODES),
            {n: {RESOURCE_ATTRIBUTE: resource_name(n)} for n in NODES},
        )  # fmt: skip
        self.dead: set[str] = set()
        self.paths: dict[tuple[str, int], list[str]] = {}
        for p in range(PARTITIONS):
            table = pa.table({"g": [f"g{i % 5}" for i in range(ROWS_PER_PARTITION)], "v": [p * 10_000 + i for i in range(ROWS_PER_PARTITION)]})
            for node in self.view.preference[p]:
                files = PartitionFiles(root / node / str(p))
                files.write("00000000000000a1", f"{p:016x}", table, (1, "n1", b"k"))
                self.paths[(node, p)] = [str(path) for path in files.batches("00000000000000a1")]
        self.expected = pa.table({"g": [f"g{i % 5}" for i in range(ROWS_PER_PARTITION)] * PARTITIONS,
                                  "v": [p * 10_000 + i for p in range(PARTITIONS) for i in range(ROWS_PER_PARTITION)]})  # fmt: skip

    def plan(self, lost: Sequence[PlannedTask], dead: Collection[str]) -> list[PlannedTask]:
        partitions = sorted(p for task in lost for p in task.partitions) if lost else None
        chosen, missing = choose_replicas(self.view, partitions, avoid=dead)
        assert not missing
        return [
            PlannedTask(t.node, resource_name(t.node), t.partitions,
                        tuple(InputPiece(f"p{p}", "ipc", tuple(self.paths[(t.node, p)])) for p in t.partitions))
            for t in group_tasks(chosen, 1)
        ]  # fmt: skip

    def dead_nodes(self) -> set[str]:
        return set(self.dead)


def expected_sums(inputs: Inputs) -> list[dict[str, object]]:
    return inputs.expected.group_by("g").aggregate([("v", "sum")]).rename_columns(["g", "v"]).sort_by("g").to_pylist()


def test_every_map_task_runs_beside_its_partitions(dask_cluster, tmp_path):
    address, _workers = dask_cluster
    inputs = Inputs(tmp_path / "data")
    session = DaskSession.connect(address)
    try:
        table, report = JobRunner(session, "j1", SUM_JOB.format(sleep=0), inputs, reducers=3).run()
    finally:
        session.close()
    assert table.to_pylist() == expected_sums(inputs)
    assert (report.map_tasks, report.map_tasks_local, report.retries) == (3, 3, 0)
    assert report.data_local_percent == 100.0 and sorted(report.nodes) == NODES
    assert report.rows_in == PARTITIONS * ROWS_PER_PARTITION and report.partitions == PARTITIONS


def test_a_node_killed_mid_job_has_its_map_tasks_planned_again_on_another_replica(dask_cluster, tmp_path):
    address, workers = dask_cluster
    inputs = Inputs(tmp_path / "data")
    session = DaskSession.connect(address)

    def kill_n2_once_maps_run() -> None:
        time.sleep(1.0)  # every map task sleeps 0.5 s per partition: they are running now
        workers["n2"].send_signal(signal.SIGKILL)
        inputs.dead.add("n2")  # what Legion's failure detector would say a few seconds later

    killer = threading.Thread(target=kill_n2_once_maps_run)
    killer.start()
    try:
        table, report = JobRunner(session, "j2", SUM_JOB.format(sleep=0.5), inputs, reducers=2).run()
    finally:
        killer.join()
        session.close()
    assert table.to_pylist() == expected_sums(inputs)
    assert report.retries >= 1
    assert "n2" not in report.nodes and report.data_local_percent == 100.0
    assert pc.sum(table["v"]).as_py() == pc.sum(inputs.expected["v"]).as_py()
