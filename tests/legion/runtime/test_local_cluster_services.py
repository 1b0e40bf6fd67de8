"""Local services with real processes and stand-in engines: start, readiness, options, skip, stop, restart."""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from legion.engine import Engine, LocalService
from legion.errors import ConfigError, DeadlineExceeded
from legion.runtime.local_cluster import processes as local_processes, services as local_services

# Writes "ready" to the file it is given, then waits to be stopped.
READY_WHEN_WRITTEN = "import pathlib, sys, time; pathlib.Path(sys.argv[1]).write_text('ready'); time.sleep(600)"
# Listens on the port it is given, then waits to be stopped.
LISTENING = (
    "import socket, sys, time; s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
    "s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen(); time.sleep(600)"
)


class SchedulerEngine(Engine):
    """Asks for a 'scheduler' service unless ``sched.address`` is already given."""

    name = "sched"

    @classmethod
    def local_services(cls, directory: Path, options: Mapping[str, str]) -> Sequence[LocalService]:
        if "sched.address" in options:
            return ()
        ready = directory / "scheduler.ready"
        return [
            LocalService(
                "scheduler",
                [sys.executable, "-c", READY_WHEN_WRITTEN, str(ready)],
                ready_file=ready,
                options_to_nodes={"sched.address": f"file://{ready}", "sched.shared": "from-service"},
            )
        ]


class ListenerEngine(Engine):
    """Asks for a service that is ready once it accepts TCP connections."""

    name = "listener"
    port = 0

    @classmethod
    def local_services(cls, directory: Path, options: Mapping[str, str]) -> Sequence[LocalService]:
        return [
            LocalService(
                "server",
                [sys.executable, "-c", LISTENING, str(cls.port)],
                ready_address=f"tcp://127.0.0.1:{cls.port}",
                options_to_nodes={"listener.address": f"127.0.0.1:{cls.port}"},
            )
        ]


class CrashingEngine(Engine):
    name = "crashing"

    @classmethod
    def local_services(cls, directory: Path, options: Mapping[str, str]) -> Sequence[LocalService]:
        return [LocalService("broken", [sys.executable, "-c", "print('no config here'); raise SystemExit(3)"], ready_file=directory / "never")]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def cluster_dir(tmp_path: Path):
    document: dict[str, Any] = {}
    yield tmp_path, document
    local_services.stop_all(document)


def use_engines(monkeypatch: pytest.MonkeyPatch, *engines: type[Engine]) -> None:
    monkeypatch.setattr(local_services, "load_engines", lambda: {engine.name: engine for engine in engines})


def start(directory: Path, document: dict[str, Any], options: Mapping[str, str] | None = None, timeout_s: float = 20) -> dict[str, str]:
    return local_services.start_all(directory, document, options or {}, deadline=time.monotonic() + timeout_s, save=lambda: None)


def test_services_start_become_ready_and_yield_options_the_users_win(monkeypatch, cluster_dir):
    directory, document = cluster_dir
    ListenerEngine.port = free_port()
    use_engines(monkeypatch, SchedulerEngine, ListenerEngine)
    options = start(directory, document, {"sched.shared": "from-user"})
    ready = directory / "services" / "sched" / "scheduler.ready"
    assert ready.read_text() == "ready"
    assert options == {
        "sched.address": f"file://{ready}",
        "sched.shared": "from-user",
        "listener.address": f"127.0.0.1:{ListenerEngine.port}",
    }
    assert [entry["id"] for entry in document["services"]] == ["listener/server", "sched/scheduler"]
    assert all(local_processes.is_running(entry) for entry in document["services"])
    with socket.create_connection(("127.0.0.1", ListenerEngine.port), timeout=5):
        pass


def test_an_option_that_names_an_existing_service_replaces_it(monkeypatch, cluster_dir):
    directory, document = cluster_dir
    use_engines(monkeypatch, SchedulerEngine)
    options = start(directory, document, {"sched.address": "tcp://elsewhere:8786"})
    assert options == {"sched.address": "tcp://elsewhere:8786"}
    assert document["services"] == []


def test_down_stops_every_service(monkeypatch, cluster_dir):
    directory, document = cluster_dir
    ListenerEngine.port = free_port()
    use_engines(monkeypatch, SchedulerEngine, ListenerEngine)
    start(directory, document)
    entries = [dict(entry) for entry in document["services"]]
    assert sorted(local_services.stop_all(document)) == ["listener/server", "sched/scheduler"]
    assert not any(local_processes.is_running(entry) for entry in entries)
    assert all(entry["pid"] is None for entry in document["services"])


def test_a_stopped_service_is_started_again_with_the_same_command(monkeypatch, cluster_dir):
    directory, document = cluster_dir
    use_engines(monkeypatch, SchedulerEngine)
    start(directory, document)
    [entry] = document["services"]
    first_pid = entry["pid"]
    local_services.stop_all(document)
    local_services.ensure_running(document, deadline=time.monotonic() + 20, save=lambda: None)
    assert entry["pid"] not in (None, first_pid) and local_processes.is_running(entry)
    assert (directory / "services" / "sched" / "scheduler.ready").read_text() == "ready"


def test_a_service_that_exits_before_it_is_ready_fails_with_its_log(monkeypatch, cluster_dir):
    directory, document = cluster_dir
    use_engines(monkeypatch, CrashingEngine)
    with pytest.raises(ConfigError, match=r"(?s)local service crashing/broken exited with status 3.*no config here"):
        start(directory, document)


def test_waiting_for_a_service_is_bounded(monkeypatch, cluster_dir):
    directory, document = cluster_dir
    ListenerEngine.port = free_port()

    class NeverListening(ListenerEngine):
        @classmethod
        def local_services(cls, directory: Path, options: Mapping[str, str]) -> Sequence[LocalService]:
            return [LocalService("mute", [sys.executable, "-c", "import time; time.sleep(600)"], ready_address=f"127.0.0.1:{cls.port}")]

    use_engines(monkeypatch, NeverListening)
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded, match="local service listener/mute was not ready"):
        start(directory, document, timeout_s=1)
    assert time.monotonic() - started < 10


def test_a_local_service_must_say_how_to_tell_it_is_ready():
    with pytest.raises(ConfigError, match="exactly one of ready_file and ready_address"):
        LocalService("x", ["true"])
    with pytest.raises(ConfigError, match="exactly one"):
        LocalService("x", ["true"], ready_file=Path("/tmp/r"), ready_address="127.0.0.1:1")
