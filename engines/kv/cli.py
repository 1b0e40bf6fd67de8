"""``legion kv …``: the key/value engine's command group.

Commands parse arguments, call ``KVClient`` and print; they hold no HTTP and
no logic. Errors (``LegionError``) propagate to the top-level ``legion``
command, which prints them and picks the exit code.
"""

from __future__ import annotations

import base64
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape  # a key is user data: "[red]" in it must print literally

from engines.kv.client import KVClient
from legion.client import Client

app = typer.Typer(name="kv", help="Put, get and delete keys in the replicated key/value store.", no_args_is_help=True)
console = Console()

ClusterOption = Annotated[
    Path | None,
    typer.Option(
        "--cluster",
        help="Cluster directory (default: $LEGION_URL and $LEGION_TOKEN, else ./.legion).",
        show_default=False,
    ),
]


@contextmanager
def _kv(cluster: Path | None) -> Iterator[KVClient]:
    with Client.connect(cluster) as client:
        yield KVClient(client)


@app.command()
def put(
    key: Annotated[str, typer.Argument(help="The key (UTF-8 text, 1..1024 bytes).")],
    value: Annotated[str, typer.Argument(help="The value as text, or '-' to read bytes from stdin.")],
    content_type: Annotated[
        str | None, typer.Option("--content-type", help="Stored with the value and returned by get.")
    ] = None,
    w: Annotated[int | None, typer.Option("--w", help="Replicas that must acknowledge (default: a majority).")] = None,
    cluster: ClusterOption = None,
) -> None:
    """Store VALUE under KEY."""
    data: bytes | str = sys.stdin.buffer.read() if value == "-" else value
    with _kv(cluster) as kv:
        result = kv.put(key, data, content_type=content_type, w=w)
    console.print(
        f"put [bold]{escape(key)}[/bold]: partition {result['partition']}, "
        f"hlc {result['hlc']}, {result['acks']} acks"
    )


@app.command()
def get(
    key: Annotated[str, typer.Argument(help="The key to read.")],
    r: Annotated[int | None, typer.Option("--r", help="Replicas to ask; the newest answer wins.")] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print {value, encoding, content_type, hlc} as JSON.")
    ] = False,
    cluster: ClusterOption = None,
) -> None:
    """Print the value stored under KEY (exactly its bytes, unless --json)."""
    with _kv(cluster) as kv:
        found = kv.get(key, r=r)
    if not as_json:
        sys.stdout.buffer.write(found.value)
        if sys.stdout.isatty() and not found.value.endswith(b"\n"):
            sys.stdout.buffer.write(b"\n")  # keep the shell prompt off the value's line
        sys.stdout.flush()
        return
    try:
        value, encoding = found.value.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        value, encoding = base64.b64encode(found.value).decode("ascii"), "base64"
    document = {"value": value, "encoding": encoding, "content_type": found.content_type, "hlc": found.hlc}
    console.print_json(data=document)


@app.command()
def delete(
    key: Annotated[str, typer.Argument(help="The key to delete.")],
    w: Annotated[int | None, typer.Option("--w", help="Replicas that must acknowledge (default: a majority).")] = None,
    cluster: ClusterOption = None,
) -> None:
    """Delete KEY (a tombstone replicates the delete)."""
    with _kv(cluster) as kv:
        result = kv.delete(key, w=w)
    console.print(f"deleted [bold]{escape(key)}[/bold]: hlc {result['hlc']}, {result['acks']} acks")
