"""The functions Dask workers run for a job: load the job, map, pick a bucket, reduce, finalize.

I/O: runs **in a Dask worker** (or the embedded cluster of ``legion mr run
--input``), reads input files from the worker's own disk — a map task's
partition files are memory-mapped where its node keeps them (a snapshot of
hard links, so a partition moving away cannot delete them under the task) —
and executes the user's job code (``job_file.load_job``).

Every function returns a value and raises nothing the user caused: the
user's errors come back as a ``Failure`` (stage, message, the user's
traceback), so Dask neither retries them nor has to unpickle an exception
class that exists only in the job file. A failure to read input is
``retryable``: the runner plans the task again on another replica.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.ipc as ipc
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from engines.mapreduce.job_file import Job, JobCodeError, load_job
from engines.mapreduce.rows import normalize
from engines.mapreduce.shuffle import MapOutput, run_finalize, run_map, run_reduce

# Set in a Legion node's Dask worker (the sidecar's environment): the node it runs beside.
NODE_ENVIRONMENT = "LEGION_NODE_ID"
FORMATS = ("ipc", "parquet", "csv", "jsonl")
JOB_CACHE_ENTRIES_MAX = 16
REDUCERS_DEFAULT = 4

_jobs: OrderedDict[str, Job] = OrderedDict()
_jobs_lock = threading.Lock()


@dataclass(frozen=True, slots=True)
class InputPiece:
    """What one call of ``map`` reads: a partition's files (``ipc``), or a piece of an input file."""

    label: str
    format: str
    paths: tuple[str, ...]
    row_groups: tuple[int, ...] | None = None
    size_bytes: int = 0


@dataclass(frozen=True, slots=True)
class Failure:
    """Why a task produced nothing: the user's code failed (with their traceback), or its input could not be read."""

    stage: str
    message: str
    traceback: str = ""
    retryable: bool = False

    def to_json(self) -> dict[str, str]:
        return {"stage": self.stage, "message": self.message, "traceback": self.traceback}


@dataclass
class TaskResult:
    """A task's outcome: its output (or failure), the node it ran beside, and how long it took."""

    output: MapOutput | pa.Table | None = None
    failure: Failure | None = None
    node: str = ""
    seconds: float = 0.0
    info: dict[str, object] = field(default_factory=dict)


def job_for(source: str) -> Job:
    """The job of ``source``, loaded once per worker process (its module body runs once)."""
    digest = hashlib.sha256(source.encode()).hexdigest()
    with _jobs_lock:
        job = _jobs.get(digest)
        if job is not None:
            _jobs.move_to_end(digest)
            return job
    job = load_job(source)
    with _jobs_lock:
        _jobs[digest] = job
        while len(_jobs) > JOB_CACHE_ENTRIES_MAX:
            _jobs.popitem(last=False)
    return job


def reducers_for(job: Job, asked: int | None) -> int:
    """Reduce buckets: one for a map-only job, else what the request asked, the job's REDUCERS, or the default."""
    return 1 if job.map_only else (asked or job.reducers or REDUCERS_DEFAULT)


def map_task(source: str, pieces: Sequence[InputPiece], reducers: int | None) -> TaskResult:
    """``map`` (and ``combine``) over every piece, cut into reduce buckets (see ``reducers_for``).

    The job file is loaded here (once per worker), so a job needs no round trip before its maps."""
    started = time.perf_counter()
    try:
        job = job_for(source)
        output = run_map(job, read_pieces(pieces), reducers_for(job, reducers))
    except JobCodeError as exc:
        return _failed(exc, started)
    except (OSError, pa.ArrowInvalid) as exc:
        failure = Failure("input", f"cannot read the task's input: {exc}", retryable=True)
        return TaskResult(failure=failure, node=_node(), seconds=time.perf_counter() - started)
    info = {"map_only": job.map_only, "reducers": len(output.buckets)}
    return TaskResult(output=output, node=_node(), seconds=time.perf_counter() - started, info=info)


def bucket_of(result: TaskResult, bucket: int) -> pa.Table | None:
    """One bucket of a map task's output (runs where the output is, so only that bucket travels)."""
    if not isinstance(result.output, MapOutput):
        return None
    return result.output.buckets[bucket]


def reduce_task(source: str, *pieces: pa.Table | None) -> TaskResult:
    """``reduce`` over one bucket of every map output."""
    started = time.perf_counter()
    try:
        table = run_reduce(job_for(source), pieces)
    except JobCodeError as exc:
        return _failed(exc, started)
    return TaskResult(output=table, node=_node(), seconds=time.perf_counter() - started)


def summary_of(result: TaskResult) -> TaskResult:
    """A map task's outcome without its output (runs where the output is, so only the counts travel)."""
    output = result.output
    info: dict[str, object] = {}
    if isinstance(output, MapOutput):
        info = {**result.info, "rows_in": output.rows_in, "rows_out": output.rows_out, "bytes_out": output.bytes_out,
                "partitions": output.partitions}  # fmt: skip
    return TaskResult(failure=result.failure, node=result.node, seconds=result.seconds, info=info)


def finalize_task(source: str, *results: TaskResult) -> TaskResult:
    """``finalize`` over the reduce outputs (or, for a map-only job, the map outputs).

    A reduce task's failure is passed on as the job's: the runner reads only this task's result."""
    started = time.perf_counter()
    tables: list[pa.Table | None] = []
    for result in results:
        if result.failure is not None:
            return result
        if isinstance(result.output, MapOutput):
            tables.extend(result.output.buckets)
        else:
            tables.append(result.output)
    try:
        table = run_finalize(job_for(source), tables)
    except JobCodeError as exc:
        return _failed(exc, started)
    return TaskResult(output=table, node=_node(), seconds=time.perf_counter() - started)


def read_pieces(pieces: Sequence[InputPiece]) -> Iterator[pa.Table]:
    """Each piece as one table, read lazily (one partition in memory at a time, mapped not copied)."""
    for piece in pieces:
        yield read_piece(piece)


def read_piece(piece: InputPiece) -> pa.Table:
    if piece.format == "ipc":
        tables = [ipc.open_file(pa.memory_map(path)).read_all() for path in piece.paths]
        if not tables:
            return pa.table({})
        return tables[0] if len(tables) == 1 else pa.concat_tables(tables)
    if piece.format == "parquet":
        [path] = piece.paths
        file = pq.ParquetFile(path)
        groups = list(piece.row_groups) if piece.row_groups is not None else list(range(file.num_row_groups))
        return normalize(file.read_row_groups(groups))
    [path] = piece.paths
    if piece.format == "csv":
        return normalize(pa_csv.read_csv(path))
    if piece.format == "jsonl":
        return normalize(pa_json.read_json(path))
    raise ValueError(f"unknown input format {piece.format!r}")


def _node() -> str:
    return os.environ.get(NODE_ENVIRONMENT, "")


def _failed(exc: JobCodeError, started: float) -> TaskResult:
    failure = Failure(exc.stage, exc.message, exc.user_traceback)
    return TaskResult(failure=failure, node=_node(), seconds=time.perf_counter() - started)
