"""The processes of a local cluster: spawned detached, recognised later, stopped with escalation.

I/O (processes, signals, /proc, log files). ``commands`` runs node
processes and ``services`` the processes engines ask for beside them
(a Dask scheduler); both record each one in ``cluster.json`` as an *entry*,
a dict with at least ``id``, ``pid`` and ``log``, and use these functions on
it. An entry is recognised as still the same process (a pid recorded before a
reboot may belong to an unrelated process by now, and signalling that would
be a nasty surprise) by ``data_dir`` — a node's command line names its data
directory — or by ``started``, the process's start time in clock ticks since
boot, read from /proc when it was spawned.

Each process leads a process group of its own, so it outlives the command
that started it and a Ctrl-C in its terminal does not reach it (the
terminal signals its foreground group only); it is signalled as a whole
group, which takes its helpers (a node's sidecars) with it.

It stays in the caller's session, though. Linux schedules each session as
one "autogroup" (``/proc/sys/kernel/sched_autogroup_enabled``, on by default)
and shares the CPU between those groups before the threads within them; with
a session per node, a saturated machine made a node wait for its group's
turn. A 3-node cluster serving 8 query clients on 2 cores (N=3) had a p99 of
32-45 ms with stalls of ~200 ms, every in-flight query of one node delayed
together; in one session it is 15-17 ms, the slowest query 23-40 ms.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from legion.errors import ConfigError

STOP_TIMEOUT_S = 10.0
KILL_TIMEOUT_S = 5.0
POLL_INTERVAL_S = 0.1
LOG_TAIL_LINES = 20
LOG_TAIL_BYTES_MAX = 16 * 1024

Entry = dict[str, Any]

# Popen objects of the processes this process spawned: polling them reaps the
# children that exit, so a killed one is not mistaken for a live zombie.
children: dict[int, subprocess.Popen[bytes]] = {}


def spawn(argv: Sequence[str], *, log_path: Path, env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start ``argv`` in a process group of its own, output appended to ``log_path``; remember the child."""
    # Unbuffered, so that the log is complete when a Python process dies.
    environment = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    with open(log_path, "ab") as log:
        child = subprocess.Popen(
            list(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            env=environment, process_group=0,
        )  # fmt: skip
    children[child.pid] = child
    return child


def start_ticks(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot (/proc's ``starttime``); None without procfs."""
    try:
        fields = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[19])  # field 22 of stat; fields[0] here is field 3
    except (OSError, IndexError, ValueError):
        return None


def is_running(entry: Entry) -> bool:
    """Whether the entry's recorded pid is a live (not zombie) process of *that* entry."""
    pid = entry.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    child = children.get(pid)
    if child is not None:
        # Our own child: poll() is the truth. Its /proc command line is not — a child
        # caught between fork and exec shows an empty or the parent's command line.
        return child.poll() is None
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    proc = Path("/proc") / str(pid)
    if not proc.exists():
        return True  # no procfs (macOS): the signal probe is all we have
    try:
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        command = (proc / "cmdline").read_bytes().split(b"\0")
    except (OSError, IndexError):
        return False  # it exited while we looked
    if state == "Z":
        return False
    if "data_dir" in entry:
        return str(entry["data_dir"]).encode() in command
    return entry.get("started") is not None and start_ticks(pid) == entry["started"]


def signal_group(pid: int, signum: int) -> None:
    """Signal the process's whole group: it may have started helpers (e.g. Dask workers)."""
    try:
        os.killpg(pid, signum)
    except ProcessLookupError:
        pass
    except PermissionError:
        os.kill(pid, signum)


def stop(entries: Sequence[Entry], *, kill: bool) -> list[str]:
    """Stop the running ones among ``entries``: SIGTERM (or SIGKILL), then SIGKILL after a grace period.

    Returns the ids of those that were running; ConfigError if one survives SIGKILL."""
    running = [entry for entry in entries if is_running(entry)]
    for entry in running:
        signal_group(entry["pid"], signal.SIGKILL if kill else signal.SIGTERM)
    lingering = wait_exited(running, KILL_TIMEOUT_S if kill else STOP_TIMEOUT_S)
    for entry in lingering:
        signal_group(entry["pid"], signal.SIGKILL)
    stuck = wait_exited(lingering, KILL_TIMEOUT_S)
    if stuck:
        pids = ", ".join(f"{entry['id']} (pid {entry['pid']})" for entry in stuck)
        raise ConfigError(f"could not stop {pids} even with SIGKILL")
    for entry in running:
        children.pop(entry["pid"], None)
    return [entry["id"] for entry in running]


def wait_exited(entries: Sequence[Entry], timeout_s: float) -> list[Entry]:
    """Wait up to ``timeout_s`` for ``entries`` to exit; those still running."""
    deadline = time.monotonic() + timeout_s
    remaining = list(entries)
    while remaining and time.monotonic() < deadline:
        time.sleep(POLL_INTERVAL_S)
        remaining = [entry for entry in remaining if is_running(entry)]
    return remaining


def exited_error(entry: Entry, what: str) -> ConfigError:
    """The error for a process that died on us (``what``: "node n2"), quoting the end of its log."""
    child = children.get(entry["pid"]) if entry.get("pid") else None
    if child is not None:
        try:
            # Reap it for its exit status: it may have been seen as a zombie first.
            child.wait(timeout=KILL_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pass
    code = f" with status {child.returncode}" if child is not None and child.returncode is not None else ""
    try:
        with open(entry["log"], "rb") as log:
            log.seek(max(0, log.seek(0, os.SEEK_END) - LOG_TAIL_BYTES_MAX))
            tail = log.read().decode("utf-8", "replace").splitlines()[-LOG_TAIL_LINES:]
    except OSError as exc:
        tail = [f"(cannot read the log: {exc.strerror})"]
    quoted = "\n".join("  | " + line for line in tail) or "  | (the log is empty)"
    return ConfigError(f"{what} exited{code}; last lines of {entry['log']}:\n{quoted}")
