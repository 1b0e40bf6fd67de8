"""``legion engine …``: tools for engine authors.

``legion engine new NAME [--dir DIR]`` writes a new engine package
(``legion.scaffold``) and says how to install it. No logic of its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from legion.scaffold import check_engine_name, new_engine_package

app = typer.Typer(help="Write engines: scaffold a new engine package.", no_args_is_help=True)
console = Console()


@app.command()
def new(
    name: Annotated[str, typer.Argument(help="The engine's name: its routes live under /v1/NAME, its commands under `legion NAME`.")],
    directory: Annotated[
        Path | None, typer.Option("--dir", help="Where to write the package (default: ./legion-NAME); must not exist or be empty.")
    ] = None,
) -> None:
    """Generate an installable engine package (a replicated counters example) with its client, CLI and tests."""
    check_engine_name(name)
    target = (directory or Path(f"legion-{name.replace('_', '-')}")).resolve()
    written = new_engine_package(name, target)
    console.print(f"wrote {len(written)} files to {escape(str(target))}")
    console.print("next:")
    console.print(f"  pip install -e {escape(str(target))}     # into the environment your nodes run in")
    console.print(f"  pytest {escape(str(target / 'tests'))}")
    console.print("  then restart the nodes: they find engines when they start")
