"""Local services: processes engines ask ``legion cluster up`` to run beside a local cluster's nodes.

I/O (processes, files, a TCP probe). A map/reduce engine needs one Dask
scheduler per cluster; in production the operator runs it and passes its
address to every node (``--option mr.scheduler=tcp://…``), but a local
cluster should just work. So before starting any node, ``legion cluster up``
asks every installed engine's ``Engine.local_services(directory, options)``
for ``LocalService``s, starts each, waits (bounded) until it is ready, and
hands the options each yields to every node it starts. The engine decides
what an option replaces: it returns nothing when the user's options already
name an existing service.

In ``cluster.json``::

    "options":  {KEY: VALUE}   every node's options: the services' and the user's (the user's win)
    "services": [service, ...]

where a service is ``{"id": "<engine>/<name>", "engine", "name", "argv",
"env", "pid", "started", "log", "ready_file", "ready_address"}`` and its
files live in ``DIR/services/<engine>/`` (its log is ``<name>.log`` there).
``legion cluster down`` stops the services after the nodes; ``start-node``
and ``add-node`` start any recorded service that is not running again first
(same command, so same address), so a stopped cluster comes back whole.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from legion.engine import LocalService, load_engines
from legion.errors import ConfigError, DeadlineExceeded
from legion.options import check_options
from legion.runtime.local_cluster import processes

SERVICES_DIR_NAME = "services"
# A TCP readiness probe gives up on one attempt after this long.
PROBE_TIMEOUT_S = 0.5

Save = Callable[[], None]
Progress = Callable[[str], None]


def start_all(
    directory: Path,
    document: dict[str, Any],
    user_options: Mapping[str, str],
    *,
    deadline: float,
    save: Save,
    progress: Progress | None = None,
) -> dict[str, str]:
    """Start every installed engine's local services, recorded in ``document``; the nodes' options.

    Each service is recorded (and ``save`` called) as soon as it is spawned, so
    ``down`` can stop it even if this fails part way."""
    document.setdefault("services", [])
    yielded: dict[str, str] = {}
    for engine, service in _planned(directory, user_options):
        clash = sorted(set(service.options_to_nodes) & set(yielded))
        if clash:
            raise ConfigError(f"local service {engine}/{service.name} yields options another service yields: {clash}")
        yielded.update(service.options_to_nodes)
        entry = _entry(directory, engine, service)
        document["services"].append(entry)
        _launch(entry, save, progress)
    for entry in document["services"]:
        wait_ready(entry, deadline)
    return check_options({**yielded, **user_options})


def ensure_running(document: dict[str, Any], *, deadline: float, save: Save, progress: Progress | None = None) -> None:
    """Start again every recorded service that is not running (after ``down``, or a crash), and wait until ready."""
    restarted = [entry for entry in document.get("services", ()) if not processes.is_running(entry)]
    for entry in restarted:
        _launch(entry, save, progress)
    for entry in restarted:
        wait_ready(entry, deadline)


def stop_all(document: dict[str, Any]) -> list[str]:
    """Stop every recorded service; the ids of those that were running."""
    services = document.get("services", [])
    stopped = processes.stop(services, kill=False)
    for entry in services:
        entry["pid"] = None
    return stopped


def wait_ready(entry: dict[str, Any], deadline: float) -> None:
    """Wait until the service is ready; ConfigError with its log if it exits, DeadlineExceeded at ``deadline``."""
    while True:
        if not processes.is_running(entry):
            raise processes.exited_error(entry, f"local service {entry['id']}")
        if _is_ready(entry):
            return
        if time.monotonic() >= deadline:
            waited_for = entry["ready_file"] or entry["ready_address"]
            raise DeadlineExceeded(f"local service {entry['id']} was not ready ({waited_for}) in time; see {entry['log']}")
        time.sleep(processes.POLL_INTERVAL_S)


def _planned(directory: Path, user_options: Mapping[str, str]) -> list[tuple[str, LocalService]]:
    """Every (engine, service) the installed engines ask for, given the user's options."""
    planned: list[tuple[str, LocalService]] = []
    frozen = MappingProxyType(dict(user_options))
    for name, engine in sorted(load_engines().items()):
        home = directory / SERVICES_DIR_NAME / name
        home.mkdir(parents=True, exist_ok=True)
        services = list(engine.local_services(home, frozen))
        if not all(isinstance(service, LocalService) for service in services):
            raise ConfigError(f"engine {name!r}: local_services must return LocalService values")
        names = [service.name for service in services]
        if len(set(names)) != len(names):
            raise ConfigError(f"engine {name!r} asks for two local services with one name: {names}")
        planned += [(name, service) for service in services]
    return planned


def _entry(directory: Path, engine: str, service: LocalService) -> dict[str, Any]:
    if service.ready_address is not None:
        _split_address(service.ready_address)  # refuse a malformed address before anything starts
    return {
        "id": f"{engine}/{service.name}",
        "engine": engine,
        "name": service.name,
        "argv": list(service.argv),
        "env": dict(service.env),
        "pid": None,
        "started": None,
        "log": str(directory / SERVICES_DIR_NAME / engine / f"{service.name}.log"),
        "ready_file": None if service.ready_file is None else str(service.ready_file),
        "ready_address": service.ready_address,
    }


def _launch(entry: dict[str, Any], save: Save, progress: Progress | None) -> None:
    """Spawn the service and record its pid at once."""
    if entry["ready_file"]:
        # A file left by an earlier run must not pass for this run's readiness.
        Path(entry["ready_file"]).unlink(missing_ok=True)
    try:
        child = processes.spawn(entry["argv"], log_path=Path(entry["log"]), env=entry["env"])
    except OSError as exc:
        raise ConfigError(f"cannot start local service {entry['id']} ({entry['argv'][0]}): {exc.strerror}") from None
    entry["pid"] = child.pid
    entry["started"] = processes.start_ticks(child.pid)
    save()
    if progress is not None:
        progress(f"started local service {entry['id']} (pid {child.pid})")


def _is_ready(entry: dict[str, Any]) -> bool:
    if entry["ready_file"]:
        path = Path(entry["ready_file"])
        return path.exists() and path.stat().st_size > 0
    host, port = _split_address(entry["ready_address"])
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


def _split_address(address: str) -> tuple[str, int]:
    """``HOST:PORT``, with or without a scheme (``tcp://``), as a host and a port."""
    _, _, rest = address.rpartition("://")
    host, separator, port = rest.rpartition(":")
    if not separator or not port.isdigit():
        raise ConfigError(f"a local service's ready_address must be HOST:PORT, got {address!r}")
    return host.strip("[]"), int(port)
