"""The map/reduce engine's side of the engine contract: catalog, partition files, apply, flush, fold.

I/O (through ``partition_files`` and ``catalog_store``). One ``MapReduceEngine``
per node holds the node's catalog of datasets and, per open partition, its
batch files. The core calls it as ``legion.engine`` says:

- ``apply_batch``: catalog operations first (a ``drop``, or a newer
  ``create`` of the same name, deletes the dead incarnation's files from
  every partition this node holds), then batches — each written as its own
  file, skipped if already there or if its incarnation is dead.
- ``durable_on_apply = False``: a batch file is visible once written (an
  atomic rename) and durable after ``flush`` fsyncs it; only then does the
  core's checkpoint move and the operation leave the log. A replay after a
  crash finds the files already there and skips them.
- ``fold`` yields the catalog and one batch operation per file (same batch
  id and version), so a handoff rebuilds the partition exactly; the core
  deletes the partition's directory after ``drop`` — running jobs read hard-
  linked snapshots, which survive that (see ``partition_files``).
- ``coverage_many`` answers one node's share of: dataset statistics
  (``stats``), job snapshots (``snapshot``/``release``), the catalog
  (``datasets``) and this node's jobs (``jobs``/``job``, see ``job_service``).

Services: ``start`` runs this node's Dask worker as a sidecar (a child that
dies with the node and is restarted if it exits) connected to the scheduler
named by the node option ``mr.scheduler``, and publishes the worker's
resource and thread count as member attributes (``planner``); jobs
submitted to this node run from here (``job_service``). ``local_services``
gives ``legion cluster up`` the cluster's one Dask scheduler, on 127.0.0.1,
unless ``--option mr.scheduler=ADDRESS`` names an existing deployment.
``mr.scheduler=off`` runs no Dask at all (no scheduler, no workers), for a
cluster that only stores datasets or does not use map/reduce: datasets are
stored and listed as usual, and a job is refused with 409 saying why.

Node options: ``mr.scheduler`` (``tcp://HOST:PORT``, or ``off``), ``mr.worker-threads``
(default: half the cores, at least one — the worker shares the machine with
its node), ``mr.worker-host`` (default ``127.0.0.1``).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.ipc as ipc

from engines.mapreduce import rows as arrow_rows
from engines.mapreduce.catalog_store import CatalogStore
from engines.mapreduce.datasets import (
    CATALOG_KINDS,
    ENGINE_NAME,
    ID_PATTERN,
    KIND_BATCH,
    KIND_CREATE,
    Catalog,
    Decoded,
    batch_body,
    batch_key,
    decode,
    parse_batch_key,
)
from engines.mapreduce.partition_files import (
    FILE_SUFFIX,
    PartitionFiles,
    link_snapshot,
    read_batch,
    release_snapshot,
    snapshot_dir,
    sweep_snapshots,
    version_of,
)
from engines.mapreduce.dask_adapter import (
    OPTION_SCHEDULER,
    SCHEDULER_OFF,
    DaskTls,
    resource_name,
    scheduler_command,
    split_address,
    worker_command,
    worker_environment,
)
from engines.mapreduce.planner import RESOURCE_ATTRIBUTE, THREADS_ATTRIBUTE
from engines.mapreduce.report import STATE_FAILED, STATE_RUNNING, STATE_SUCCEEDED
from legion.dashboard import DashboardPanel, PanelLookup
from legion.engine import Engine, LocalService, NodeInfo, PartitionSnapshot, Route
from legion.errors import BadRequest, ConfigError, NotOwner
from legion.hash_tree import ops_version
from legion.replication import Operation
from legion.runtime.sidecar import Sidecar

log = logging.getLogger(__name__)

OPTION_WORKER_THREADS = "mr.worker-threads"
OPTION_WORKER_HOST = "mr.worker-host"
SNAPSHOT_SWEEP_INTERVAL_S = 600


class MapReduceEngine(Engine):
    """Datasets stored as Arrow files in the partitions; jobs run on Dask workers beside them."""

    name = ENGINE_NAME
    durable_on_apply = False

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        # Guards _held, _store and _catalog: the writer thread changes them while workers read.
        self._lock = threading.RLock()
        self._held: dict[int, PartitionFiles] = {}
        self._store: CatalogStore | None = None
        self._catalog = Catalog()
        self.services: Any = None  # the node's JobService once ``start`` ran (job_service)
        self._worker: Sidecar | None = None
        self._swept_at = time.monotonic()

    # --- lifecycle ----------------------------------------------------------------

    def open(self, partition: int, directory: Path) -> None:
        with self._lock:
            if self._store is None:
                self._store = CatalogStore(self.root, self.durability)
                self._catalog = self._store.load()
                sweep_snapshots(self.root)
            if partition not in self._held:
                files = PartitionFiles(directory)
                self._held[partition] = files
                for incarnation in files.incarnations():
                    if self._catalog.is_dead(incarnation):
                        files.delete(incarnation)

    def close(self, partition: int) -> None:
        with self._lock:
            self._held.pop(partition, None)
            if self._held or self._store is None:
                return
            store, self._store = self._store, None
        store.close()

    # --- services beside the node ------------------------------------------------------

    def start(self, node: NodeInfo) -> None:
        from engines.mapreduce.job_service import JobService

        scheduler = node.options.get(OPTION_SCHEDULER, "")
        tls = DaskTls.from_options(node.options)  # a TLS node: Dask traffic under the cluster CA too
        self.services = JobService(node.node_id, scheduler, tls=tls)
        if scheduler == SCHEDULER_OFF:
            log.info("%s=%s: this node runs no Dask worker, and no jobs", OPTION_SCHEDULER, SCHEDULER_OFF)
            return
        if not scheduler:
            log.warning("no %s option: this node runs no Dask worker and cannot run jobs", OPTION_SCHEDULER)
            return
        split_address(scheduler)
        threads = _threads(node.options.get(OPTION_WORKER_THREADS))
        argv = worker_command(
            scheduler, node_id=node.node_id, threads=threads, local_directory=str(node.root / "dask-worker"),
            host=node.options.get(OPTION_WORKER_HOST, "127.0.0.1"), tls=tls,
        )  # fmt: skip
        self._worker = Sidecar("dask-worker", argv, log_path=node.root / "dask-worker.log", env=worker_environment(node.node_id))
        self._worker.start()
        node.publish({RESOURCE_ATTRIBUTE: resource_name(node.node_id), THREADS_ATTRIBUTE: str(threads), OPTION_SCHEDULER: scheduler})

    def stop(self) -> None:
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.stop()
        if self.services is not None:
            self.services.close()

    @classmethod
    def local_services(cls, directory: Path, options: Mapping[str, str]) -> Sequence[LocalService]:
        if options.get(OPTION_SCHEDULER):
            return ()  # an existing Dask deployment, or none wanted (``off``)
        port = _free_port()
        tls = DaskTls.from_options(options)  # `legion cluster up --tls`: a certificate for the scheduler
        protocol = "tls" if tls is not None else "tcp"
        return (
            LocalService(
                "dask-scheduler",
                scheduler_command(host="127.0.0.1", port=port, tls=tls),
                ready_address=f"127.0.0.1:{port}",
                options_to_nodes={OPTION_SCHEDULER: f"{protocol}://127.0.0.1:{port}"},
                env={"DASK_DISTRIBUTED__LOGGING__DISTRIBUTED": "warning"},
            ),
        )

    # --- writes (the writer thread) ---------------------------------------------------

    def validate(self, op: Operation) -> None:
        decoded = decode(op)
        if op.kind == KIND_CREATE:
            arrow_rows.schema_of(decoded.schema)
        elif op.kind == KIND_BATCH:
            # The header only: decoding the whole payload here would stall the event loop.
            try:
                ipc.open_stream(pa.py_buffer(decoded.payload)).schema  # noqa: B018
            except (pa.ArrowInvalid, OSError):
                raise BadRequest("a batch's payload is not an Arrow IPC stream") from None

    def apply(self, partition: int, ops: Sequence[Operation]) -> None:
        self.apply_batch({partition: ops})

    def apply_batch(self, batch: Mapping[int, Sequence[Operation]]) -> None:
        decoded = [(op, decode(op)) for ops in batch.values() for op in ops]
        self._apply_catalog([(op, d) for op, d in decoded if op.kind in CATALOG_KINDS])
        for op, d in decoded:
            if op.kind != KIND_BATCH or self._catalog.is_dead(d.incarnation):
                continue
            files = self._files(op.partition)
            if files.path(d.incarnation, d.batch_id).exists():
                continue  # a replay, a handoff of what we have, a retried write: nothing to do
            table = arrow_rows.decode_payload(d.payload)
            files.write(d.incarnation, d.batch_id, table, (op.hlc, op.origin, op.key))

    def _apply_catalog(self, items: list[tuple[Operation, Decoded]]) -> None:
        if not items:
            return
        store = self._require_store()
        changed = False
        for op, d in items:
            if self._catalog.apply(op, d):
                book = self._catalog.created if op.kind == KIND_CREATE else self._catalog.dropped
                store.record(op.kind, d.incarnation, book[d.incarnation])
                changed = True
        if changed:
            with self._lock:
                held = list(self._held.values())
            for files in held:
                for incarnation in files.incarnations():
                    if self._catalog.is_dead(incarnation):
                        files.delete(incarnation)

    def flush(self, partitions: Collection[int]) -> None:
        for p in partitions:
            files = self._held.get(p)
            if files is not None:
                files.sync()
        if time.monotonic() - self._swept_at > SNAPSHOT_SWEEP_INTERVAL_S:
            self._swept_at = time.monotonic()
            sweep_snapshots(self.root)  # snapshots of jobs whose node died before releasing them

    # --- reads (worker threads) -------------------------------------------------------

    def read(self, partition: int, query: Any) -> Any:
        """``{"op": "dataset", "name"}`` → the dataset as this replica knows it, or None."""
        self._require_held(partition)
        if isinstance(query, dict) and query.get("op") == "dataset" and isinstance(query.get("name"), str):
            return self.describe(query["name"])
        raise BadRequest("a map/reduce read is a dataset lookup")

    def describe(self, name: str) -> dict[str, Any] | None:
        """``{"name", "incarnation", "schema", "key"}`` of a live dataset, or None."""
        with self._lock:
            incarnation = self._catalog.live(name)
            if incarnation is None:
                return None
            entry = self._catalog.created[incarnation]
            return {"name": name, "incarnation": incarnation, "schema": entry.schema, "key": entry.key_column}

    def datasets(self) -> list[dict[str, Any]]:
        with self._lock:
            names = sorted(self._catalog.live_datasets())
        return [d for d in (self.describe(n) for n in names) if d is not None]

    def holds_partitions(self) -> bool:
        with self._lock:
            return bool(self._held)

    def coverage_many(self, partitions: Sequence[int], query: Any) -> Any:
        held = [self._require_held(p) for p in partitions]
        if not isinstance(query, dict):
            raise BadRequest("a map/reduce coverage query is a map")
        op = query.get("op")
        if op == "datasets":
            return self.datasets()
        if op in ("jobs", "job"):
            return self.services.answer(query) if self.services is not None else None
        if op == "release":
            release_snapshot(self.root, _job_id(query))
            return True
        incarnation = query.get("incarnation")
        if not isinstance(incarnation, str):
            raise BadRequest("a map/reduce coverage query names an incarnation")
        if op == "stats":
            return {str(p): list(files.stats(incarnation)) for p, files in zip(partitions, held)}
        if op == "snapshot":
            return self._snapshot(_job_id(query), incarnation, partitions, held)
        raise BadRequest(f"unknown map/reduce coverage op {op!r}")

    def _snapshot(self, job_id: str, incarnation: str, partitions: Sequence[int], held: Sequence[PartitionFiles]) -> Any:
        """Hard-link each partition's files for a job; per partition its links, rows and bytes."""
        out = {}
        base = snapshot_dir(self.root, job_id)
        for p, files in zip(partitions, held):
            links = link_snapshot(files, incarnation, base / str(p))
            rows, size, _count = files.stats(incarnation)
            out[str(p)] = {"paths": [str(link) for link in links], "rows": rows, "bytes": size}
        return out

    # --- operating ---------------------------------------------------------------

    def metrics(self) -> Mapping[str, float]:
        """Datasets known here, and this node's jobs (running, finished, failed) and their map/reduce tasks."""
        with self._lock:
            datasets = len(self._catalog.live_datasets())
        jobs = self.services.board.all() if self.services is not None else []
        return {
            "datasets": datasets,
            "jobs_running": sum(job.state == STATE_RUNNING for job in jobs),
            "jobs_succeeded": sum(job.state == STATE_SUCCEEDED for job in jobs),
            "jobs_failed": sum(job.state == STATE_FAILED for job in jobs),
            "map_tasks_done": sum(job.progress.map_done for job in jobs),
            "reduce_tasks_done": sum(job.progress.reduce_done for job in jobs),
        }

    def dashboard_panel(self) -> DashboardPanel:
        return DashboardPanel(
            title="Map/reduce",
            figures={"datasets": "datasets", "jobs_running": "jobs running", "jobs_succeeded": "jobs succeeded",
                     "jobs_failed": "jobs failed", "map_tasks_done": "map tasks done", "reduce_tasks_done": "reduce tasks done"},
            lookups=[PanelLookup(label="Job status", path="/v1/mr/jobs/{job}", fields=["job"])],
        )  # fmt: skip

    def fold(self, partition: int) -> Iterator[Operation]:
        files = self._require_held(partition)
        yield from self._catalog_ops(partition)
        for incarnation, path in self._batch_files(partition, files):
            try:
                yield self._batch_operation(partition, incarnation, path)
            except FileNotFoundError:
                continue  # dropped while we folded

    # Anti-entropy (``Engine.versions``): a partition's keys are its catalog operations' keys and one
    # key per batch file, ``BATCH_KEY_PREFIX + incarnation + NUL + batch id``, so a batch missing on one
    # replica ships alone. A batch's version is its operation's ``hlc@origin`` read from the file's
    # metadata (no rows read); a catalog key's is the digest of its operations, as the default does.

    def versions(self, partition: int, keys: Collection[bytes] | None = None) -> Iterator[tuple[bytes, bytes]]:
        files = self._require_held(partition)
        wanted = None if keys is None else set(keys)
        grouped: dict[bytes, list[list[object]]] = {}
        for op in self._catalog_ops(partition):
            if wanted is None or op.key in wanted:
                grouped.setdefault(op.key, []).append(op.to_wire())
        for key, wires in grouped.items():
            yield key, ops_version(wires)
        if wanted is None:
            found = self._batch_files(partition, files)
        else:
            found = [item for key in wanted if (item := self._batch_file(partition, files, key)) is not None]
        for incarnation, path in found:
            try:
                hlc, origin, _key = version_of(path)
            except FileNotFoundError:
                continue
            yield batch_key(incarnation, path.stem), b"%d@%s" % (hlc, origin.encode())

    def fold_keys(self, partition: int, keys: Collection[bytes]) -> Iterator[Operation]:
        files = self._require_held(partition)
        wanted = set(keys)
        yield from (op for op in self._catalog_ops(partition) if op.key in wanted)
        for key in sorted(wanted):
            item = self._batch_file(partition, files, key)
            if item is not None:
                try:
                    yield self._batch_operation(partition, *item)
                except FileNotFoundError:
                    continue

    def digest_keys(self, op: Operation) -> Collection[bytes] | None:
        if op.kind != KIND_BATCH:
            return None  # the catalog is every partition's: a create or drop changes them all
        d = decode(op)
        return (batch_key(d.incarnation, d.batch_id),)

    def _catalog_ops(self, partition: int) -> list[Operation]:
        with self._lock:
            return self._catalog.operations(partition)

    def _batch_files(self, partition: int, files: PartitionFiles) -> list[tuple[str, Path]]:
        """The batch files ``fold`` yields: those of live incarnations and of ones this node has no create of."""
        with self._lock:
            live = set(self._catalog.live_datasets().values())
            created = set(self._catalog.created)
        return [
            (incarnation, path)
            for incarnation in files.incarnations()
            if incarnation in live or incarnation not in created  # dead ones: the catalog tells the receiver
            for path in files.batches(incarnation)
        ]

    def _batch_file(self, partition: int, files: PartitionFiles, key: bytes) -> tuple[str, Path] | None:
        parsed = parse_batch_key(key)
        if parsed is None:
            return None
        incarnation, batch_id = parsed
        path = files.path(incarnation, batch_id)
        with self._lock:
            dead = incarnation in self._catalog.created and incarnation not in self._catalog.live_datasets().values()
        return None if dead or not path.exists() else (incarnation, path)

    def _batch_operation(self, partition: int, incarnation: str, path: Path) -> Operation:
        table, (hlc, origin, key) = read_batch(path)
        body = batch_body(incarnation, path.stem, table.num_rows, arrow_rows.encode_payload(table))
        return Operation(ENGINE_NAME, partition, key, hlc, origin, KIND_BATCH, body)

    def snapshot(self, partition: int, into: Path) -> PartitionSnapshot:
        """The live incarnations' batch files, hard-linked as ``<incarnation>/<batch id>.arrow``, and the catalog."""
        files = self._require_held(partition)
        with self._lock:
            catalog_ops = self._catalog.operations(partition)
        names = []
        for incarnation in files.incarnations():
            if self._catalog.is_dead(incarnation):
                continue
            for link in link_snapshot(files, incarnation, into / incarnation):
                names.append(f"{incarnation}/{link.name}")
        return PartitionSnapshot(files=names, operations=catalog_ops)

    def install(self, partition: int, directory: Path, snapshot: PartitionSnapshot) -> None:
        """Move in each received batch file this partition lacks (the catalog operations came through the log first)."""
        files = self._require_held(partition)
        for name in snapshot.files:
            incarnation, batch_id = _batch_file_name(name)
            if self._catalog.is_dead(incarnation):
                continue
            files.adopt(incarnation, batch_id, directory / name)

    # --- HTTP and CLI -----------------------------------------------------------------

    def routes(self) -> Sequence[Route]:
        from engines.mapreduce.handlers import routes

        return routes(self)

    @classmethod
    def cli(cls) -> Any:
        from engines.mapreduce.cli import app  # a node never needs typer

        return app

    def _files(self, partition: int) -> PartitionFiles:
        return self._require_held(partition)

    def _require_store(self) -> CatalogStore:
        store = self._store
        if store is None:
            raise NotOwner("the map/reduce engine holds no partition on this node")
        return store

    def _require_held(self, partition: int) -> PartitionFiles:
        files = self._held.get(partition)
        if files is None:
            raise NotOwner(f"partition {partition} is not open in the map/reduce engine on this node")
        return files


