"""Running one job on Dask: load, map, shuffle, reduce, finalize — with retries when a node dies.

I/O: drives a ``dask_adapter.DaskSession`` from one thread and blocks; every
wait is bounded (``POLL_INTERVAL_S`` slices up to the job's deadline). The
runner does not know where inputs live: an ``Inputs`` object plans map
tasks (``cluster_inputs`` on a Legion cluster: snapshots of partitions on
the replica the planner chose; ``local_run`` for files) and says which nodes
are dead. User code never runs here — only in workers (``tasks``).

The stages:

1. **map**: one task per planned group of partitions, restricted by resource
   to its node's worker; each loads the job file (once per worker) and says
   how it shuffles (its REDUCERS, or map-only); only a small summary of each
   output comes back.
   When a node is marked down, its unfinished map tasks are planned again on
   other replicas and resubmitted (a task restricted to a dead worker would
   wait forever); a task that could not read its input is re-planned too.
2. **reduce**: for each of R buckets, a tiny task takes that bucket out of
   every map output where it lies, and a reduce task gathers them. If a node
   holding map outputs dies now, its map tasks run again elsewhere and the
   reduce stage is resubmitted.
3. **finalize**: one task concatenates the reduce outputs and runs
   ``finalize``; its table is the job's result.

A user's error ends the job with ``JobFailed`` (their traceback included);
retries are capped by ``RETRIES_MAX``.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Protocol

import pyarrow as pa

from engines.mapreduce import tasks
from engines.mapreduce.dask_adapter import DaskSession, TaskRef
from engines.mapreduce.report import JobReport, Progress
from engines.mapreduce.tasks import Failure, InputPiece, TaskResult
from legion.errors import DeadlineExceeded, LegionError, Unavailable

POLL_INTERVAL_S = 0.1
RESULT_TIMEOUT_S = 60.0
JOB_TIMEOUT_S_DEFAULT = 3600.0
RETRIES_MAX = 16


class JobFailed(LegionError):
    """The user's code failed; ``failure`` says in which stage, with their traceback."""

    code = "job_failed"
    http_status = 422

    def __init__(self, failure: Failure) -> None:
        super().__init__(f"the job failed in {failure.stage}: {failure.message}", traceback=failure.traceback)
        self.failure = failure


@dataclass(frozen=True, slots=True)
class PlannedTask:
    """A map task as planned: the node whose worker must run it (``""``: any worker) and what it reads."""

    node: str
    resource: str
    partitions: tuple[int, ...]
    pieces: tuple[InputPiece, ...]


class Inputs(Protocol):
    """Where a job's input lives: plans map tasks and knows which nodes died."""

    def plan(self, lost: Sequence[PlannedTask], dead: Collection[str]) -> list[PlannedTask]:
        """The map tasks for all input (``lost`` empty), or for the input of ``lost`` tasks avoiding ``dead``."""
        ...

    def dead_nodes(self) -> set[str]:
        """Nodes marked down now."""
        ...


@dataclass
class _MapTask:
    plan: PlannedTask
    output: TaskRef
    summary: TaskRef
    result: TaskResult | None = None


class _NodesLost(Exception):
    """Nodes holding map outputs died during the reduce stage."""

    def __init__(self, nodes: set[str]) -> None:
        super().__init__(sorted(nodes))
        self.nodes = nodes


