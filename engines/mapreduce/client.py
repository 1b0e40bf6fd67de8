"""The map/reduce engine's client: typed methods over ``legion.client.Client``.

I/O: reads input files with pyarrow and talks to the cluster through the
wrapped ``Client`` (connections, the token, failover, typed errors). Ingest
creates the dataset first (so parallel requests cannot race to create two
incarnations), then sends the rows as Arrow IPC streams of about
``REQUEST_BYTES`` each, ``IN_FLIGHT_DEFAULT`` requests at a time, one
``Client`` per sending thread (a ``Client`` is not thread-safe); JSON lines
go as NDJSON. A job is submitted, watched until it ends (``run`` reports
progress through a callback) and its result fetched as an Arrow table.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from engines.mapreduce import rows as arrow_rows
from engines.mapreduce.datasets import check_dataset_name
from engines.mapreduce.ingest import ARROW_STREAM, NDJSON
from engines.mapreduce.local_run import input_format
from engines.mapreduce.report import FINAL_STATES, STATE_SUCCEEDED, JobStatus
from legion.errors import ConfigError, DeadlineExceeded, LegionError

if TYPE_CHECKING:
    from legion.client import Client

REQUEST_BYTES = 32 * 1024 * 1024
READ_BATCH_ROWS = 64 * 1024
IN_FLIGHT_DEFAULT = 4
BULK_TIMEOUT_S = 300.0
# Job status is a long poll: the node answers as soon as the job changes, or after this long.
STATUS_WAIT_MS = 1_000
WAIT_TIMEOUT_S_DEFAULT = 3600.0


class JobError(LegionError):
    """A job failed; ``stage`` says where and ``user_traceback`` is the user's own traceback."""

    code = "job_failed"
    http_status = 422

    def __init__(self, message: str, *, stage: str = "", user_traceback: str = "", job_id: str = "") -> None:
        super().__init__(message, stage=stage, job_id=job_id)
        self.stage = stage
        self.user_traceback = user_traceback
        self.job_id = job_id


@dataclass
class IngestReport:
    rows: int = 0
    batches: int = 0
    bytes_sent: int = 0
    seconds: float = 0.0


