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
from typing import Annotated, BinaryIO

import typer
from rich.console import Console
from rich.markup import escape  # a key is user data: "[red]" in it must print literally

from engines.kv.client import KVClient
from legion.client import Client
from legion.command_line import ClusterOption
from legion.errors import ConfigError

app = typer.Typer(
    name="kv", help="Put, get, delete, import and list keys in the replicated key/value store.", no_args_is_help=True
)
console = Console()
stderr = Console(stderr=True)
# An import prints at most this many of its failures (the count says how many there were).
FAILURES_SHOWN_MAX = 20



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


@app.command("import")
def import_(
    source: Annotated[
        str, typer.Argument(help='NDJSON file of {"key": …, "value": …, "content_type"?: …} lines, or - for stdin.')
    ],
    w: Annotated[int | None, typer.Option("--w", help="Replicas that must acknowledge each item.")] = None,
    refresh: Annotated[
        bool, typer.Option("--refresh", help="Wait until every live replica has each item visible.")
    ] = False,
    cluster: ClusterOption = None,
) -> None:
    """Put every line of SOURCE; a bad line fails alone and is reported with its line number."""
    with _kv(cluster) as kv, _binary_input(source) as stream:
        report = kv.import_ndjson(stream, w=w, refresh=refresh)
    console.print(f"imported {report.written} items, {len(report.failures)} failed")
    for failure in report.failures[:FAILURES_SHOWN_MAX]:
        stderr.print(f"[red]{escape(failure['message'])}[/red]", soft_wrap=True, highlight=False)
    if len(report.failures) > FAILURES_SHOWN_MAX:
        stderr.print(f"… and {len(report.failures) - FAILURES_SHOWN_MAX} more failures", highlight=False)
    if report.failures:
        raise typer.Exit(code=1)


@app.command("list")
def list_(
    prefix: Annotated[str, typer.Argument(help="Only keys starting with this text.")] = "",
    limit: Annotated[int | None, typer.Option("--limit", help="Keys per page (default 1000, at most 10000).")] = None,
    after: Annotated[str | None, typer.Option("--after", help="Start after this key (the last one printed).")] = None,
    allow_partial: Annotated[
        bool, typer.Option("--allow-partial", help="List what the live replicas hold even if some partitions have none.")
    ] = False,
    cluster: ClusterOption = None,
) -> None:
    """Print live keys in key order, one per line."""
    with _kv(cluster) as kv:
        page = kv.list_keys(prefix, limit=limit, after=after, allow_partial=allow_partial)
    for key in page.keys:
        sys.stdout.write(key + "\n")
    sys.stdout.flush()
    if page.partitions_missing:
        stderr.print(
            f"[yellow]warning:[/] no live replica answered for partitions {page.partitions_missing}", highlight=False
        )
    if page.truncated:
        stderr.print(f"more keys follow: --after {escape(page.keys[-1])}", highlight=False, soft_wrap=True)


@contextmanager
def _binary_input(source: str) -> Iterator[BinaryIO]:
    if source == "-":
        yield sys.stdin.buffer
        return
    try:
        stream = open(source, "rb")
    except OSError as exc:
        raise ConfigError(f"cannot read {source}: {exc.strerror}") from None
    with stream:
        yield stream
