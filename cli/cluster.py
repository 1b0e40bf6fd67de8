"""``legion cluster …``: start, inspect, grow, shrink and stop a cluster.

Commands parse arguments, call ``legion.runtime.local_cluster`` (for local
clusters of node processes) or ``legion.client.Client`` (for any cluster),
and format the answers with rich. No HTTP, no cluster logic here.
``status_table`` is shared with the demo.
"""

from __future__ import annotations

import json
import os
import sys
import time
import webbrowser
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from legion.client import Client
from legion.command_line import ClusterOption, cluster_directory
from legion.errors import Unavailable
from legion.node_figures import Rates, Snapshot, rates, snapshot
from legion.limits import PARTITIONS_DEFAULT, REPLICAS_DEFAULT
from cli.durability_option import DURABILITY_DEFAULT, DurabilityOption
from cli.engine_options import DaskSchedulerOption, with_dask_scheduler
from legion.options import parse_options
from legion.runtime import local_cluster

app = typer.Typer(help="Start, inspect, resize and stop a cluster.", no_args_is_help=True)
console = Console()

TIMEOUT_S_DEFAULT = 60.0
ATTRIBUTE_SHOWN_CHARS_MAX = 40
STATUS_STYLES = {"up": "green", "joining": "cyan", "leaving": "yellow", "down": "red", "removed": "dim"}

TimeoutOption = Annotated[float, typer.Option("--timeout", help="Seconds to wait for the cluster to settle.")]


