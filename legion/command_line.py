"""The option every ``legion`` command that reaches a cluster shares, spelled and documented once.

``--cluster DIR`` (``--dir`` is accepted too) names the cluster directory
``legion cluster up`` made. Without it, ``LEGION_CLUSTER`` names one; without
that, a command that talks to a cluster uses ``LEGION_URL`` and
``LEGION_TOKEN`` if they are set, and ``./.legion`` otherwise
(``legion.client.Client.connect`` resolves it the same way). Engines' own
command groups (``legion kv``, ``legion search``, ``legion mr``, a generated
engine's) take this option, so every command is pointed at a cluster alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from legion.client import cluster_directory

ClusterOption = Annotated[
    Path | None,
    typer.Option(
        "--cluster",
        "--dir",
        help="Cluster directory (default: $LEGION_CLUSTER, else $LEGION_URL and $LEGION_TOKEN, else ./.legion).",
        show_default=False,
    ),
]

__all__ = ["ClusterOption", "cluster_directory"]
