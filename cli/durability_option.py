"""``--durability fsync|async``, shared by ``legion node start`` and ``legion cluster up``.

No logic beyond naming: the modes and their check are ``legion.durability``'s.
"""

from __future__ import annotations

from typing import Annotated

import typer

from legion.durability import ASYNC, DEFAULT, FSYNC

DurabilityOption = Annotated[
    str,
    typer.Option(
        "--durability",
        metavar="|".join((FSYNC, ASYNC)),
        help=(
            f"What an acknowledged write survives. {FSYNC}: fsynced on w replicas, survives power loss; "
            f"{ASYNC}: survives a process crash, but an OS crash or power loss may take a node's last writes."
        ),
    ),
]
DURABILITY_DEFAULT = DEFAULT