def _threads(raw: str | None) -> int:
    if raw is None or raw == "":
        return max(1, (os.cpu_count() or 2) // 2)
    if not raw.isdigit() or not 1 <= int(raw) <= 256:
        raise ConfigError(f"--option {OPTION_WORKER_THREADS} must be a number of threads from 1 to 256, got {raw!r}")
    return int(raw)


def _free_port() -> int:
    """A port free on 127.0.0.1 right now, for the scheduler a local cluster starts."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _batch_file_name(name: str) -> tuple[str, str]:
    """``(incarnation, batch id)`` of a snapshot file named ``<incarnation>/<batch id>.arrow``; BadRequest otherwise."""
    incarnation, _, file_name = name.partition("/")
    batch_id = file_name.removesuffix(FILE_SUFFIX)
    if not (ID_PATTERN.fullmatch(incarnation) and ID_PATTERN.fullmatch(batch_id) and file_name.endswith(FILE_SUFFIX)):
        raise BadRequest(f"snapshot file {name!r} is not <incarnation>/<batch id>{FILE_SUFFIX}")
    return incarnation, batch_id


def _job_id(query: Mapping[str, Any]) -> str:
    job_id = query.get("job")
    if not isinstance(job_id, str) or not job_id.isalnum():
        raise BadRequest("a snapshot names its job")
    return job_id
