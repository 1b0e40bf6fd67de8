"""The map/reduce engine's HTTP API: datasets (create, ingest, list, drop) and jobs (submit, watch, fetch).

I/O (through the ``Cluster`` handle). Handlers check their input and raise
``BadRequest``/``NotFound``/``Conflict`` naming the problem; the runtime
turns those into 4xx answers. Job code is only ever *text* here: it goes to
Dask workers, never into this process, and like every request it is only
accepted with the cluster token.

| route | does |
|---|---|
| ``GET /v1/mr/datasets`` | the datasets: rows and bytes per partition, and per node over the replicas it holds |
| ``PUT /v1/mr/datasets/{name}?key=`` | create it from an Arrow schema (``create`` to every partition) |
| ``POST /v1/mr/datasets/{name}?key=&create=1&w=`` | ingest rows: Arrow IPC stream or NDJSON, streamed |
| ``GET /v1/mr/datasets/{name}`` | one dataset: schema, key, rows and bytes |
| ``DELETE /v1/mr/datasets/{name}`` | drop it (``drop`` to every partition) |
| ``POST /v1/mr/jobs?dataset=&reducers=&into=&into_key=&timeout=`` | run the job file in the body; 202 and its id |
| ``GET /v1/mr/jobs`` | every node's jobs, newest first |
| ``GET /v1/mr/jobs/{job}?wait_ms=`` | one job: state, progress, report, error (with the user's traceback); waits for a change |
| ``GET /v1/mr/jobs/{job}/result`` | its result as an Arrow IPC stream |
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from engines.mapreduce import rows as arrow_rows
from engines.mapreduce.datasets import (
    ENGINE_NAME,
    KIND_CREATE,
    KIND_DROP,
    check_dataset_name,
    create_body,
    drop_body,
    partition_keys,
)
from engines.mapreduce.ingest import (
    ARROW_STREAM,
    PIPE_CHUNK_BYTES,
    PIPE_STALL_S,
    BodyPipe,
    Ingester,
    new_id,
    read_tables,
)
from engines.mapreduce.job_file import check_source
from engines.mapreduce.job_runner import JOB_TIMEOUT_S_DEFAULT
from engines.mapreduce.job_service import JobRequest
from engines.mapreduce.report import FINAL_STATES, JobStatus
from legion.engine import Cluster, HttpRequest, HttpResponse, Route, WriteItem
from legion.errors import BadRequest, Conflict, DeadlineExceeded, LegionError, NotFound, Unavailable

if TYPE_CHECKING:
    from engines.mapreduce.engine import MapReduceEngine

TRUE_WORDS = frozenset({"1", "true", "yes"})
# How long one hand-over to a full pipe waits before checking that the decoder still runs.
PUT_SLICE_S = 1.0
# A job status request may wait this long for a change (a long poll), checking this often.
JOB_WAIT_MS_MAX = 5_000
JOB_WAIT_POLL_S = 0.005


def routes(engine: MapReduceEngine) -> list[Route]:
    api = MapReduceApi(engine)
    return [
        Route("GET", "/v1/mr/datasets", api.list_datasets),
        Route("PUT", "/v1/mr/datasets/{name}", api.create),
        Route("POST", "/v1/mr/datasets/{name}", api.ingest, stream_body=True),
        Route("GET", "/v1/mr/datasets/{name}", api.get_dataset),
        Route("DELETE", "/v1/mr/datasets/{name}", api.drop),
        Route("POST", "/v1/mr/jobs", api.submit),
        Route("GET", "/v1/mr/jobs", api.list_jobs),
        Route("GET", "/v1/mr/jobs/{job}", api.job),
        Route("GET", "/v1/mr/jobs/{job}/result", api.result),
    ]


async def describe(engine: MapReduceEngine | None, name: str, cluster: Cluster) -> dict[str, Any] | None:
    """The live incarnation, schema and key of ``name``: this node's catalog, else a replica's."""
    check_dataset_name(name)
    found = engine.describe(name) if engine is not None else None
    if found is None:
        key = partition_keys("catalog", name, cluster.partitions)[0]
        replies = await cluster.read(ENGINE_NAME, key, {"op": "dataset", "name": name})
        found = next((r for r in replies if r is not None), None)
    return found


async def create_dataset(
    engine: MapReduceEngine | None, cluster: Cluster, name: str, schema: pa.Schema, key: str | None
) -> tuple[str, str, pa.Schema, bool]:
    """The dataset ``name`` with ``schema``, created unless it exists: (incarnation, key, schema, created)."""
    schema = arrow_rows.normalize_schema(schema)
    if key:
        arrow_rows.check_key_column(schema, key)
    found = await describe(engine, name, cluster)
    if found is not None:
        existing = arrow_rows.schema_of(found["schema"])
        if key is not None and key != found["key"]:
            raise Conflict(f"dataset {name!r} is placed by key {found['key'] or '(none)'!r}, not {key!r}")
        return found["incarnation"], found["key"], existing, False
    incarnation = new_id()
    body = create_body(name, incarnation, arrow_rows.schema_bytes(schema), key or "", cluster.partitions)
    await _to_every_partition(cluster, name, KIND_CREATE, body)
    return incarnation, key or "", schema, True


async def _to_every_partition(cluster: Cluster, name: str, kind: str, body: bytes) -> None:
    items = [WriteItem(key, kind, body) for key in partition_keys("catalog", name, cluster.partitions)]
    results = await cluster.write_many(ENGINE_NAME, items, refresh=True)
    failed = [r for r in results if isinstance(r, LegionError)]
    if failed:
        raise Unavailable(
            f"{kind} of dataset {name!r} reached only {len(results) - len(failed)} of {len(results)} partitions "
            f"({failed[0].message}); retry the same request"
        )


async def store_result(cluster: Cluster, name: str, key: str, table: pa.Table) -> int:
    """Store a job's result as dataset ``name`` (``--into``): created from its schema, rows ingested."""
    loop = asyncio.get_running_loop()
    ingester = Ingester(cluster, loop)

    async def prepare(schema: pa.Schema) -> tuple[str, str, pa.Schema]:
        incarnation, found_key, existing, _created = await create_dataset(None, cluster, name, schema, key or None)
        return incarnation, found_key, existing

    if table.num_rows:
        await asyncio.to_thread(ingester.run_in_thread, iter([table]), prepare, key or None)
    else:
        await prepare(table.schema)
    return ingester.counts.rows


