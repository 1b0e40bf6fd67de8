"""Command-line options shared by ``legion cluster up`` and ``legion node start`` that set engine options.

No logic beyond naming: ``--dask-scheduler ADDRESS`` is the map/reduce
engine's ``--option mr.scheduler=ADDRESS`` under the name Dask users look for
(run jobs on an existing Dask deployment instead of the cluster's own scheduler).
"""

from __future__ import annotations

from typing import Annotated

import typer

from legion.errors import ConfigError

# engines.mapreduce.dask_adapter.OPTION_SCHEDULER, named again: importing it would load the
# map/reduce engine (pyarrow) into every `legion cluster` and `legion node` command.
DASK_SCHEDULER_OPTION = "mr.scheduler"

DaskSchedulerOption = Annotated[
    str | None,
    typer.Option(
        "--dask-scheduler",
        metavar="ADDRESS",
        help="Run map/reduce jobs on this existing Dask scheduler (tcp://HOST:PORT) instead of starting one.",
    ),
]


def with_dask_scheduler(options: dict[str, str], address: str | None) -> dict[str, str]:
    """``options`` with the scheduler address set, refusing two different addresses."""
    if address is None:
        return options
    given = options.get(DASK_SCHEDULER_OPTION)
    if given is not None and given != address:
        raise ConfigError(f"--dask-scheduler {address} and --option {DASK_SCHEDULER_OPTION}={given} disagree; give one")
    return {**options, DASK_SCHEDULER_OPTION: address}
