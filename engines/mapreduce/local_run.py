"""Running a job with no Legion cluster: input files, an embedded in-process Dask cluster.

I/O: reads the input files' metadata and starts (then stops) an in-process
Dask cluster — one worker with a thread per core, no dashboard, on
127.0.0.1. ``legion mr run JOB.py --input FILE...`` calls ``run_local``; the
job runs exactly as on a cluster (same runner, same tasks), with map tasks
reading pieces of the input files instead of partitions: a Parquet file is
cut along its row groups into about two pieces per thread, a CSV or JSON-lines
file is one piece. This is the user's own process, so the job file runs here
(in the worker's threads), as it does in any Dask client's.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Collection, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from engines.mapreduce.dask_adapter import DaskSession
from engines.mapreduce.job_file import check_source
from engines.mapreduce.job_runner import JOB_TIMEOUT_S_DEFAULT, JobRunner, PlannedTask
from engines.mapreduce.report import JobReport, Progress
from engines.mapreduce.tasks import InputPiece
from legion.errors import BadRequest, ConfigError

EXTENSIONS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}
PIECES_PER_THREAD = 2


def input_format(path: Path, given: str | None = None) -> str:
    """The format of an input file: ``given``, else its extension's; BadRequest if unknown."""
    if given:
        if given not in ("parquet", "csv", "jsonl"):
            raise BadRequest(f"--format must be parquet, csv or jsonl, got {given!r}")
        return given
    found = EXTENSIONS.get(path.suffix.lower())
    if found is None:
        raise BadRequest(f"cannot tell the format of {path} from its extension; pass --format parquet|csv|jsonl")
    return found


def pieces_of(paths: Sequence[Path], format: str | None, pieces_wanted: int) -> list[InputPiece]:
    """The input files cut into pieces for map tasks (see the module docstring)."""
    pieces: list[InputPiece] = []
    for path in paths:
        if not path.is_file():
            raise ConfigError(f"no input file {path}")
        kind = input_format(path, format)
        if kind != "parquet":
            pieces.append(InputPiece(path.name, kind, (str(path),), size_bytes=path.stat().st_size))
            continue
        metadata = pq.ParquetFile(path).metadata
        groups = list(range(metadata.num_row_groups))
        per_piece = max(1, -(-len(groups) // max(1, pieces_wanted)))
        for start in range(0, len(groups), per_piece):
            chosen = tuple(groups[start : start + per_piece])
            rows = sum(metadata.row_group(g).num_rows for g in chosen)
            pieces.append(InputPiece(f"{path.name}[{chosen[0]}:{chosen[-1] + 1}]", "parquet", (str(path),), chosen, rows))
    return pieces


class FileInputs:
    """Input files as map tasks for any worker; nothing dies in an embedded cluster."""

    def __init__(self, pieces: Sequence[InputPiece], tasks: int) -> None:
        self.pieces = list(pieces)
        self.tasks = max(1, tasks)

    def plan(self, lost: Sequence[PlannedTask], dead: Collection[str]) -> list[PlannedTask]:
        if lost:
            return list(lost)  # no node to avoid: run them again as they were
        groups: list[list[InputPiece]] = [[] for _ in range(min(self.tasks, len(self.pieces)) or 1)]
        for index, piece in enumerate(self.pieces):
            groups[index % len(groups)].append(piece)
        return [PlannedTask("", "", (), tuple(group)) for group in groups if group]

    def dead_nodes(self) -> set[str]:
        return set()


def run_local(
    source: str | bytes,
    paths: Sequence[Path],
    *,
    format: str | None = None,
    reducers: int | None = None,
    threads: int | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    timeout_s: float = JOB_TIMEOUT_S_DEFAULT,
) -> tuple[pa.Table, JobReport]:
    """Run a job over ``paths`` on an embedded Dask cluster; its result and report."""
    text = check_source(source)
    if not paths:
        raise BadRequest("give at least one --input file")
    threads = threads or os.cpu_count() or 1
    inputs = FileInputs(pieces_of(paths, format, threads * PIECES_PER_THREAD), threads * PIECES_PER_THREAD)
    session = DaskSession.embedded(threads=threads)
    try:
        runner = JobRunner(
            session, secrets.token_hex(6), text, inputs, reducers=reducers, on_progress=on_progress, timeout_s=timeout_s
        )
        return runner.run()
    finally:
        session.close()