def status_table(status: dict[str, Any]) -> Group:
    """The status document as a rich table of members plus one summary line.

    ``hints`` shows the hints a member keeps, per owner they are for;
    ``unhealthy`` the partitions it does not serve reads of, and why. An
    ``attributes`` column appears when any member has published some;
    long values are shortened (``--json`` shows them whole)."""
    table = Table(show_edge=False, header_style="bold")
    members = status.get("members", ())
    with_attributes = any(member.get("attributes") for member in members)
    columns = [
        ("id", "left"), ("url", "left"), ("status", "left"), ("primary", "right"), ("replica", "right"),
        ("hints", "left"), ("unhealthy", "left"),
    ]  # fmt: skip
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
            escape(", ".join(f"{owner}: {n}" for owner, n in sorted((member.get("hints_pending") or {}).items()))),
            Text(str(member.get("unhealthy") or ""), style="red"),
        ]
        if with_attributes:
            row.append(Text(_short_attributes(member.get("attributes") or {})))
        table.add_row(*row)
    rebalancing = Text("rebalancing", style="yellow") if status.get("rebalancing") else Text("settled", style="green")
    transfers = status.get("transfers") or []
    hints = sum((status.get("hints_pending") or {}).values())
    summary = Text.assemble(
        f"epoch {status.get('epoch')} · claimant {status.get('claimant')} · "
        f"{status.get('partitions')} partitions × {status.get('replicas')} replicas · ",
        rebalancing,
        f" · transfers {sum(1 for t in transfers if t.get('ready'))}/{len(transfers)} ready" if transfers else "",
        f" · {hints} hints pending" if hints else "",
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
def verify(
    cluster: ClusterOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Compare every partition's replicas (operation counts and digests); exit 1 if any differ or went unchecked."""
    with Client.connect(cluster) as client:
        report = client.request("GET", "/v1/cluster/verify").json()
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        console.print(verify_summary(report))
    if not report["clean"]:
        raise typer.Exit(1)


@app.command()
def repair(
    cluster: ClusterOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Verify, run an anti-entropy exchange between every two replicas of each differing partition, verify again (exit 1 unless clean)."""
    with Client.connect(cluster) as client, console.status("repairing…"):
        result = client.request("POST", "/v1/cluster/repair").json()
    if as_json:
        typer.echo(json.dumps(result, indent=2))
    else:
        for error in result["errors"]:
            console.print(f"[red]{escape(error['engine'])} partition {error['partition']}:[/] {escape(error['message'])}")
        console.print(f"repaired {len(result['repaired'])} engine partitions ({result.get('keys', 0)} keys shipped)")
        console.print(verify_summary(result["after"]))
    if not result["after"]["clean"]:
        raise typer.Exit(1)


def verify_summary(report: dict[str, Any]) -> Group:
    """The verify report as a table of the partitions whose replicas differ, and one summary line."""
    parts: list[Any] = []
    if report["differing"]:
        table = Table(show_edge=False, header_style="bold")
        for column in ("engine", "partition", "replica", "operations", "digest"):
            table.add_column(column)
        for entry in report["differing"]:
            for node_id, summary in entry["replicas"].items():
                table.add_row(
                    escape(entry["engine"]), str(entry["partition"]), escape(node_id),
                    str(summary["count"]), summary["digest"][:12],
                )  # fmt: skip
        parts.append(table)
    for node_id, why in report["unreachable"].items():
        parts.append(Text(f"{node_id} not checked: {why}", style="yellow"))
    verdict = (
        "[green]replicas agree[/]" if report["clean"]
        else f"[red]{len(report['differing'])} differ[/], {len(report['unverified'])} unchecked"
    )  # fmt: skip
    parts.append(f"{report['checked']} engine partitions checked at epoch {report['epoch']}: {verdict}")
    return Group(*parts)


@app.command()
def up(
    nodes: Annotated[int, typer.Option("--nodes", help="How many node processes to start.")] = 3,
    cluster: ClusterOption = None,
    partitions: Annotated[int, typer.Option("--partitions", help="Partitions (a power of two).")] = PARTITIONS_DEFAULT,
    replicas: Annotated[int, typer.Option("--replicas", help="Replicas of each partition.")] = REPLICAS_DEFAULT,
    base_port: Annotated[
        int, typer.Option("--base-port", help="First node's port; the others follow. 0 picks free ports.")
    ] = 7400,
    reset: Annotated[
        bool, typer.Option("--reset", help="Delete the data of a stopped cluster in --cluster first.")
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
    metrics_open: Annotated[
        bool,
        typer.Option("--metrics-open", help="Let Prometheus on this machine scrape /metrics without the token (loopback only)."),
    ] = False,
    tls: Annotated[
        bool, typer.Option("--tls", help="Make a private CA and node certificates: HTTPS only, mutual TLS between nodes.")
    ] = False,
    metadata: Annotated[
        str | None,
        typer.Option(
            "--metadata", metavar="etcd://HOST:PORT[/PREFIX]",
            help="Keep the cluster state in this etcd (every node's `legion node start --metadata`), not by consensus among the nodes.",
        ),
    ] = None,
) -> None:
    """Start a local cluster of NODES node processes on 127.0.0.1, and the services its engines ask for."""
    directory = cluster_directory(cluster)
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
            metrics_open=metrics_open,
            tls=tls,
            metadata=metadata,
        )
    with Client.connect(directory) as client:
        _show_status(client)
    console.print(f"[green]cluster up[/] in {escape(str(directory))}; stop it with `legion cluster down --cluster {escape(str(directory))}`")


@app.command()
def down(cluster: ClusterOption = None) -> None:
    """Stop every node of the local cluster (its data stays)."""
    directory = cluster_directory(cluster)
    with console.status(f"stopping the nodes in {directory}…"):
        stopped = local_cluster.down(directory)
    console.print(f"stopped {', '.join(stopped)}" if stopped else "no node was running")


@app.command()
def status(
    cluster: ClusterOption = None,
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
def add_node(cluster: ClusterOption = None, timeout_s: TimeoutOption = TIMEOUT_S_DEFAULT) -> None:
    """Start one more node and wait until it holds its share of the partitions."""
    directory = cluster_directory(cluster)
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
    cluster: ClusterOption = None,
    timeout_s: TimeoutOption = TIMEOUT_S_DEFAULT,
) -> None:
    """Hand NODE's partitions to the others, then stop it for good."""
    directory = cluster_directory(cluster)
    with console.status(f"removing {node_id}…") as spinner:
        final = local_cluster.remove_node(
            directory, node_id, timeout_s=timeout_s, progress=lambda message: spinner.update(escape(message) + "…")
        )
    console.print(status_table(final))
    console.print(f"[green]removed[/] {escape(node_id)}")


@app.command("start-node")
def start_node(
    node_id: Annotated[str, typer.Argument(metavar="NODE", help="The id of a stopped node, e.g. n2.")],
    cluster: ClusterOption = None,
    timeout_s: TimeoutOption = TIMEOUT_S_DEFAULT,
) -> None:
    """Restart a stopped (or crashed) node with its own id, port and data."""
    directory = cluster_directory(cluster)
    with console.status(f"starting {node_id}…"):
        node = local_cluster.start_node(directory, node_id, timeout_s=timeout_s)
    console.print(f"[green]started[/] {node['id']} at {node['url']} (pid {node['pid']})")


@app.command("stop-node")
def stop_node(
    node_id: Annotated[str, typer.Argument(metavar="NODE", help="The id of the node to stop, e.g. n2.")],
    cluster: ClusterOption = None,
    kill: Annotated[bool, typer.Option("--kill", help="SIGKILL at once, as a crash would.")] = False,
) -> None:
    """Stop one node; it stays a member (shown down) until started or removed."""
    directory = cluster_directory(cluster)
    was_running = local_cluster.stop_node(directory, node_id, kill=kill)
    console.print(f"stopped {escape(node_id)}" if was_running else f"{escape(node_id)} was not running")


def _can_open_a_browser() -> bool:
    """Whether a graphical browser can open here (a text-mode one would take over the terminal)."""
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


@app.command()
def dashboard(
    cluster: ClusterOption = None,
    open_browser: Annotated[
        bool, typer.Option("--open/--no-open", help="Open the page in a browser when one is available.")
    ] = True,
) -> None:
    """Print the URL of the web dashboard (any node serves it) and open it in a browser if there is one."""
    directory = cluster_directory(cluster)
    url = local_cluster.dashboard_url(directory)
    typer.echo(url)
    console.print(f"sign in with the cluster token: the contents of {escape(str(Path(directory) / 'token'))}", highlight=False)
    if open_browser and _can_open_a_browser():
        webbrowser.open(url)


def top_table(rows: dict[str, Rates | str]) -> Table:
    """One row per node: its rates over the last window, or why it has none (``down``, ``starting``)."""
    table = Table(show_edge=False, header_style="bold")
    for column in ("node", "requests/s", "p99 ms", "ops/s", "handoffs", "moved"):
        table.add_column(column, justify="left" if column == "node" else "right")
    for node_id, figures in rows.items():
        if isinstance(figures, str):
            table.add_row(escape(node_id), Text(figures, style="red" if figures == "down" else "dim"), "", "", "", "")
            continue
        p99 = "-" if figures.p99_latency_ms is None else f"{figures.p99_latency_ms:.1f}"
        table.add_row(
            escape(node_id), f"{figures.requests_per_s:.1f}", p99, f"{figures.ops_per_s:.1f}",
            str(figures.handoffs_in_flight), str(figures.handoffs_done),
        )  # fmt: skip
    return table


@app.command()
def top(
    cluster: ClusterOption = None,
    interval_s: Annotated[float, typer.Option("--interval", help="Seconds between refreshes.", min=0.2)] = 1.0,
    iterations: Annotated[
        int | None, typer.Option("--iterations", help="Stop after this many refreshes (default: until Ctrl-C).", min=1)
    ] = None,
) -> None:
    """Live per-node figures from every node's /metrics: requests/s, p99 latency, ops/s, handoffs."""
    with Client.connect(cluster) as client:
        members = [m for m in client.status()["members"] if m.get("status") != "removed"]
    nodes = {m["id"]: client.for_node(m["url"]) for m in members}
    try:
        previous = {node_id: _scrape(node) for node_id, node in nodes.items()}
        rows: dict[str, Rates | str] = {node_id: "starting" for node_id in nodes}
        with Live(top_table(rows), console=console, auto_refresh=False) as live:
            done = 0
            while iterations is None or done < iterations:
                time.sleep(interval_s)
                for node_id, node in nodes.items():
                    current = _scrape(node)
                    before = previous[node_id]
                    if current is None:
                        rows[node_id] = "down"
                    elif before is None:
                        rows[node_id] = "starting"
                    else:
                        rows[node_id] = rates(before[1], current[1], max(current[0] - before[0], 1e-3))
                    previous[node_id] = current
                live.update(top_table(rows), refresh=True)
                done += 1
    finally:
        for node in nodes.values():
            node.close()


def _scrape(node: Client) -> tuple[float, Snapshot] | None:
    """When and what one node's /metrics said; None if it did not answer."""
    try:
        return time.monotonic(), snapshot(node.metrics())
    except Unavailable:
        return None
