"""``local_cluster.processes``: how a local cluster recognises its own node and service processes."""

from __future__ import annotations

import subprocess
import sys

import pytest

from legion.runtime.local_cluster import processes as local_processes


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
