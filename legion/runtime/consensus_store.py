"""The node's consensus record on disk: ``DATA_DIR/consensus.json``, fsynced, replaced atomically.

I/O. ``legion.consensus`` requires a node to persist its record (current term,
accepted state, committed state) before it answers anything that changed it,
whatever the data durability mode (``--durability async`` relaxes data writes,
never this): a vote or an acknowledgement forgotten in a crash could let two
leaders decide the same epoch. Each save writes a temporary file, fsyncs it,
renames it over the record and fsyncs the directory, so a crash leaves either
the old record or the new one, never a torn one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from legion import cluster_state as cs
from legion import consensus as cn
from legion.errors import ConfigError, LegionError

FILE_NAME = "consensus.json"


def to_dict(record: cn.Record) -> dict[str, Any]:
    return {
        "current_term": record.current_term,
        "accepted": None if record.accepted is None else cs.to_dict(record.accepted),
        "committed": None if record.committed is None else cs.to_dict(record.committed),
    }


def from_dict(raw: Any) -> cn.Record:
    try:
        accepted, committed = raw.get("accepted"), raw.get("committed")
        return cn.Record(
            current_term=int(raw["current_term"]),
            accepted=None if accepted is None else cs.from_dict(accepted),
            committed=None if committed is None else cs.from_dict(committed),
        )
    except (KeyError, TypeError, ValueError, AttributeError, LegionError) as exc:
        raise ConfigError(f"the consensus record is malformed ({exc!r}); restore the data directory") from None


class ConsensusStore:
    """Loads and saves one node's ``legion.consensus.Record``."""

    def __init__(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.directory = data_dir
        self.path = data_dir / FILE_NAME

    def load(self) -> cn.Record | None:
        """The saved record, or None if this node never saved one."""
        if not self.path.exists():
            return None
        return from_dict(json.loads(self.path.read_text()))

    def save(self, record: cn.Record) -> None:
        """Write ``record`` durably: it is on disk when this returns."""
        temporary = self.path.with_suffix(".tmp")
        with open(temporary, "w") as f:
            json.dump(to_dict(record), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, self.path)
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)  # the rename itself survives a power loss
        finally:
            os.close(fd)
