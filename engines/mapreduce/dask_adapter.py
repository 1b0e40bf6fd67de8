"""The one module that imports Dask's distributed scheduler; everything Dask-specific lives here.

I/O. Three things:

- ``DaskSession``: a client of one Dask scheduler — an existing deployment
  by address, or an embedded in-process cluster (``legion mr run --input``)
  — with the few calls the job runner makes (submit with a resource
  restriction, wait for the first of many futures with a timeout, cancel,
  the live workers). Connection failures become ``Unavailable``; every wait
  has a timeout.
- ``worker_command``/``worker_environment``: how a node starts its Dask
  worker sidecar — bound to 127.0.0.1 unless told otherwise, no nanny (the
  node's sidecar manager restarts it), no dashboard, a resource naming its
  node, and tuned to share the machine with its node: the statistical
  profiler off and the background timers slowed down (see ``QUIET_WORKER``).
- ``scheduler_command``: how ``legion cluster up`` starts the cluster's one
  scheduler, on 127.0.0.1.

On a TLS cluster (``DaskTls``: the node's ``tls.ca``/``tls.cert``/``tls.key``
options, the same files its HTTPS uses) the scheduler listens on ``tls://``,
and the scheduler, the workers and the job client all use Dask's own TLS
settings (``--tls-ca-file``/``--tls-cert``/``--tls-key``, ``Security`` with
``require_encryption``): every Dask connection is mutual TLS under the
cluster's CA.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from legion.errors import ConfigError, DeadlineExceeded, Unavailable

log = logging.getLogger(__name__)

# The node option naming the cluster's Dask scheduler; ``off`` runs no Dask at all (no scheduler, workers or jobs).
OPTION_SCHEDULER = "mr.scheduler"
SCHEDULER_OFF = "off"
CONNECT_TIMEOUT_S = 10.0
CLOSE_TIMEOUT_S = 10.0
# Dask configuration for a worker that shares a machine with its Legion node.
# Measured on this 2-core machine (``python bench/mapreduce.py --idle``): an
# idle worker with Dask's defaults used 3.3% of a core, with these 0.3% (the
# issue's own measurement elsewhere: ~15% → ~1.5%).
QUIET_WORKER: Mapping[str, str] = {
    "DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED": "False",
    "DASK_DISTRIBUTED__WORKER__PROFILE__INTERVAL": "1s",
    "DASK_DISTRIBUTED__WORKER__PROFILE__CYCLE": "60s",
    "DASK_DISTRIBUTED__ADMIN__TICK__INTERVAL": "1s",
    "DASK_DISTRIBUTED__ADMIN__TICK__LIMIT": "30s",
    "DASK_DISTRIBUTED__ADMIN__SYSTEM_MONITOR__INTERVAL": "5s",
    "DASK_DISTRIBUTED__WORKER__MEMORY__MONITOR_INTERVAL": "1s",
    "DASK_DISTRIBUTED__SCHEDULER__WORK_STEALING": "False",
    "DASK_DISTRIBUTED__LOGGING__DISTRIBUTED": "warning",
}
# Resource restrictions, not worker names, pin map tasks to a node: a restarted
# worker keeps its resource, while a task pinned by name waits forever (dask/distributed#8600).
RESOURCE_PREFIX = "legion-node-"
# Enough units that a node's worker never runs fewer tasks than it has threads because of them.
RESOURCE_UNITS = 1_000


def resource_name(node_id: str) -> str:
    """The Dask resource a node's worker declares and its map tasks require."""
    return RESOURCE_PREFIX + node_id


@dataclass(frozen=True, slots=True)
class TaskRef:
    """A submitted task: its Dask future, opaque outside this module."""

    key: str
    future: Any

    @property
    def status(self) -> str:
        """``pending``, ``finished``, ``error``, ``cancelled`` or ``lost``."""
        return str(self.future.status)