class MapReduceApi:
    """The handlers, bound to this node's engine (its catalog and its jobs)."""

    def __init__(self, engine: MapReduceEngine) -> None:
        self.engine = engine

    # --- datasets ---------------------------------------------------------------

    async def create(self, req: HttpRequest, cluster: Cluster) -> HttpResponse:
        name = check_dataset_name(req.path_params["name"])
        schema = arrow_rows.schema_of(req.body)
        incarnation, key, stored, created = await create_dataset(self.engine, cluster, name, schema, req.query.get("key"))
        if not created and not stored.equals(arrow_rows.normalize_schema(schema)):
            raise Conflict(f"dataset {name!r} exists with other columns; drop it first (`legion mr drop {name}`)")
        answer = {"name": name, "incarnation": incarnation, "key": key, "schema": arrow_rows.describe_schema(stored)}
        return HttpResponse.json(answer, status=201 if created else 200)

    async def ingest(self, req: HttpRequest, cluster: Cluster) -> HttpResponse:
        started = time.monotonic()
        name = check_dataset_name(req.path_params["name"])
        create = req.query.get("create", "").lower() in TRUE_WORDS
        key = req.query.get("key") or None
        found = await describe(self.engine, name, cluster)
        if found is None and not create:
            raise NotFound(f"no dataset {name!r}: create it first (PUT with its schema) or ingest with ?create=1")
        loop = asyncio.get_running_loop()
        ingester = Ingester(cluster, loop, w=req.int_param("w"))

        async def prepare(schema: pa.Schema) -> tuple[str, str, pa.Schema]:
            incarnation, found_key, stored, _created = await create_dataset(self.engine, cluster, name, schema, key)
            return incarnation, found_key, stored

        pipe = BodyPipe()
        known = arrow_rows.schema_of(found["schema"]) if found is not None else None
        tables = read_tables(req.headers.get("Content-Type", ARROW_STREAM), pipe, known)
        decoding = asyncio.ensure_future(asyncio.to_thread(ingester.run_in_thread, tables, prepare, key))
        try:
            await _feed(req, pipe, decoding)
        except BaseException:
            # The body broke off (too large, the client went away): the decoder got the end of the
            # pipe and stops; wait for it so that no write of this request outlives the answer.
            await asyncio.wait([decoding], timeout=PIPE_STALL_S)
            raise
        await decoding
        counts = ingester.counts
        return HttpResponse.json(
            {
                "dataset": name, "rows": counts.rows, "batches": counts.batches, "bytes": counts.bytes,
                "partitions": len(counts.partitions), "took_ms": int((time.monotonic() - started) * 1000),
            }
        )  # fmt: skip

    async def get_dataset(self, req: HttpRequest, cluster: Cluster) -> HttpResponse:
        name = req.path_params["name"]
        found = await describe(self.engine, name, cluster)
        if found is None:
            raise NotFound(f"no dataset {name!r}; `legion mr datasets` lists them")
        return HttpResponse.json(await self._dataset_stats(found, cluster))

    async def list_datasets(self, req: HttpRequest, cluster: Cluster) -> HttpResponse:
        found = self.engine.datasets()
        if not found and not self.engine.holds_partitions():
            result = await cluster.coverage(ENGINE_NAME, {"op": "datasets"}, partitions=[0])
            found = result.replies[0].value if result.replies else []
        return HttpResponse.json({"datasets": [await self._dataset_stats(d, cluster) for d in found]})

    async def drop(self, req: HttpRequest, cluster: Cluster) -> HttpResponse:
        name = req.path_params["name"]
        found = await describe(self.engine, name, cluster)
        if found is None:
            raise NotFound(f"no dataset {name!r}; `legion mr datasets` lists them")
        await _to_every_partition(cluster, name, KIND_DROP, drop_body(name, found["incarnation"], cluster.partitions))
        return HttpResponse.json({"dataset": name, "dropped": True})

    async def _dataset_stats(self, found: dict[str, Any], cluster: Cluster) -> dict[str, Any]:
        """Rows and bytes per partition, and per node over every replica it holds (each live node asked at once)."""
        query = {"op": "stats", "incarnation": found["incarnation"]}
        view = cluster.placement()
        held = {n: [p for p, prefs in enumerate(view.preference) if n in prefs] for n in sorted(view.live)}
        calls = [
            cluster.coverage(ENGINE_NAME, query, partitions=parts, prefer=dict.fromkeys(parts, n), allow_partial=True)
            for n, parts in held.items() if parts
        ]  # fmt: skip
        partitions: dict[str, list[int]] = {}
        nodes: dict[str, dict[str, int]] = {}
        for result in await asyncio.gather(*calls):
            for reply in result.replies:
                node = nodes.setdefault(reply.node, {"rows": 0, "bytes": 0, "files": 0, "partitions": 0})
                for p, (rows, size, files) in reply.value.items():
                    partitions.setdefault(p, [rows, size])
                    node["rows"] += rows
                    node["bytes"] += size
                    node["files"] += files
                    node["partitions"] += 1
        missing = [p for p in range(view.partitions) if str(p) not in partitions]
        return {
            "name": found["name"], "incarnation": found["incarnation"], "key": found["key"],
            "schema": arrow_rows.describe_schema(arrow_rows.schema_of(found["schema"])),
            "rows": sum(r for r, _ in partitions.values()), "bytes": sum(b for _, b in partitions.values()),
            "partitions": {p: {"rows": r, "bytes": b} for p, (r, b) in sorted(partitions.items(), key=lambda i: int(i[0]))},
            "nodes": dict(sorted(nodes.items())), "partitions_missing": missing,
        }  # fmt: skip

    # --- jobs -------------------------------------------------------------------------

    async def submit(self, req: HttpRequest, cluster: Cluster) -> HttpResponse:
        source = check_source(req.body)
        name = req.query.get("dataset", "")
        found = await describe(self.engine, name, cluster)
        if found is None:
            raise NotFound(f"no dataset {name!r} to run the job on; `legion mr datasets` lists them")
        into = req.query.get("into", "")
        if into:
            check_dataset_name(into)
            if into == name:
                raise BadRequest("--into must name another dataset than the job's input")
        reducers = req.int_param("reducers")
        if reducers is not None and not 1 <= reducers <= 1024:
            raise BadRequest(f"reducers must be from 1 to 1024, got {reducers}")
        timeout = req.int_param("timeout")
        request = JobRequest(
            source, name, found["incarnation"], reducers, into, req.query.get("into_key", ""),
            float(timeout) if timeout and timeout > 0 else JOB_TIMEOUT_S_DEFAULT,
        )  # fmt: skip
        services = self._services()
        status = services.submit(cluster, asyncio.get_running_loop(), new_id(), request)
        return HttpResponse.json(status.to_json(), status=202)

    async def list_jobs(self, req: HttpRequest, cluster: Cluster) -> HttpResponse:
        jobs: dict[str, dict[str, Any]] = {}
        for value in await _ask_every_node(cluster, {"op": "jobs"}):
            for job in value or ():
                jobs[job["job_id"]] = job
        for status in self._services().board.all():
            jobs[status.job_id] = status.to_json()
        ordered = sorted(jobs.values(), key=lambda j: j["submitted_ms"], reverse=True)
        return HttpResponse.json({"jobs": ordered})

    async def job(self, req: HttpRequest, cluster: Cluster) -> HttpResponse:
        """One job's status; with ``?wait_ms=`` (a long poll) once it changes, ends, or the wait is over."""
        job_id = req.path_params["job"]
        wait_ms = min(max(req.int_param("wait_ms", 0) or 0, 0), JOB_WAIT_MS_MAX)
        first = await self._status(job_id, cluster)
        local = self._services().board.get(job_id)
        deadline = time.monotonic() + wait_ms / 1000
        while local is not None and local.state not in FINAL_STATES and time.monotonic() < deadline:
            await asyncio.sleep(JOB_WAIT_POLL_S)
            now = local.to_json()
            if now["state"] != first["state"] or now["progress"] != first["progress"]:
                break
        return HttpResponse.json(local.to_json() if local is not None else first)

    async def result(self, req: HttpRequest, cluster: Cluster) -> HttpResponse:
        job_id = req.path_params["job"]
        status = JobStatus.from_json(await self._status(job_id, cluster))
        if status.state != "succeeded":
            raise Conflict(f"job {job_id} has no result: it is {status.state}")
        if status.into:
            raise Conflict(f"job {job_id} stored its result as dataset {status.into!r}")
        data = self._services().board.result(job_id)
        if data is None:
            raise NotFound(f"the result of job {job_id} is kept on node {status.node} (or was evicted); ask that node")
        return HttpResponse(body=data, content_type=ARROW_STREAM)

    async def _status(self, job_id: str, cluster: Cluster) -> dict[str, Any]:
        if not job_id.isalnum():
            raise BadRequest(f"{job_id!r} is not a job id")
        local = self._services().board.get(job_id)
        if local is not None:
            return local.to_json()
        for value in await _ask_every_node(cluster, {"op": "job", "id": job_id}):
            if value is not None:
                return value
        raise NotFound(f"no job {job_id!r} on any live node")

    def _services(self) -> Any:
        services = self.engine.services
        if services is None:
            raise Unavailable("this node runs no map/reduce services yet (it is starting up)")
        return services