class JobRunner:
    """Runs one job to its result table and report (see the module docstring)."""

    def __init__(
        self,
        session: DaskSession,
        job_id: str,
        source: str,
        inputs: Inputs,
        *,
        reducers: int | None = None,
        on_progress: Callable[[Progress], None] | None = None,
        timeout_s: float = JOB_TIMEOUT_S_DEFAULT,
    ) -> None:
        self.session, self.job_id, self.source, self.inputs = session, job_id, source, inputs
        self.reducers = reducers
        self.on_progress = on_progress
        self.deadline = time.monotonic() + timeout_s
        self.timeout_s = timeout_s
        self.report = JobReport()
        self.progress = Progress()
        self._keys = itertools.count()

    def run(self) -> tuple[pa.Table, JobReport]:
        started = time.perf_counter()
        maps = self._stage("map", lambda: self._map_stage(self.inputs.plan([], set()), self.reducers))
        # Every map task loaded the job and says how it shuffles (its REDUCERS, or map-only).
        info = maps[0].result.info if maps and maps[0].result is not None else {}
        map_only = bool(info.get("map_only", False))
        reducers = int(info.get("reducers", 1))
        self.progress.reduce_total = 0 if map_only else reducers
        for _attempt in range(RETRIES_MAX + 1):
            try:
                result = self._reduce_and_finalize(maps, reducers, map_only)
                break
            except _NodesLost as lost:
                dead, kept = lost.nodes, maps
                maps = self._stage("map", lambda: self._rerun(kept, dead, reducers))
        else:
            raise Unavailable(f"job {self.job_id}: nodes kept dying; gave up after {RETRIES_MAX} retries")
        table = result.output
        assert isinstance(table, pa.Table)
        self._count(maps, table, map_only, reducers)
        self.report.seconds = round(time.perf_counter() - started, 6)
        self._progress("done")
        return table, self.report

    # --- stages ------------------------------------------------------------------

    def _map_stage(self, plans: Sequence[PlannedTask], reducers: int | None) -> list[_MapTask]:
        """Run ``plans`` to completion, re-planning the tasks of nodes that die."""
        self._progress("map")
        running = [self._submit_map(plan, reducers) for plan in plans]
        done: list[_MapTask] = []
        self.progress.map_total = len(running) + self.progress.map_done
        while running:
            self._check_deadline()
            finished = self.session.wait_any([m.summary for m in running], POLL_INTERVAL_S)
            dead = self.inputs.dead_nodes()
            lost: list[_MapTask] = []
            for task in list(running):
                if task.summary.key in finished and self._settle(task, dead):
                    running.remove(task)
                    done.append(task)
                    self.progress.map_done += 1
                elif task.plan.node in dead or task.summary.key in finished:
                    lost.append(task)
            if lost:
                running = [t for t in running if t not in lost]
                running += self._replan(lost, dead | {t.plan.node for t in lost if t.plan.node not in dead}, reducers)
            self._progress("map")
        return done

    def _settle(self, task: _MapTask, dead: set[str]) -> bool:
        """Record a finished map task; False if it must run again elsewhere (its node died, or its input was unreadable)."""
        if task.summary.status != "finished":
            if task.plan.node in dead or task.plan.node:
                return False
            raise Unavailable(f"map task {task.summary.key} failed in Dask: {self.session.error_text(task.summary)}")
        result: TaskResult = self.session.result(task.summary, RESULT_TIMEOUT_S)
        if result.failure is not None and not result.failure.retryable:
            raise JobFailed(result.failure)
        if result.failure is not None:
            return False
        task.result = result
        return True

    def _replan(self, lost: Sequence[_MapTask], dead: set[str], reducers: int | None) -> list[_MapTask]:
        self.session.cancel([ref for task in lost for ref in (task.output, task.summary)])
        self.report.retries += len(lost)
        if self.report.retries > RETRIES_MAX:
            raise Unavailable(f"job {self.job_id}: map tasks kept failing; gave up after {RETRIES_MAX} retries")
        return [self._submit_map(plan, reducers) for plan in self.inputs.plan([t.plan for t in lost], dead)]

    def _rerun(self, maps: list[_MapTask], dead: set[str], reducers: int) -> list[_MapTask]:
        """The map tasks whose outputs died with their node, run again elsewhere; the others kept."""
        lost = [m for m in maps if m.plan.node in dead]
        kept = [m for m in maps if m.plan.node not in dead]
        self.session.cancel([ref for task in lost for ref in (task.output, task.summary)])
        self.report.retries += len(lost)
        if self.report.retries > RETRIES_MAX:
            raise Unavailable(f"job {self.job_id}: map tasks kept failing; gave up after {RETRIES_MAX} retries")
        self.progress.map_done = len(kept)
        return kept + self._map_stage(self.inputs.plan([t.plan for t in lost], dead), reducers)

    def _reduce_and_finalize(self, maps: list[_MapTask], reducers: int, map_only: bool) -> TaskResult:
        started = time.perf_counter()
        self._progress("reduce")
        generation = next(self._keys)
        reduce_refs: list[TaskRef] = []
        helpers: list[TaskRef] = []
        if not map_only:
            for r in range(reducers):
                pieces = [
                    self.session.submit(tasks.bucket_of, m.output, r, key=self._key(f"bucket-{generation}-{i}-{r}"))
                    for i, m in enumerate(maps)
                ]
                helpers += pieces
                reduce_refs.append(self.session.submit(tasks.reduce_task, self.source, *pieces, key=self._key(f"reduce-{r}")))
        inputs = reduce_refs if not map_only else [m.output for m in maps]
        final = self.session.submit(tasks.finalize_task, self.source, *inputs, key=self._key("finalize"))
        reduced_at: float | None = None if reduce_refs else started
        self.progress.reduce_done = 0
        while final.status not in ("finished", "error", "cancelled"):
            self._check_deadline()
            self.session.wait_any([final, *[r for r in reduce_refs if r.status == "pending"]], POLL_INTERVAL_S)
            self.progress.reduce_done = sum(r.status == "finished" for r in reduce_refs)
            if reduced_at is None and self.progress.reduce_done == len(reduce_refs):
                reduced_at = time.perf_counter()
            self._progress("reduce" if reduced_at is None else "finalize")
            dead = {m.plan.node for m in maps} & self.inputs.dead_nodes()
            if dead:
                self.session.cancel([*helpers, *reduce_refs, final])
                raise _NodesLost(dead)
        if final.status != "finished":
            raise Unavailable(f"job {self.job_id}: the final task failed in Dask: {self.session.error_text(final)}")
        result: TaskResult = self.session.result(final, RESULT_TIMEOUT_S)
        finished = time.perf_counter()
        reduced_at = reduced_at if reduced_at is not None else finished
        if not map_only:
            self.report.add_stage("reduce", reduced_at - started)
        self.report.add_stage("finalize", finished - reduced_at)
        if result.failure is not None:
            raise JobFailed(result.failure)
        return result

    # --- bookkeeping ----------------------------------------------------------------

    def _submit_map(self, plan: PlannedTask, reducers: int | None) -> _MapTask:
        key = self._key(f"map-{plan.node or 'any'}")
        output = self.session.submit(tasks.map_task, self.source, plan.pieces, reducers, key=key, resource=plan.resource)
        summary = self.session.submit(tasks.summary_of, output, key=key + "-summary", resource=plan.resource)
        return _MapTask(plan, output, summary)

    def _count(self, maps: list[_MapTask], table: pa.Table, map_only: bool, reducers: int) -> None:
        report = self.report
        report.map_tasks = len(maps)
        report.reduce_tasks = 0 if map_only else reducers
        for m in maps:
            assert m.result is not None
            info = m.result.info
            report.partitions += int(info.get("partitions", 0))  # type: ignore[arg-type]
            report.rows_in += int(info.get("rows_in", 0))  # type: ignore[arg-type]
            report.rows_map_out += int(info.get("rows_out", 0))  # type: ignore[arg-type]
            if not map_only:
                report.bytes_shuffled += int(info.get("bytes_out", 0))  # type: ignore[arg-type]
            # Data-local: the worker that ran it sits beside the node whose files it read.
            local = not m.plan.node or m.result.node == m.plan.node
            report.map_tasks_local += local
            report.nodes[m.result.node or "embedded"] = report.nodes.get(m.result.node or "embedded", 0) + 1
        report.rows_out = table.num_rows
        report.bytes_out = table.nbytes

    def _stage(self, name: str, action: Callable[[], object]) -> object:
        started = time.perf_counter()
        try:
            return action()
        finally:
            self.report.add_stage(name, time.perf_counter() - started)

    def _check_deadline(self) -> None:
        if time.monotonic() > self.deadline:
            raise DeadlineExceeded(f"job {self.job_id} did not finish within {self.timeout_s:g}s")

    def _key(self, what: str) -> str:
        return f"legion-mr-{self.job_id}-{what}-{next(self._keys)}"

    def _progress(self, stage: str) -> None:
        self.progress.stage = stage
        if self.on_progress is not None:
            self.on_progress(Progress(**vars(self.progress)))
