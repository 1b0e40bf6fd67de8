"""``local_cluster.processes``: how a local cluster recognises its own node and service processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import psutil
import pytest

from legion.runtime.local_cluster import processes as local_processes
from tests.legion.runtime.test_sidecar import is_alive, wait_until


def test_a_child_it_spawned_is_running_while_poll_says_so_whatever_proc_shows(monkeypatch: pytest.MonkeyPatch):
    # Between fork and exec a child's /proc command line is empty or the parent's: it does not
    # name the node's data directory yet. Judged by that, a node just started looked dead.
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        monkeypatch.setitem(local_processes.children, child.pid, child)
        node = {"id": "n1", "pid": child.pid, "data_dir": "/not/in/its/command/line"}
        assert local_processes.is_running(node)
        child.kill()
        child.wait(timeout=10)
        assert not local_processes.is_running(node)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=10)


def test_a_pid_it_did_not_spawn_must_name_the_nodes_data_directory():
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert not local_processes.is_running({"id": "n1", "pid": other.pid, "data_dir": "/some/node/dir"})
    finally:
        other.kill()
        other.wait(timeout=10)


def test_a_spawned_process_leads_its_own_group_in_the_callers_session(tmp_path):
    # Its own group: a Ctrl-C in the terminal (its foreground group) misses it, and signal_group
    # reaches its helpers. The caller's session: Linux's autogroup scheduler shares the CPU between
    # sessions first, and a session per node stalled whole nodes for ~200 ms on a busy machine.
    child = local_processes.spawn(
        [sys.executable, "-c", "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); time.sleep(60)"],
        log_path=tmp_path / "child.log",
    )
    try:
        assert os.getpgid(child.pid) == child.pid != os.getpgid(0)
        assert os.getsid(child.pid) == os.getsid(0)
        helpers = wait_until(lambda: [c.pid for c in psutil.Process(child.pid).children()], "the helper to start")
        assert all(os.getpgid(pid) == child.pid for pid in helpers)
        local_processes.signal_group(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
        wait_until(lambda: not any(is_alive(pid) for pid in helpers), "the helper to die with its group")
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait(timeout=10)
