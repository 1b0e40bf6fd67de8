"""The ``legion`` command: the root typer app and its entry point.

Does I/O only through what it mounts. Command groups live one per file
(``cluster``, ``node``, ``engine``); every installed engine whose ``Engine.cli()``
returns a typer app is mounted as ``legion <engine name> …``. A command
line that starts with an engine's or a group's name mounts that one alone: a
command such as ``legion search ingest`` then imports neither the other
engines (the map/reduce engine alone takes about 0.3 s to import: pyarrow,
numpy, dask) nor the built-in groups, and ``legion cluster status`` or
``legion node start`` (three of which start a local cluster) no engine's
commands; ``legion --help`` mounts everything. ``main()``
turns any ``LegionError`` into one red ``error: …`` line on stderr and exit
status 1 — users see what to fix, never a traceback.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from legion.client import ENV_CA
from legion.engine import engine_names, load_engines
from legion.errors import LegionError

# The command groups Legion itself provides, each in ``cli/<name>.py``.
BUILT_IN_GROUPS = ("cluster", "node", "engine")
EXIT_ERROR = 1
EXIT_INTERRUPTED = 130

stderr = Console(stderr=True)


def build_app(argv: Sequence[str] | None = None) -> typer.Typer:
    """The root app with the built-in groups and every engine's commands (for ``argv``: see the module docstring)."""
    app = typer.Typer(
        name="legion",
        help="Run and use a Legion cluster: partitioned, replicated, rebalancing state.",
        no_args_is_help=True,
        add_completion=False,
        # LegionErrors are printed by main(); anything else is a bug and
        # deserves the plain traceback, not a wall of rich locals.
        pretty_exceptions_enable=False,
    )
    app.callback()(_global_options)
    first = _first_word(argv)
    if first in BUILT_IN_GROUPS:
        _mount_group(app, first)
        return app
    if first is not None and _is_engine(first):
        _mount_engines(app, [first])
        return app
    for group in BUILT_IN_GROUPS:
        _mount_group(app, group)
    _mount_engines(app)
    return app


def _mount_group(app: typer.Typer, group: str) -> None:
    # Imported here: a command of one group needs neither the others nor any engine (see the module docstring).
    module = importlib.import_module(f"cli.{group}")
    app.add_typer(module.app, name=group)


def _global_options(
    ca: Annotated[
        Path | None,
        typer.Option("--ca", envvar=ENV_CA, help="The CA certificate to verify a TLS cluster's nodes with (or $LEGION_CA)."),
    ] = None,
) -> None:
    """Run and use a Legion cluster: partitioned, replicated, rebalancing state."""
    if ca is not None:
        # Every command reaches the cluster through Client.connect, which reads it from there.
        os.environ[ENV_CA] = str(ca)


def _first_word(argv: Sequence[str] | None) -> str | None:
    """The command line's first word (a group's or an engine's name, or an option such as ``--help``)."""
    words = list(sys.argv[1:] if argv is None else argv)
    return words[0] if words else None


def _is_engine(word: str) -> bool:
    try:
        return word in engine_names()
    except Exception:  # unreadable package metadata: mount everything, and let that report it
        return False


def _mount_engines(app: typer.Typer, names: Sequence[str] | None = None) -> None:
    try:
        engines = load_engines(names)
    except (ImportError, LegionError) as exc:
        # One broken plug-in must not take `legion cluster …` down with it.
        stderr.print(f"[yellow]warning:[/] engine commands unavailable: {escape(str(exc))}", soft_wrap=True)
        return
    for name, engine in sorted(engines.items()):
        engine_app = engine.cli()
        if engine_app is not None:
            app.add_typer(engine_app, name=name)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the ``legion`` command; exits with its status."""
    try:
        build_app(argv)(args=list(argv) if argv is not None else None, prog_name="legion")
    except LegionError as exc:
        # soft_wrap: the message stays one line however narrow the terminal.
        stderr.print(f"[bold red]error:[/] {escape(exc.message)}", soft_wrap=True, highlight=False)
        sys.exit(EXIT_ERROR)
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)
