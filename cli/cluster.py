"""``legion cluster …``: start, inspect, grow, shrink and stop a cluster.

Commands parse arguments, call ``legion.runtime.local_cluster`` (for local
clusters of node processes) or ``legion.client.Client`` (for any cluster),
and format the answers with rich. No HTTP, no cluster logic here.
``status_table`` is shared with the demo.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console, Group
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from legion.client import Client
from legion.limits import PARTITIONS_DEFAULT, REPLICAS_DEFAULT
from cli.durability_option import DURABILITY_DEFAULT, DurabilityOption
from cli.engine_options import DaskSchedulerOption, with_dask_scheduler
from legion.options import parse_options
from legion.runtime import local_cluster

app = typer.Typer(help="Start, inspect, resize and stop a cluster.", no_args_is_help=True)
console = Console()

DIR_DEFAULT = Path(".legion")
TIMEOUT_S_DEFAULT = 60.0
ATTRIBUTE_SHOWN_CHARS_MAX = 40
STATUS_STYLES = {"up": "green", "joining": "cyan", "leaving": "yellow", "down": "red", "removed": "dim"}

DirOption = Annotated[Path, typer.Option("--dir", help="The local cluster's directory.")]
TimeoutOption = Annotated[float, typer.Option("--timeout", help="Seconds to wait for the cluster to settle.")]


def status_table(status: dict[str, Any]) -> Group:
    """The status document as a rich table of members plus one summary line.

    An ``attributes`` column appears when any member has published some;
    long values are shortened (``--json`` shows them whole)."""
    table = Table(show_edge=False, header_style="bold")
    members = status.get("members", ())
    with_attributes = any(member.get("attributes") for member in members)
    columns = [("id", "left"), ("url", "left"), ("status", "left"), ("primary", "right"), ("replica", "right")]
    for column, justify in columns + ([("attributes", "left")] if with_attributes else []):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for member in members:
        state = str(member.get("status", "?"))
        row: list[str | Text] = [
            escape(str(member.get("id"))),
            escape(str(member.get("url"))),
            Text(state, style=STATUS_STYLES.get(state, "")),
            str(member.get("primary", "")),
            str(member.get("replica", "")),
        ]
        if with_attributes:
            row.append(Text(_short_attributes(member.get("attributes") or {})))
        table.add_row(*row)
    rebalancing = Text("rebalancing", style="yellow") if status.get("rebalancing") else Text("settled", style="green")
    summary = Text.assemble(
        f"epoch {status.get('epoch')} · claimant {status.get('claimant')} · "
        f"{status.get('partitions')} partitions × {status.get('replicas')} replicas · ",
        rebalancing,
    )
    return Group(table, summary)


def _short_attributes(attributes: dict[str, Any]) -> str:
    """``key=value`` pairs, one per line, each value cut to ``ATTRIBUTE_SHOWN_CHARS_MAX``."""
    lines = []
    for key, value in sorted(attributes.items()):
        text = str(value)
        if len(text) > ATTRIBUTE_SHOWN_CHARS_MAX:
            text = text[: ATTRIBUTE_SHOWN_CHARS_MAX - 1] + "…"
        lines.append(f"{key}={text}")
    return "\n".join(lines)


def _show_status(client: Client) -> None:
    console.print(status_table(client.status()))


@app.command()
def up(
    nodes: Annotated[int, typer.Option("--nodes", help="How many node processes to start.")] = 3,
    directory: DirOption = DIR_DEFAULT,
    partitions: Annotated[int, typer.Option("--partitions", help="Partitions (a power of two).")] = PARTITIONS_DEFAULT,
    replicas: Annotated[int, typer.Option("--replicas", help="Replicas of each partition.")] = REPLICAS_DEFAULT,
    base_port: Annotated[
        int, typer.Option("--base-port", help="First node's port; the others follow. 0 picks free ports.")
    ] = 7400,
    reset: Annotated[
        bool, typer.Option("--reset", help="Delete the data of a stopped cluster in --dir first.")
    ] = False,
    timeout_s: TimeoutOption = TIMEOUT_S_DEFAULT,
    option: Annotated[
        list[str] | None,
        typer.Option(
            "--option",
            metavar="KEY=VALUE",
            help="A setting for every node's engines (repeatable); kept for restarts and added nodes.",
        ),
    ] = None,
    dask_scheduler: DaskSchedulerOption = None,
    durability: DurabilityOption = DURABILITY_DEFAULT,
) -> None:
    """Start a local cluster of NODES node processes on 127.0.0.1, and the services its engines ask for."""
    options = with_dask_scheduler(parse_options(option or []), dask_scheduler)
    with console.status(f"starting {nodes} nodes in {directory}…") as spinner:
        local_cluster.up(
            directory,
            nodes=nodes,
            partitions=partitions,
            replicas=replicas,
            base_port=base_port,
            timeout_s=timeout_s,
            reset=reset,
            progress=lambda message: spinner.update(escape(message) + "…"),
            options=options,
            durability=durability,
        )
    with Client.connect(directory) as client:
        _show_status(client)
    console.print(f"[green]cluster up[/] in {escape(str(directory))}; stop it with `legion cluster down --dir {escape(str(directory))}`")


@app.command()
def down(directory: DirOption = DIR_DEFAULT) -> None:
    """Stop every node of the local cluster (its data stays)."""
    with console.status(f"stopping the nodes in {directory}…"):
        stopped = local_cluster.down(directory)
    console.print(f"stopped {', '.join(stopped)}" if stopped else "no node was running")


@app.command()
def status(
    cluster: Annotated[
        Path | None,
        typer.Option(
            "--cluster", "--dir", help="Cluster directory (default: $LEGION_URL and $LEGION_TOKEN, else ./.legion)."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the raw status document as JSON.")] = False,
) -> None:
    """Show the members, their partitions, and whether a rebalance is in flight."""
    with Client.connect(cluster) as client:
        document = client.status()
    if as_json:
        # Plain print, not rich: the output is for machines and must not be reflowed.
        typer.echo(json.dumps(document, indent=2))
    else:
        console.print(status_table(document))


@app.command("add-node")
def add_node(directory: DirOption = DIR_DEFAULT, timeout_s: TimeoutOption = TIMEOUT_S_DEFAULT) -> None:
    """Start one more node and wait until it holds its share of the partitions."""
    with console.status("adding a node…") as spinner:
        node = local_cluster.add_node(
            directory, timeout_s=timeout_s, progress=lambda message: spinner.update(escape(message) + "…")
        )
    with Client.connect(directory) as client:
        _show_status(client)
    console.print(f"[green]added[/] {node['id']} at {node['url']}")


@app.command("remove-node")
def remove_node(
    node_id: Annotated[str, typer.Argument(metavar="NODE", help="The id of the node to remove, e.g. n2.")],
    directory: DirOption = DIR_DEFAULT,
    timeout_s: TimeoutOption = TIMEOUT_S_DEFAULT,
) -> None:
    """Hand NODE's partitions to the others, then stop it for good."""
    with console.status(f"removing {node_id}…") as spinner:
        final = local_cluster.remove_node(
            directory, node_id, timeout_s=timeout_s, progress=lambda message: spinner.update(escape(message) + "…")
        )
    console.print(status_table(final))
    console.print(f"[green]removed[/] {escape(node_id)}")


@app.command("start-node")
def start_node(
    node_id: Annotated[str, typer.Argument(metavar="NODE", help="The id of a stopped node, e.g. n2.")],
    directory: DirOption = DIR_DEFAULT,
    timeout_s: TimeoutOption = TIMEOUT_S_DEFAULT,
) -> None:
    """Restart a stopped (or crashed) node with its own id, port and data."""
    with console.status(f"starting {node_id}…"):
        node = local_cluster.start_node(directory, node_id, timeout_s=timeout_s)
    console.print(f"[green]started[/] {node['id']} at {node['url']} (pid {node['pid']})")


@app.command("stop-node")
def stop_node(
    node_id: Annotated[str, typer.Argument(metavar="NODE", help="The id of the node to stop, e.g. n2.")],
    directory: DirOption = DIR_DEFAULT,
    kill: Annotated[bool, typer.Option("--kill", help="SIGKILL at once, as a crash would.")] = False,
) -> None:
    """Stop one node; it stays a member (shown down) until started or removed."""
    was_running = local_cluster.stop_node(directory, node_id, kill=kill)
    console.print(f"stopped {escape(node_id)}" if was_running else f"{escape(node_id)} was not running")
