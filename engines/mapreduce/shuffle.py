"""The stages of a job on tables: map (with the map-side combine), the shuffle into buckets, reduce, finalize.

Pure: Arrow tables in, Arrow tables out; the user's functions are called
here (so this runs in Dask workers, never in a node), each wrapped so that
whatever it raises comes back as a ``JobCodeError`` naming the stage, with
the user's traceback.

- ``run_map(job, parts, reducers)``: ``map`` on every non-empty partition
  table, the outputs concatenated, ``combine`` once on the lot (one task
  may hold several partitions: combining across them shrinks the shuffle
  more), then cut into ``reducers`` buckets by the stable hash of the
  ``KEY`` columns (``rows.stable_hash``): bucket ``hash % reducers``. A
  map-only job keeps one bucket.
- ``run_reduce(job, pieces)``: one bucket from every map output,
  concatenated, then ``reduce``.
- ``run_finalize(job, tables)``: the reduce outputs (or, map-only, the map
  outputs) concatenated, then ``finalize``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from engines.mapreduce.job_file import Job, JobCodeError, user_traceback
from engines.mapreduce.rows import split_by, stable_hash
from legion.errors import BadRequest

STAGE_MAP = "map"
STAGE_COMBINE = "combine"
STAGE_REDUCE = "reduce"
STAGE_FINALIZE = "finalize"


@dataclass
class MapOutput:
    """One map task's output: a table (or None) per reduce bucket, and what it counted."""

    buckets: list[pa.Table | None]
    rows_in: int = 0
    rows_out: int = 0
    partitions: int = 0
    bytes_out: int = 0
    counters: dict[str, int] = field(default_factory=dict)


def call_stage(stage: str, function: Callable[[pa.Table], Any], table: pa.Table) -> pa.Table:
    """``function(table)`` as a table; the user's exception (or a wrong return type) as a JobCodeError."""
    try:
        result = function(table)
    except Exception as exc:  # deliberate: user code may raise anything; it is returned to the user with their traceback
        raise JobCodeError(stage, f"{type(exc).__name__}: {exc}", user_traceback(exc)) from None
    if isinstance(result, pa.RecordBatch):
        return pa.Table.from_batches([result])
    if not isinstance(result, pa.Table):
        raise JobCodeError(stage, f"{stage}() returned {type(result).__name__}; it must return a pyarrow.Table")
    return result


def concat(stage: str, tables: Iterable[pa.Table | None]) -> pa.Table | None:
    """The non-empty tables as one (types promoted where Arrow can), or None if there are none."""
    present = [t for t in tables if t is not None and t.num_rows]
    if not present:
        return None
    if len(present) == 1:
        return present[0]
    try:
        return pa.concat_tables(present, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise JobCodeError(stage, f"the {stage} outputs do not share one schema: {exc}") from None


def run_map(job: Job, parts: Iterable[pa.Table], reducers: int) -> MapOutput:
    """Map every partition table, combine, and cut into buckets (see the module docstring)."""
    outputs: list[pa.Table] = []
    rows_in = partitions = 0
    for part in parts:
        partitions += 1
        rows_in += part.num_rows
        if part.num_rows:
            outputs.append(call_stage(STAGE_MAP, job.map, part))
    table = concat(STAGE_MAP, outputs)
    if table is not None and job.combine is not None:
        table = call_stage(STAGE_COMBINE, job.combine, table)
    if job.map_only or table is None or not table.num_rows:
        buckets: list[pa.Table | None] = [table if table is not None and table.num_rows else None]
        if not job.map_only:
            buckets = [None] * reducers
    else:
        buckets = bucketize(table, job.key, reducers)
    rows_out = table.num_rows if table is not None else 0
    bytes_out = sum(b.nbytes for b in buckets if b is not None)
    return MapOutput(buckets, rows_in=rows_in, rows_out=rows_out, partitions=partitions, bytes_out=bytes_out)


def bucketize(table: pa.Table, key: Sequence[str], reducers: int) -> list[pa.Table | None]:
    """``table`` cut into ``reducers`` buckets by the stable hash of its ``key`` columns."""
    missing = [name for name in key if name not in table.column_names]
    if missing:
        raise JobCodeError(STAGE_MAP, f"KEY column(s) {missing} are not in the map output's columns {table.column_names}")
    try:
        hashed = stable_hash([table.column(name) for name in key])
    except BadRequest as exc:  # the user's KEY columns have a type rows cannot be grouped by
        raise JobCodeError(STAGE_MAP, exc.message) from None
    return split_by(table, (hashed % reducers).astype("int64"), reducers)


def run_reduce(job: Job, pieces: Iterable[pa.Table | None]) -> pa.Table | None:
    """``reduce`` on one bucket of every map output, or None when the bucket is empty."""
    assert job.reduce is not None
    table = concat(STAGE_REDUCE, pieces)
    if table is None:
        return None
    return call_stage(STAGE_REDUCE, job.reduce, table)


def run_finalize(job: Job, tables: Iterable[pa.Table | None]) -> pa.Table:
    """The job's result: the outputs concatenated, then ``finalize`` (an empty table when there is nothing)."""
    table = concat(STAGE_FINALIZE, tables)
    if table is None:
        return pa.table({})  # nothing to finalize: a user's finalize need not handle "no rows at all"
    if job.finalize is not None:
        table = call_stage(STAGE_FINALIZE, job.finalize, table)
    return table