class MRClient:
    """Datasets and jobs through any node of a cluster."""

    def __init__(self, client: Client) -> None:
        self.client = client

    # --- datasets ---------------------------------------------------------------

    def datasets(self) -> list[dict[str, Any]]:
        return self.client.request("GET", "/v1/mr/datasets").json()["datasets"]

    def dataset(self, name: str) -> dict[str, Any]:
        return self.client.request("GET", _dataset_path(name)).json()

    def create(self, name: str, schema: pa.Schema, *, key: str | None = None) -> dict[str, Any]:
        params = {"key": key} if key else None
        body = arrow_rows.schema_bytes(arrow_rows.normalize_schema(schema))
        return self.client.request("PUT", _dataset_path(name), body=body, params=params).json()

    def drop(self, name: str) -> dict[str, Any]:
        return self.client.request("DELETE", _dataset_path(name)).json()

    def ingest_table(self, name: str, table: pa.Table, *, key: str | None = None) -> dict[str, Any]:
        """One request: ``table``'s rows into ``name`` (created if missing)."""
        params: dict[str, str] = {"create": "1"}
        if key:
            params["key"] = key
        return self.client.request(
            "POST", _dataset_path(name), body=_ipc_stream([table]), params=params, headers={"Content-Type": ARROW_STREAM}
        ).json()

    def ingest(
        self,
        name: str,
        paths: Sequence[Path],
        *,
        key: str | None = None,
        format: str | None = None,
        in_flight: int = IN_FLIGHT_DEFAULT,
        progress: Callable[[int, int], None] | None = None,
    ) -> IngestReport:
        """Ingest every row of ``paths`` (Parquet, CSV or JSON lines) into ``name``; ``progress(rows, bytes)`` per request."""
        check_dataset_name(name)
        if in_flight < 1:
            raise ConfigError("in_flight must be at least 1")
        started = time.perf_counter()
        report = IngestReport()
        formats = [input_format(Path(p), format) for p in paths]
        bodies = _bodies(paths, formats)
        first = next(bodies, None)
        if first is None:
            return report
        self._send_first(name, first, key, report, progress)
        def send(client: Client, body: _Body) -> tuple[_Body, dict[str, Any]]:
            answer = client.request("POST", _dataset_path(name), body=body.data, headers={"Content-Type": body.content_type}).json()
            return body, answer

        for body, answer in self.client.pipelined(
            bodies, send, in_flight=in_flight, timeout_s=BULK_TIMEOUT_S, thread_name="legion-mr-ingest"
        ):
            _collect(body, answer, report, progress)
        report.seconds = time.perf_counter() - started
        return report

    def _send_first(
        self, name: str, body: _Body, key: str | None, report: IngestReport, progress: Callable[[int, int], None] | None
    ) -> None:
        """The first request alone: it creates the dataset (from the rows' schema) if it does not exist."""
        params: dict[str, str] = {"create": "1"}
        if key:
            params["key"] = key
        copy = self.client.copy(timeout_s=BULK_TIMEOUT_S)
        try:
            answer = copy.request("POST", _dataset_path(name), body=body.data, params=params, headers={"Content-Type": body.content_type}).json()
        finally:
            copy.close()
        _collect(body, answer, report, progress)

    # --- jobs ------------------------------------------------------------------------

    def submit(
        self,
        source: str | bytes,
        dataset: str,
        *,
        reducers: int | None = None,
        into: str | None = None,
        into_key: str | None = None,
        timeout_s: int | None = None,
    ) -> dict[str, Any]:
        """Start a job on ``dataset``; its status (``job_id``, ``state``…)."""
        params: dict[str, str | int] = {"dataset": dataset}
        for name, value in (("reducers", reducers), ("into", into), ("into_key", into_key), ("timeout", timeout_s)):
            if value:
                params[name] = value
        body = source.encode() if isinstance(source, str) else source
        return self.client.request("POST", "/v1/mr/jobs", body=body, params=params, headers={"Content-Type": "text/x-python"}).json()

    def job(self, job_id: str, *, wait_ms: int = 0) -> dict[str, Any]:
        """The job's status; with ``wait_ms``, once it changed (progress, end) or after that long."""
        params = {"wait_ms": wait_ms} if wait_ms else None
        return self.client.request("GET", f"/v1/mr/jobs/{_job_id(job_id)}", params=params).json()

    def jobs(self) -> list[dict[str, Any]]:
        return self.client.request("GET", "/v1/mr/jobs").json()["jobs"]

    def result(self, job_id: str) -> pa.Table:
        body = self.client.request("GET", f"/v1/mr/jobs/{_job_id(job_id)}/result").body
        return ipc.open_stream(pa.py_buffer(body)).read_all()

    def wait(
        self, job_id: str, *, timeout_s: float = WAIT_TIMEOUT_S_DEFAULT, progress: Callable[[JobStatus], None] | None = None
    ) -> JobStatus:
        """Poll the job until it ends; its final status. Raises ``JobError`` if it failed."""
        deadline = time.monotonic() + timeout_s
        while True:
            status = JobStatus.from_json(self.job(job_id, wait_ms=STATUS_WAIT_MS))
            if progress is not None:
                progress(status)
            if status.state in FINAL_STATES:
                break
            if time.monotonic() > deadline:
                raise DeadlineExceeded(f"job {job_id} did not finish within {timeout_s:g}s; `legion mr status {job_id}` follows it")
        if status.state != STATE_SUCCEEDED:
            error = status.error or {}
            raise JobError(
                f"job {job_id} failed in {error.get('stage') or 'its run'}: {error.get('message', 'unknown error')}",
                stage=error.get("stage", ""), user_traceback=error.get("traceback", ""), job_id=job_id,
            )  # fmt: skip
        return status

    def run(
        self,
        source: str | bytes,
        dataset: str,
        *,
        reducers: int | None = None,
        into: str | None = None,
        into_key: str | None = None,
        timeout_s: float = WAIT_TIMEOUT_S_DEFAULT,
        progress: Callable[[JobStatus], None] | None = None,
    ) -> tuple[JobStatus, pa.Table | None]:
        """Submit, wait, fetch: the final status and the result (None when stored ``into`` a dataset)."""
        submitted = self.submit(source, dataset, reducers=reducers, into=into, into_key=into_key, timeout_s=int(timeout_s))
        status = self.wait(submitted["job_id"], timeout_s=timeout_s, progress=progress)
        return status, (None if into else self.result(status.job_id))


