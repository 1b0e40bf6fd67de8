"""Sidecars: child processes an engine keeps running beside its node (e.g. a Dask worker).

I/O: spawns, watches, signals and restarts one child process. An engine
creates a ``Sidecar`` in ``Engine.start`` and stops it in ``Engine.stop``::

    self.worker = Sidecar("dask-worker", ["dask", "worker", address], log_path=node.root / "worker.log")
    self.worker.start()
    ...
    self.worker.stop()

What it guarantees:

- **The child stays in the node's process group**, so whoever signals the
  node's group (``legion cluster down``, Ctrl-C in the node's terminal)
  reaches it too.
- **The child dies with the node, even on ``kill -9``.** On Linux the child
  asks the kernel, between fork and exec, for ``SIGKILL`` when its parent
  dies (``prctl(PR_SET_PDEATHSIG)``, a tiny ctypes call), then checks that
  the parent did not die before the request took effect. The kernel means
  the parent *thread*: the child is spawned by the sidecar's own supervisor
  thread, which lives exactly as long as the sidecar is supervised, so a
  thread-pool thread ending cannot kill it by accident. The signal reaches
  the child only, not the children it starts itself: a sidecar that forks
  (Dask's nanny) must let them follow it. Elsewhere (macOS) there is no
  such request; the child gets the node's pid in ``LEGION_NODE_PID`` and
  may watch it itself.
- **It is restarted when it exits unexpectedly**, after a backoff that
  doubles from ``SIDECAR_RESTART_BACKOFF_MS_MIN`` to ``…_MAX`` and resets
  once a run lasted ``SIDECAR_STABLE_MS``; each start and exit is noted in
  the log file, which also takes the child's stdout and stderr.
- **``stop`` ends it**: ``SIGTERM``, then ``SIGKILL`` after
  ``SIDECAR_TERM_TIMEOUT_MS``; every wait is bounded.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from legion.limits import (
    SIDECAR_KILL_TIMEOUT_MS,
    SIDECAR_RESTART_BACKOFF_MS_MAX,
    SIDECAR_RESTART_BACKOFF_MS_MIN,
    SIDECAR_STABLE_MS,
    SIDECAR_TERM_TIMEOUT_MS,
)

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
NODE_PID_ENV = "LEGION_NODE_PID"
# How often the supervisor checks whether it was asked to stop while its child runs.
POLL_INTERVAL_S = 0.1
# How long ``start`` waits for the supervisor thread's first spawn.
FIRST_SPAWN_TIMEOUT_S = 10.0
# Exit status of a child that could not arrange to die with its parent (it never runs argv).
PDEATHSIG_FAILED_STATUS = 121


class Sidecar:
    """One supervised child process; see the module docstring."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        term_timeout_ms: int = SIDECAR_TERM_TIMEOUT_MS,
        backoff_ms_min: int = SIDECAR_RESTART_BACKOFF_MS_MIN,
        backoff_ms_max: int = SIDECAR_RESTART_BACKOFF_MS_MAX,
    ) -> None:
        if not argv:
            raise ValueError(f"sidecar {name!r} needs a command to run")
        assert 0 < backoff_ms_min <= backoff_ms_max and term_timeout_ms > 0
        self.name = name
        self.argv = list(argv)
        self.log_path = Path(log_path)
        self.env = dict(env or {})
        self.cwd = cwd
        self.term_timeout_ms = term_timeout_ms
        self.backoff_ms_min = backoff_ms_min
        self.backoff_ms_max = backoff_ms_max
        self.restarts = 0  # how many times the child was started again after exiting on its own
        self._process: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._first_spawn = threading.Event()
        self._spawn_error: OSError | None = None
        self._thread: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        """The running child's pid (None between a crash and its restart, or when stopped)."""
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    def start(self) -> None:
        """Spawn the child and supervise it. Raises the OSError if the first spawn fails (no such program)."""
        if self._thread is not None:
            raise RuntimeError(f"sidecar {self.name!r} was already started")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._supervise, name=f"sidecar-{self.name}", daemon=True)
        self._thread.start()
        if not self._first_spawn.wait(FIRST_SPAWN_TIMEOUT_S):
            raise TimeoutError(f"sidecar {self.name!r} did not spawn within {FIRST_SPAWN_TIMEOUT_S:g}s")
        if self._spawn_error is not None:
            self._thread.join(FIRST_SPAWN_TIMEOUT_S)
            raise self._spawn_error

    def stop(self) -> None:
        """Stop supervising and end the child: SIGTERM, then SIGKILL. Returns once it exited (bounded)."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join((self.term_timeout_ms + SIDECAR_KILL_TIMEOUT_MS) / 1000 + 2 * POLL_INTERVAL_S + 1)
            if self._thread.is_alive():
                log.error("sidecar %s did not stop in time; its child is pid %s", self.name, self.pid)

    # --- the supervisor thread ---------------------------------------------------

    def _supervise(self) -> None:
        delay_ms: int | None = None
        while not self._stopping.is_set():
            try:
                process = self._spawn()
            except OSError as exc:
                if not self._first_spawn.is_set():
                    self._spawn_error = exc
                    self._first_spawn.set()
                    return
                delay_ms = restart_delay_ms(delay_ms, 0, self.backoff_ms_min, self.backoff_ms_max)
                log.warning("sidecar %s could not be restarted: %s; next try in %d ms", self.name, exc, delay_ms)
            else:
                self._first_spawn.set()
                started = time.monotonic()
                if not self._watch(process):
                    return  # asked to stop: the child is ended
                ran_ms = int((time.monotonic() - started) * 1000)
                delay_ms = restart_delay_ms(delay_ms, ran_ms, self.backoff_ms_min, self.backoff_ms_max)
                self._note(f"exited with status {process.returncode} after {ran_ms} ms; restarting in {delay_ms} ms")
                log.warning("sidecar %s exited with status %s; restarting in %d ms", self.name, process.returncode, delay_ms)
            if self._stopping.wait(delay_ms / 1000):
                return
            self.restarts += 1

    def _spawn(self) -> subprocess.Popen[bytes]:
        self._note(f"starting {' '.join(self.argv)}")
        environment = {**os.environ, **self.env, NODE_PID_ENV: str(os.getpid())}
        with open(self.log_path, "ab") as output:
            # No new session or process group: the child stays in the node's group.
            self._process = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                env=environment, cwd=self.cwd, preexec_fn=die_with_parent(os.getpid()),
            )  # fmt: skip
        return self._process

    def _watch(self, process: subprocess.Popen[bytes]) -> bool:
        """Wait until the child exits (True) or ``stop`` is called (False, once the child is ended)."""
        while process.poll() is None and not self._stopping.wait(POLL_INTERVAL_S):
            pass
        if self._stopping.is_set():
            self._end(process)
            return False
        return True

    def _end(self, process: subprocess.Popen[bytes]) -> None:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(self.term_timeout_ms / 1000)
            except subprocess.TimeoutExpired:
                log.warning("sidecar %s ignored SIGTERM for %d ms; killing it", self.name, self.term_timeout_ms)
                process.kill()
                try:
                    process.wait(SIDECAR_KILL_TIMEOUT_MS / 1000)
                except subprocess.TimeoutExpired:
                    log.error("sidecar %s (pid %d) survived SIGKILL", self.name, process.pid)
        self._note(f"stopped (status {process.returncode})")

    def _note(self, message: str) -> None:
        """One line in the sidecar's log, so its file tells its own story across restarts."""
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        try:
            with open(self.log_path, "a") as output:
                output.write(f"--- {stamp} legion sidecar {self.name}: {message}\n")
        except OSError as exc:
            log.warning("cannot write to %s: %s", self.log_path, exc.strerror)


def restart_delay_ms(previous_ms: int | None, ran_ms: int, minimum_ms: int, maximum_ms: int) -> int:
    """How long to wait before restarting a child that ran ``ran_ms`` (pure).

    The first restart, and any after a run of ``SIDECAR_STABLE_MS`` or more,
    waits ``minimum_ms``; each quick failure after that doubles the wait, up to
    ``maximum_ms`` — a crash loop costs little, a rare crash is retried fast."""
    if previous_ms is None or ran_ms >= SIDECAR_STABLE_MS:
        return minimum_ms
    return min(previous_ms * 2, maximum_ms)


def die_with_parent(parent_pid: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` making the child get SIGKILL when its parent thread dies (Linux); None elsewhere.

    Runs in the child between fork and exec, so it only calls a function
    looked up beforehand and ``os._exit``s on failure rather than raising."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    kill = int(signal.SIGKILL)

    def arrange() -> None:
        if prctl(PR_SET_PDEATHSIG, kill, 0, 0, 0) != 0:
            os._exit(PDEATHSIG_FAILED_STATUS)
        if os.getppid() != parent_pid:
            os._exit(PDEATHSIG_FAILED_STATUS)  # the parent died before the request took effect

    return arrange
