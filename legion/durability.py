"""What "acknowledged" promises: the node's durability mode.

Pure. A node runs in one of two modes, chosen at start
(``legion node start --durability …``, ``legion cluster up --durability …``):

- ``fsync`` (the default): a write is acknowledged once ``w`` replicas hold it
  on stable storage — fsynced — so it survives ``kill -9``, an OS crash and
  power loss of up to ``w - 1`` replicas. SQLite databases run with
  ``synchronous=FULL`` (each commit fsyncs the write-ahead log); the log
  writer's group commit shares one fsync between every write queued at once.
- ``async``: a write is acknowledged once ``w`` replicas handed it to the OS
  (``synchronous=NORMAL``): it survives ``kill -9`` of the process, but an OS
  crash or power loss may take the last commits of a node — a window users
  of this mode accept for the throughput.

Engines learn the mode through ``Engine.durability`` (see ``legion.engine``):
an engine that keeps its own store must make ``apply`` (or ``flush``) durable
in the same sense, because the core compacts the log below its checkpoint.
"""

from __future__ import annotations

from typing import Literal

from legion.errors import ConfigError

Durability = Literal["fsync", "async"]

FSYNC: Durability = "fsync"
ASYNC: Durability = "async"
MODES: tuple[Durability, ...] = (FSYNC, ASYNC)
DEFAULT: Durability = FSYNC

# SQLite's PRAGMA synchronous per mode. In WAL mode FULL fsyncs the log at every
# commit; NORMAL only at checkpoints, which is safe against a process crash alone.
_SQLITE_SYNCHRONOUS: dict[Durability, str] = {FSYNC: "FULL", ASYNC: "NORMAL"}


def check_durability(value: str) -> Durability:
    """``value`` as a durability mode; ConfigError naming the choices if it is not one."""
    for mode in MODES:
        if value == mode:
            return mode
    raise ConfigError(
        f"--durability must be {' or '.join(MODES)} ({FSYNC}: acknowledged writes are fsynced; "
        f"{ASYNC}: they survive a process crash but not power loss); got {value!r}"
    )


def sqlite_synchronous(mode: Durability) -> str:
    """The ``PRAGMA synchronous`` value a SQLite database written in ``mode`` runs with."""
    return _SQLITE_SYNCHRONOUS[mode]
