"""Sidecars with real child processes: restart after a crash, stop, and death with the parent on ``kill -9``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from legion.limits import SIDECAR_STABLE_MS
from legion.runtime.sidecar import NODE_PID_ENV, Sidecar, restart_delay_ms

SLEEPER = [sys.executable, "-c", "import time; time.sleep(600)"]
WAIT_S = 10.0


def wait_until(condition: Callable[[], object], what: str, timeout_s: float = WAIT_S) -> object:
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g}s waiting for {what}")
        time.sleep(0.05)


def is_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its reaper does not count)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@pytest.fixture
def sidecars():
    started: list[Sidecar] = []
    yield started
    for sidecar in started:
        sidecar.stop()


def test_a_killed_child_is_restarted_and_the_log_tells_so(tmp_path: Path, sidecars: list[Sidecar]):
    sidecar = Sidecar("sleeper", SLEEPER, log_path=tmp_path / "sleeper.log", backoff_ms_min=50, backoff_ms_max=200)
    sidecars.append(sidecar)
    sidecar.start()
    first = sidecar.pid
    assert first is not None and is_alive(first)
    os.kill(first, signal.SIGKILL)
    second = wait_until(lambda: sidecar.pid not in (None, first) and sidecar.pid, "a restarted child")
    assert is_alive(second) and sidecar.restarts == 1
    log = (tmp_path / "sleeper.log").read_text()
    assert f"exited with status {-signal.SIGKILL}" in log and log.count("sleeper: starting ") == 2


def test_stop_ends_the_child_and_restarts_nothing(tmp_path: Path):
    sidecar = Sidecar("sleeper", SLEEPER, log_path=tmp_path / "sleeper.log")
    sidecar.start()
    pid = sidecar.pid
    assert pid is not None
    sidecar.stop()
    assert not is_alive(pid) and sidecar.pid is None
    time.sleep(0.3)
    assert sidecar.restarts == 0 and (tmp_path / "sleeper.log").read_text().count("sleeper: starting ") == 1


def test_a_child_that_ignores_sigterm_is_killed_after_the_timeout(tmp_path: Path):
    stubborn = [
        sys.executable,
        "-c",
        "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('deaf' + ' to SIGTERM', flush=True); time.sleep(600)",
    ]
    sidecar = Sidecar("stubborn", stubborn, log_path=tmp_path / "stubborn.log", term_timeout_ms=300)
    sidecar.start()
    pid = sidecar.pid
    assert pid is not None
    wait_until(lambda: "deaf to SIGTERM" in (tmp_path / "stubborn.log").read_text(), "the child to ignore SIGTERM")
    started = time.monotonic()
    sidecar.stop()
    assert not is_alive(pid)
    assert 0.3 <= time.monotonic() - started < 5
    assert f"stopped (status {-signal.SIGKILL})" in (tmp_path / "stubborn.log").read_text()


def test_the_child_runs_in_the_parents_process_group_and_knows_the_parents_pid(tmp_path: Path, sidecars: list[Sidecar]):
    out = tmp_path / "env.txt"
    argv = [sys.executable, "-c", f"import os, time; open({str(out)!r}, 'w').write(os.environ[{NODE_PID_ENV!r}]); time.sleep(600)"]
    sidecar = Sidecar("env", argv, log_path=tmp_path / "env.log")
    sidecars.append(sidecar)
    sidecar.start()
    assert sidecar.pid is not None and os.getpgid(sidecar.pid) == os.getpgid(0)
    wait_until(lambda: out.exists() and out.read_text(), "the child to write its parent's pid")
    assert out.read_text() == str(os.getpid())


def test_a_program_that_does_not_exist_fails_start_loudly(tmp_path: Path):
    sidecar = Sidecar("ghost", ["/nonexistent/legion-sidecar"], log_path=tmp_path / "ghost.log")
    with pytest.raises(FileNotFoundError):
        sidecar.start()


PARENT = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from legion.runtime.sidecar import Sidecar

    sidecar = Sidecar("sleeper", [sys.executable, "-c", "import time; time.sleep(600)"], log_path=Path(sys.argv[1]))
    sidecar.start()
    print(sidecar.pid, flush=True)
    time.sleep(600)
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_the_child_dies_when_its_parent_process_is_killed_with_sigkill(tmp_path: Path):
    # start_new_session: kill the parent alone, not a group the child shares, so only
    # the kernel's parent-death signal can take the child down.
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(tmp_path / "sleeper.log")], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert is_alive(child)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=WAIT_S)
        wait_until(lambda: not is_alive(child), "the child to die with its parent")
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(timeout=WAIT_S)


def test_the_restart_delay_doubles_up_to_its_cap_and_resets_after_a_stable_run():
    delays = []
    delay = None
    for _ in range(8):
        delay = restart_delay_ms(delay, ran_ms=10, minimum_ms=250, maximum_ms=10_000)
        delays.append(delay)
    assert delays == [250, 500, 1000, 2000, 4000, 8000, 10_000, 10_000]
    assert restart_delay_ms(10_000, ran_ms=SIDECAR_STABLE_MS, minimum_ms=250, maximum_ms=10_000) == 250
