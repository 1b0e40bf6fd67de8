"""A node's jobs: submitted here, run on Dask from a thread of their own, watched, remembered.

I/O: holds this node's client of the cluster's Dask scheduler (connected on
first use), runs each job's ``JobRunner`` in a thread, and talks to the rest
of the cluster only through the ``Cluster`` handle, on the node's event loop
(``ClusterInputs``): snapshots of the partitions a plan chose, the placement
and liveness, the release of the snapshots at the end. The job file is
passed to Dask workers as text; it is never loaded in this process.

``JobBoard`` remembers the last ``JOBS_KEPT`` jobs (status, report, error)
and the results of the finished ones up to ``RESULTS_BYTES_MAX`` in all.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Collection, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from engines.mapreduce.dask_adapter import OPTION_SCHEDULER, SCHEDULER_OFF, DaskSession, DaskTls
from engines.mapreduce.datasets import ENGINE_NAME
from engines.mapreduce.job_runner import JOB_TIMEOUT_S_DEFAULT, JobFailed, JobRunner, PlannedTask
from engines.mapreduce.planner import RESOURCE_ATTRIBUTE, choose_replicas, group_tasks, tasks_per_node
from engines.mapreduce.report import STATE_FAILED, STATE_RUNNING, STATE_SUCCEEDED, JobStatus, Progress
from engines.mapreduce.tasks import InputPiece
from legion.engine import Cluster
from legion.errors import ConfigError, Conflict, LegionError, NotFound, Overloaded, Unavailable

log = logging.getLogger(__name__)

JOBS_KEPT = 200
JOBS_RUNNING_MAX = 4
RESULTS_BYTES_MAX = 512 * 1024 * 1024
LOOP_CALL_TIMEOUT_S = 60.0
SNAPSHOT_DEADLINE_MS = 30_000


@dataclass(frozen=True, slots=True)
class JobRequest:
    """What a client asked to run."""

    source: str
    dataset: str
    incarnation: str
    reducers: int | None = None
    into: str = ""
    into_key: str = ""
    timeout_s: float = JOB_TIMEOUT_S_DEFAULT


class JobBoard:
    """The jobs this node ran (see the module docstring). Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: OrderedDict[str, JobStatus] = OrderedDict()
        self._results: OrderedDict[str, bytes] = OrderedDict()

    def add(self, status: JobStatus) -> None:
        with self._lock:
            self._jobs[status.job_id] = status
            while len(self._jobs) > JOBS_KEPT:
                old, _ = self._jobs.popitem(last=False)
                self._results.pop(old, None)

    def running(self) -> int:
        with self._lock:
            return sum(s.state == STATE_RUNNING for s in self._jobs.values())

    def get(self, job_id: str) -> JobStatus | None:
        with self._lock:
            return self._jobs.get(job_id)

    def all(self) -> list[JobStatus]:
        with self._lock:
            return list(self._jobs.values())

    def keep_result(self, job_id: str, table: pa.Table) -> None:
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        data = sink.getvalue().to_pybytes()
        with self._lock:
            self._results[job_id] = data
            while sum(len(v) for v in self._results.values()) > RESULTS_BYTES_MAX and len(self._results) > 1:
                self._results.popitem(last=False)

    def result(self, job_id: str) -> bytes | None:
        with self._lock:
            return self._results.get(job_id)


class ClusterInputs:
    """A job's input on a Legion cluster: planned from the placement, read from hard-linked snapshots."""

    def __init__(self, cluster: Cluster, loop: asyncio.AbstractEventLoop, job_id: str, incarnation: str) -> None:
        self.cluster, self.loop, self.job_id, self.incarnation = cluster, loop, job_id, incarnation
        self.snapshot_nodes: set[str] = set()

    def plan(self, lost: Sequence[PlannedTask], dead: Collection[str]) -> list[PlannedTask]:
        view = self._call(self._placement())
        partitions = sorted(p for task in lost for p in task.partitions) if lost else None
        chosen, missing = choose_replicas(view, partitions, avoid=dead)
        if missing:
            raise Unavailable(
                f"no live node with a Dask worker holds partitions {missing[:20]}; "
                "is every node's worker running (see `legion cluster status`)?",
                partitions=missing,
            )
        query = {"op": "snapshot", "job": self.job_id, "incarnation": self.incarnation}
        result = self._call(
            self.cluster.coverage(ENGINE_NAME, query, partitions=sorted(chosen), prefer=chosen, deadline_ms=SNAPSHOT_DEADLINE_MS)
        )
        shares: dict[int, dict[str, Any]] = {}
        for reply in result.replies:
            self.snapshot_nodes.add(reply.node)
            for p, share in reply.value.items():
                shares[int(p)] = share
        served = dict(result.served_by)
        plans = group_tasks(served, tasks_per_node(view), {p: int(s["bytes"]) for p, s in shares.items()})
        return [
            PlannedTask(
                plan.node,
                view.attributes.get(plan.node, {}).get(RESOURCE_ATTRIBUTE, ""),
                plan.partitions,
                tuple(InputPiece(f"p{p}", "ipc", tuple(shares[p]["paths"]), size_bytes=int(shares[p]["bytes"])) for p in plan.partitions),
            )
            for plan in plans
        ]

    def dead_nodes(self) -> set[str]:
        view = self._call(self._placement())
        members = set(view.urls) | {n for prefs in view.preference for n in prefs}
        return members - set(view.live)

    def release(self) -> None:
        """Release the job's snapshots on every node that took one (best effort: they expire anyway)."""
        view = self._call(self._placement())
        prefer: dict[int, str] = {}
        for node in sorted(self.snapshot_nodes & set(view.live)):
            free = next((p for p, prefs in enumerate(view.preference) if node in prefs and p not in prefer), None)
            if free is not None:
                prefer[free] = node
        if prefer:
            query = {"op": "release", "job": self.job_id}
            try:
                self._call(self.cluster.coverage(ENGINE_NAME, query, partitions=sorted(prefer), prefer=prefer, allow_partial=True))
            except LegionError as exc:
                log.warning("job %s: releasing snapshots failed (they expire later): %s", self.job_id, exc)

    async def _placement(self) -> Any:
        return self.cluster.placement()

    def _call(self, coroutine: Any) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        return future.result(timeout=LOOP_CALL_TIMEOUT_S)