async def _feed(req: HttpRequest, pipe: BodyPipe, decoding: asyncio.Future[Any]) -> None:
    """Move the body into the pipe in chunks of about a megabyte; stop early if decoding failed."""
    assert req.stream is not None
    pending: list[bytes] = []
    size = 0
    try:
        async for chunk in req.stream:
            pending.append(chunk)
            size += len(chunk)
            if size >= PIPE_CHUNK_BYTES:
                await _put(pipe, b"".join(pending), decoding)
                pending, size = [], 0
        if pending:
            await _put(pipe, b"".join(pending), decoding)
    finally:
        await _put(pipe, None, decoding)


async def _put(pipe: BodyPipe, chunk: bytes | None, decoding: asyncio.Future[Any]) -> None:
    """Hand a chunk to the decoder, waiting while the pipe is full, unless the decoder has stopped."""
    deadline = time.monotonic() + PIPE_STALL_S
    while not decoding.done():  # once it stopped (an error, or the rows ended), nobody reads the pipe
        try:
            await asyncio.to_thread(pipe.put, chunk, PUT_SLICE_S)
            return
        except DeadlineExceeded:
            if time.monotonic() > deadline:
                raise


async def _ask_every_node(cluster: Cluster, query: dict[str, Any]) -> list[Any]:
    """Each live node's answer to ``query``: a coverage call over one partition each node holds."""
    view = cluster.placement()
    prefer: dict[int, str] = {}
    for node in sorted(view.live):
        free = next((p for p, prefs in enumerate(view.preference) if node in prefs and p not in prefer), None)
        if free is not None:
            prefer[free] = node
    if not prefer:
        return []
    result = await cluster.coverage(ENGINE_NAME, query, partitions=sorted(prefer), prefer=prefer, allow_partial=True)
    return [reply.value for reply in result.replies]