@dataclass(frozen=True, slots=True)
class _Body:
    data: bytes
    content_type: str
    rows: int


def _bodies(paths: Sequence[Path], formats: Sequence[str]) -> Iterator[_Body]:
    """Request bodies of about ``REQUEST_BYTES``: Arrow IPC streams (Parquet, CSV), NDJSON chunks (JSON lines)."""
    for path, kind in zip(paths, formats):
        if kind == "jsonl":
            yield from _ndjson_bodies(Path(path))
            continue
        pending: list[pa.Table] = []
        size = 0
        for table in _tables(Path(path), kind):
            pending.append(table)
            size += table.nbytes
            if size >= REQUEST_BYTES:
                yield _Body(_ipc_stream(pending), ARROW_STREAM, sum(t.num_rows for t in pending))
                pending, size = [], 0
        if pending:
            yield _Body(_ipc_stream(pending), ARROW_STREAM, sum(t.num_rows for t in pending))


def _tables(path: Path, kind: str) -> Iterator[pa.Table]:
    try:
        if kind == "parquet":
            for batch in pq.ParquetFile(path).iter_batches(batch_size=READ_BATCH_ROWS):
                yield arrow_rows.normalize(batch)
        else:
            with pa_csv.open_csv(path) as reader:
                for batch in reader:
                    yield arrow_rows.normalize(batch)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    except pa.ArrowInvalid as exc:
        raise ConfigError(f"{path} is not valid {kind}: {exc}") from None


def _ndjson_bodies(path: Path) -> Iterator[_Body]:
    try:
        with path.open("rb") as source:
            lines: list[bytes] = []
            size = 0
            for line in source:
                if not line.strip():
                    continue
                lines.append(line if line.endswith(b"\n") else line + b"\n")
                size += len(line)
                if size >= REQUEST_BYTES:
                    yield _Body(b"".join(lines), NDJSON, len(lines))
                    lines, size = [], 0
            if lines:
                yield _Body(b"".join(lines), NDJSON, len(lines))
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None


def _ipc_stream(tables: Iterable[pa.Table]) -> bytes:
    tables = list(tables)
    sink = pa.BufferOutputStream()
    with ipc.new_stream(sink, tables[0].schema) as writer:
        for table in tables:
            writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _collect(body: _Body, answer: dict[str, Any], report: IngestReport, progress: Callable[[int, int], None] | None) -> None:
    report.rows += int(answer.get("rows", 0))
    report.batches += int(answer.get("batches", 0))
    report.bytes_sent += len(body.data)
    if progress is not None:
        progress(int(answer.get("rows", 0)), len(body.data))


def _dataset_path(name: str) -> str:
    return "/v1/mr/datasets/" + check_dataset_name(name)


def _job_id(job_id: str) -> str:
    if not job_id.isalnum():
        raise ConfigError(f"{job_id!r} is not a job id (see `legion mr jobs`)")
    return job_id


__all__ = ["IngestReport", "JobError", "MRClient"]