class JobService:
    """Runs and remembers this node's jobs (see the module docstring)."""

    def __init__(self, node_id: str, scheduler: str, *, tls: DaskTls | None = None) -> None:
        self.node_id = node_id
        self.scheduler = scheduler
        self.tls = tls
        self.board = JobBoard()
        self._session: DaskSession | None = None
        self._session_lock = threading.Lock()

    def session(self) -> DaskSession:
        if not self.scheduler:
            raise ConfigError("no Dask scheduler is configured: start the node with --option mr.scheduler=tcp://HOST:PORT")
        with self._session_lock:
            if self._session is None:
                self._session = DaskSession.connect(self.scheduler, tls=self.tls)
            return self._session

    def submit(self, cluster: Cluster, loop: asyncio.AbstractEventLoop, job_id: str, request: JobRequest) -> JobStatus:
        if self.scheduler == SCHEDULER_OFF:
            raise Conflict(
                f"map/reduce jobs are off on this cluster: its nodes run with --option {OPTION_SCHEDULER}={SCHEDULER_OFF}. "
                f"Start them with --option {OPTION_SCHEDULER}=tcp://HOST:PORT (or `legion cluster up` without that option) to run jobs"
            )
        if self.board.running() >= JOBS_RUNNING_MAX:
            raise Overloaded(f"node {self.node_id} already runs {JOBS_RUNNING_MAX} jobs; retry when one has finished")
        status = JobStatus(job_id, request.dataset, STATE_RUNNING, self.node_id, int(time.time() * 1000), into=request.into)
        status.reducers = request.reducers or 0
        self.board.add(status)
        thread = threading.Thread(target=self._run, args=(cluster, loop, status, request), name=f"mr-job-{job_id}", daemon=True)
        thread.start()
        return status

    def _run(self, cluster: Cluster, loop: asyncio.AbstractEventLoop, status: JobStatus, request: JobRequest) -> None:
        inputs = ClusterInputs(cluster, loop, status.job_id, request.incarnation)

        def progress(value: Progress) -> None:
            status.progress = value

        runner: JobRunner | None = None
        try:
            runner = JobRunner(
                self.session(), status.job_id, request.source, inputs,
                reducers=request.reducers, on_progress=progress, timeout_s=request.timeout_s,
            )  # fmt: skip
            table, report = runner.run()
            status.report = report
            status.reducers = report.reduce_tasks
            if request.into:
                from engines.mapreduce.handlers import store_result  # the ingest path, on the loop

                inputs._call(store_result(cluster, request.into, request.into_key, table))
            else:
                self.board.keep_result(status.job_id, table)
            status.result_rows, status.result_bytes = table.num_rows, table.nbytes
            status.state = STATE_SUCCEEDED
        except JobFailed as exc:
            status.report = runner.report if runner is not None else status.report
            status.error = {"code": "job_failed", **exc.failure.to_json()}
            status.state = STATE_FAILED
        except LegionError as exc:
            status.report = runner.report if runner is not None else status.report
            status.error = {"code": exc.code, "stage": status.progress.stage, "message": exc.message, "traceback": ""}
            status.state = STATE_FAILED
        except Exception as exc:  # a bug of ours in a background thread: the job must end as failed, not hang "running"
            log.exception("job %s failed inside Legion", status.job_id)
            status.error = {"code": "internal", "stage": status.progress.stage, "message": f"{type(exc).__name__}: {exc}", "traceback": ""}
            status.state = STATE_FAILED
        finally:
            status.finished_ms = int(time.time() * 1000)
            try:
                inputs.release()
            except (LegionError, TimeoutError, RuntimeError) as exc:  # RuntimeError: the node's loop has closed
                log.warning("job %s: could not release its snapshots (they expire later): %s", status.job_id, exc)

    def answer(self, query: dict[str, Any]) -> Any:
        """This node's share of a ``jobs``/``job`` coverage query."""
        if query.get("op") == "jobs":
            return [s.to_json() for s in self.board.all()]
        status = self.board.get(str(query.get("id")))
        return status.to_json() if status is not None else None

    def status(self, job_id: str) -> JobStatus:
        status = self.board.get(job_id)
        if status is None:
            raise NotFound(f"no job {job_id!r} on node {self.node_id}")
        return status

    def close(self) -> None:
        with self._session_lock:
            session, self._session = self._session, None
        if session is not None:
            session.close()