class DaskSession:
    """A client of one Dask scheduler (see the module docstring). Thread-safe for the calls below."""

    def __init__(self, client: Any, cluster: Any = None) -> None:
        self._client = client
        self._cluster = cluster

    @classmethod
    def connect(cls, address: str, *, timeout_s: float = CONNECT_TIMEOUT_S, tls: DaskTls | None = None) -> DaskSession:
        """A session with the scheduler at ``address`` (over TLS with ``tls``); Unavailable if it cannot be reached in time."""
        from distributed import Client

        try:
            security = tls.security() if tls is not None else None
            client = Client(address, timeout=timeout_s, set_as_default=False, security=security)
        except (OSError, TimeoutError) as exc:
            raise Unavailable(f"cannot reach the Dask scheduler at {address}: {exc}") from None
        return cls(client)

    @classmethod
    def embedded(cls, *, threads: int | None = None) -> DaskSession:
        """An in-process cluster (one worker, ``threads`` threads; default one per core), for runs without Legion.

        In-process transport between client, scheduler and worker; their HTTP servers on 127.0.0.1 only."""
        from distributed import Client, LocalCluster

        threads = threads or os.cpu_count() or 1
        cluster = LocalCluster(
            n_workers=1, threads_per_worker=threads, processes=False,
            # Its HTTP servers (health, metrics) would listen on every interface otherwise.
            dashboard_address="127.0.0.1:0", worker_dashboard_address="127.0.0.1:0",
            silence_logs=logging.ERROR,  # a cancelled task at shutdown is not news to the user
        )
        return cls(Client(cluster, set_as_default=False), cluster)

    def submit(
        self, function: Callable[..., Any], *args: Any, key: str, resource: str = "", priority: int = 0
    ) -> TaskRef:
        """Run ``function(*args)`` (TaskRefs among ``args`` are passed as their results), restricted to
        the workers declaring ``resource`` when given."""
        unwrapped = [a.future if isinstance(a, TaskRef) else a for a in args]
        resources = {resource: 1} if resource else None
        future = self._client.submit(function, *unwrapped, key=key, resources=resources, pure=False, priority=priority)
        return TaskRef(key, future)

    def wait_any(self, tasks: Collection[TaskRef], timeout_s: float) -> set[str]:
        """Keys of the tasks done (finished, failed or cancelled) once one is, or after ``timeout_s``."""
        from distributed import wait

        if not tasks:
            return set()
        try:
            with self._client.as_current():  # wait() looks for "the current client"; we set none as default
                wait([t.future for t in tasks], timeout=timeout_s, return_when="FIRST_COMPLETED")
        except TimeoutError:
            pass
        return {t.key for t in tasks if t.future.done()}

    def result(self, task: TaskRef, timeout_s: float) -> Any:
        """The task's value; DeadlineExceeded if it takes longer; its error re-raised if it failed."""
        try:
            return task.future.result(timeout=timeout_s)
        except TimeoutError:
            raise DeadlineExceeded(f"task {task.key} did not finish within {timeout_s:g}s") from None

    def error_text(self, task: TaskRef) -> str:
        """Why a task ended in ``error`` (not a user error: those come back as values)."""
        exception = task.future.exception(timeout=CONNECT_TIMEOUT_S)
        return f"{type(exception).__name__}: {exception}"

    def cancel(self, tasks: Iterable[TaskRef]) -> None:
        futures = [t.future for t in tasks]
        if futures:
            self._client.cancel(futures, force=True)

    def workers(self) -> dict[str, dict[str, Any]]:
        """The live workers: address → ``{"name", "resources", "nthreads"}``."""
        info = self._client.scheduler_info(n_workers=-1)
        return {
            address: {"name": w.get("name"), "resources": w.get("resources", {}), "nthreads": w.get("nthreads", 1)}
            for address, w in info.get("workers", {}).items()
        }

    def close(self) -> None:
        try:
            self._client.close(timeout=CLOSE_TIMEOUT_S)
        finally:
            if self._cluster is not None:
                self._cluster.close(timeout=CLOSE_TIMEOUT_S)


@dataclass(frozen=True, slots=True)
class DaskTls:
    """The PEM files Dask's TLS settings take: the cluster CA, and this process's certificate and key."""

    ca: str
    cert: str
    key: str

    @classmethod
    def from_options(cls, options: Mapping[str, str]) -> DaskTls | None:
        """From the node options ``tls.ca``, ``tls.cert`` and ``tls.key`` (set on a TLS node); None without them."""
        values = [options.get(key) for key in ("tls.ca", "tls.cert", "tls.key")]
        return cls(*values) if all(values) else None  # type: ignore[arg-type]

    def argv(self) -> list[str]:
        return ["--tls-ca-file", self.ca, "--tls-cert", self.cert, "--tls-key", self.key]

    def security(self) -> Any:
        from distributed.security import Security

        return Security(tls_ca_file=self.ca, tls_client_cert=self.cert, tls_client_key=self.key, require_encryption=True)


def worker_command(
    scheduler: str, *, node_id: str, threads: int, local_directory: str, host: str = "127.0.0.1", tls: DaskTls | None = None
) -> list[str]:
    """The argv of a node's Dask worker sidecar (see the module docstring)."""
    if threads < 1:
        raise ConfigError(f"a Dask worker needs at least one thread, got {threads}")
    return [
        sys.executable, "-m", "distributed.cli.dask_worker", scheduler,
        "--name", f"legion-{node_id}",
        "--host", host,
        "--nthreads", str(threads),
        "--no-nanny",
        "--no-dashboard",
        # Without a dashboard a worker still serves HTTP (health, metrics), on every interface unless told.
        "--dashboard-address", f"{host}:0",
        "--resources", f"{resource_name(node_id)}={RESOURCE_UNITS}",
        "--local-directory", local_directory,
        "--memory-limit", "0",
    ] + (tls.argv() if tls is not None else [])  # fmt: skip


def worker_environment(node_id: str) -> dict[str, str]:
    """What the sidecar adds to the node's environment: quiet Dask settings and the node it runs beside."""
    from engines.mapreduce.tasks import NODE_ENVIRONMENT

    return {**QUIET_WORKER, NODE_ENVIRONMENT: node_id, "PYTHONUNBUFFERED": "1"}


def scheduler_command(
    *, host: str = "127.0.0.1", port: int = 0, dashboard: bool = False, tls: DaskTls | None = None
) -> list[str]:
    """The argv of the cluster's Dask scheduler, on ``host`` (loopback unless configured; ``tls://`` with ``tls``)."""
    argv = [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", host, "--port", str(port)]
    if tls is not None:
        argv += ["--protocol", "tls", *tls.argv()]
    # The scheduler serves HTTP (health, metrics, the dashboard if asked) on every interface unless told.
    argv += ["--dashboard-address", f"{host}:0"]
    return argv + ([] if dashboard else ["--no-dashboard"])


def split_address(address: str) -> tuple[str, int]:
    """``tcp://HOST:PORT`` as host and port; ConfigError otherwise."""
    scheme, _, rest = address.partition("://")
    host, _, port = rest.rpartition(":")
    if scheme not in ("tcp", "tls") or not host or not port.isdigit():
        raise ConfigError(f"a Dask scheduler address looks like tcp://HOST:PORT, got {address!r}")
    return host, int(port)


__all__: Sequence[str] = [
    "DaskSession", "DaskTls", "TaskRef", "resource_name", "scheduler_command", "split_address", "worker_command", "worker_environment",
]  # fmt: skip
